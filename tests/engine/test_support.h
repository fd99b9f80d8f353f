// Helpers shared by the engine tests: a single-rank Collective, fixture readers, and a
// driver that runs sequences through an Engine step by step.
#pragma once

#include <boost/json.hpp>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "node/engine/single_rank_collective.h"
#include "node/engine/engine.h"
#include "node/backend/cpu/cpu_backend.h"
#include "node/engine/kv_blocks.h"
#include "node/model/model_file.h"

namespace tpnode::tsupport {

inline std::filesystem::path source_dir() { return TPNODE_SOURCE_DIR; }

inline boost::json::value read_json(const std::filesystem::path& p) {
  std::ifstream f(p);
  std::stringstream ss;
  ss << f.rdbuf();
  return boost::json::parse(ss.str());
}

inline std::vector<float> read_f32(const std::filesystem::path& p) {
  std::ifstream f(p, std::ios::binary | std::ios::ate);
  const auto n = static_cast<size_t>(f.tellg()) / sizeof(float);
  std::vector<float> v(n);
  f.seekg(0);
  f.read(reinterpret_cast<char*>(v.data()), static_cast<std::streamsize>(n * sizeof(float)));
  return v;
}

// A two-layer Llama of 512 wide, 8 heads over 2 KV heads of 64, vocabulary 512, whose
// matrices split into whole 256-value blocks over two ranks, for synthetic weights of any type.
inline HParams small_llama(std::string name, int64_t n_ff) {
  HParams hp;
  hp.arch = "llama";
  hp.name = std::move(name);
  hp.n_layer = 2;
  hp.n_embd = 512;
  hp.n_head = 8;
  hp.n_head_kv = 2;
  hp.head_dim = 64;
  hp.n_ff = n_ff;
  hp.n_vocab = 512;
  hp.n_ctx_train = 4096;
  return hp;
}

// The id of the largest logit in row `row` of logits laid out [rows][n] (ties: the lowest id).
inline int32_t argmax_row(const std::vector<float>& logits, size_t row, size_t n) {
  const auto first = logits.begin() + static_cast<std::ptrdiff_t>(row * n);
  return static_cast<int32_t>(std::max_element(first, first + static_cast<std::ptrdiff_t>(n)) - first);
}

inline std::vector<int32_t> to_ids(const boost::json::value& v) {
  std::vector<int32_t> ids;
  for (const auto& x : v.as_array()) ids.push_back(static_cast<int32_t>(x.to_number<int64_t>()));
  return ids;
}

// A model file loaded into a single-rank Engine on the CPU backend; members in the order
// they must be destroyed last-first.
struct LoadedEngine {
  std::unique_ptr<ModelFile> file;
  std::unique_ptr<Backend> backend;
  std::unique_ptr<FileWeightSource> weights;
  SingleRankCollective one;
  std::unique_ptr<Engine> engine;
};

struct EngineShape {
  int64_t max_context = 64;
  int64_t kv_tokens = 256;
  int64_t max_batch_tokens = 64;
  int64_t max_seqs = 4;
};

inline std::unique_ptr<LoadedEngine> load_engine(const std::filesystem::path& path,
                                                 const EngineShape& shape) {
  auto m = std::make_unique<LoadedEngine>();
  m->file = ModelFile::open(path.string());
  m->backend = make_cpu_backend({});
  m->weights = std::make_unique<FileWeightSource>(*m->file);
  EngineOptions eo;
  eo.max_context = shape.max_context;
  eo.kv_tokens = shape.kv_tokens;
  eo.max_batch_tokens = shape.max_batch_tokens;
  eo.max_seqs = shape.max_seqs;
  m->engine = std::make_unique<Engine>(m->file->hparams(), *m->weights, *m->backend, m->one, eo);
  return m;
}

// Runs several sequences together and records the logits of every position. Each sequence
// starts with a prefill chunk of `prefill[i]` tokens, then feeds one token per step, so
// steps mix prefill chunks and decode tokens of different lengths.
struct StepwiseRun {
  std::vector<std::vector<int32_t>> seqs;
  std::vector<int64_t> prefill;
  // logits[i] is [len(seqs[i]) - prefill[i] + 1, n_vocab]: the prefill chunk's last
  // position, then every decoded position.
  std::vector<std::vector<float>> logits;
};

inline void run_stepwise(Engine& engine, StepwiseRun& run) {
  const int64_t V = engine.hparams().n_vocab;
  KvBlockManager kv(engine.kv_blocks(), engine.options().kv_block_size);
  const size_t n = run.seqs.size();
  std::vector<int64_t> pos(n, 0);
  run.logits.assign(n, {});
  StepPlan plan;
  while (true) {
    plan.seqs.clear();
    std::vector<size_t> who;
    for (size_t i = 0; i < n; ++i) {
      const int64_t len = static_cast<int64_t>(run.seqs[i].size());
      if (pos[i] >= len) continue;
      const int64_t take = pos[i] == 0 ? run.prefill[i] : 1;
      SeqStep s;
      s.seq_id = i + 1;
      s.n_past = static_cast<int32_t>(pos[i]);
      s.tokens.assign(run.seqs[i].begin() + pos[i], run.seqs[i].begin() + pos[i] + take);
      if (!kv.reserve(s.seq_id, pos[i] + take)) throw std::runtime_error("KV full in test");
      s.blocks = kv.table(s.seq_id);
      plan.seqs.push_back(std::move(s));
      who.push_back(i);
      pos[i] += take;
    }
    if (plan.seqs.empty()) break;
    ++plan.step;
    const std::vector<float>& out = engine.step(plan);
    for (size_t j = 0; j < who.size(); ++j) {
      run.logits[who[j]].insert(run.logits[who[j]].end(), out.begin() + j * V,
                                out.begin() + (j + 1) * V);
    }
  }
}

}  // namespace tpnode::tsupport
