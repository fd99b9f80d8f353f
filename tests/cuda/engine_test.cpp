// The whole forward (Engine) on the CUDA backend against the CPU backend: the small model
// fixtures (Q8_0/Q4_1/F16 llama, BF16 qwen2 with biases and tied embeddings, a safetensors
// llama with llama3 RoPE) and, when present, SmolLM2-135M Q4_1.
#include <algorithm>
#include <cstdio>
#include <filesystem>

#include "node/engine/single_rank_collective.h"
#include "node/engine/engine.h"
#include "node/engine/weight_source.h"
#include "node/model/model_file.h"
#include "tests/cuda/cuda_test_support.h"
#include "tests/engine/test_support.h"

namespace tpnode::test {
namespace {

// The same model on the GPU and on the CPU oracle: a weight source and a collective each.
struct EnginePair {
  EnginePair(const ModelFile& file, Backend& gpu_backend, Backend& cpu_backend, const EngineOptions& eo)
      : src_gpu(file),
        src_cpu(file),
        gpu(file.hparams(), src_gpu, gpu_backend, c_gpu, eo),
        cpu(file.hparams(), src_cpu, cpu_backend, c_cpu, eo) {}
  FileWeightSource src_gpu, src_cpu;
  SingleRankCollective c_gpu, c_cpu;
  Engine gpu, cpu;
};

class CudaEngine : public CudaVsCpu, public ::testing::WithParamInterface<const char*> {
 protected:
  std::string path() const { return std::string(TPNODE_SOURCE_DIR) + "/" + GetParam(); }
};

TEST_P(CudaEngine, LogitsMatchCpuOverPrefillAndDecode) {
  if (!std::filesystem::exists(path())) GTEST_SKIP() << path() << " is absent";
  auto file = ModelFile::open(path());
  const HParams& hp = file->hparams();
  EngineOptions eo;
  eo.max_context = 256;
  eo.kv_tokens = 1024;
  eo.max_batch_tokens = 64;
  EnginePair engines(*file, *cuda_, *cpu_, eo);

  // Two sequences: a 24-token prompt and a 3-token one, then greedy decode steps.
  StepPlan plan;
  SeqStep a{.seq_id = 1, .n_past = 0, .tokens = {}, .blocks = {0, 1, 2}, .want_logits = true};
  SeqStep b{.seq_id = 2, .n_past = 0, .tokens = {}, .blocks = {5, 4}, .want_logits = true};
  for (int i = 0; i < 24; ++i) a.tokens.push_back(static_cast<int32_t>((i * 37 + 11) % hp.n_vocab));
  b.tokens = {3, 7, static_cast<int32_t>(hp.n_vocab - 1)};
  plan.seqs = {a, b};
  const size_t V = static_cast<size_t>(hp.n_vocab);
  for (int step = 0; step < 5; ++step) {
    const std::vector<float> lg = engines.gpu.step(plan);
    const std::vector<float> lc = engines.cpu.step(plan);
    ASSERT_EQ(lg.size(), 2 * V);
    ASSERT_EQ(lc.size(), 2 * V);
    EXPECT_LT(nmse(lg, lc), 2e-3) << "step " << step;
    for (int s = 0; s < 2; ++s) {
      SeqStep& q = plan.seqs[s];
      q.n_past += static_cast<int32_t>(q.tokens.size());
      q.tokens = {tsupport::argmax_row(lc, s, V)};
    }
  }
}

// The same prompt in two different KV blocks gives bitwise-equal logits.
TEST_P(CudaEngine, Deterministic) {
  if (!std::filesystem::exists(path())) GTEST_SKIP() << path() << " is absent";
  auto file = ModelFile::open(path());
  FileWeightSource src(*file);
  SingleRankCollective c;
  EngineOptions eo;
  eo.max_context = 128;
  eo.kv_tokens = 512;
  eo.max_batch_tokens = 64;
  Engine engine(file->hparams(), src, *cuda_, c, eo);
  StepPlan p1, p2;
  SeqStep s{.seq_id = 1, .n_past = 0, .tokens = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17},
            .blocks = {0, 1}, .want_logits = true};
  p1.seqs = {s};
  s.seq_id = 2;
  s.blocks = {7, 3};
  p2.seqs = {s};
  const std::vector<float> l1 = engine.step(p1);
  const std::vector<float> l2 = engine.step(p2);
  ASSERT_EQ(l1.size(), l2.size());
  EXPECT_EQ(0, std::memcmp(l1.data(), l2.data(), l1.size() * sizeof(float)));
}

// 64 greedy tokens of the default model on the GPU and on the CPU, each prompt of the
// llama.cpp fixture. Both backends quantize activations to 8 bits the same way; they differ in
// summation order and in the KV cache (BF16 on the GPU, F32 on the CPU). So the tokens must be
// identical, except where the CPU's top two logits are closer than twice the largest logit
// difference between the backends at that step (a tie their rounding can flip); there both
// continue with the CPU's token.
class CudaEngineDefaultModel : public CudaVsCpu {};

TEST_F(CudaEngineDefaultModel, GreedyTokensMatchCpuForSixtyFourSteps) {
  const std::string path = std::string(TPNODE_SOURCE_DIR) + "/models/SmolLM2-135M-Instruct.Q4_1.gguf";
  if (!std::filesystem::exists(path)) GTEST_SKIP() << path << " is absent (launch/fetch_model.sh)";
  auto file = ModelFile::open(path);
  const HParams& hp = file->hparams();
  EngineOptions eo;
  eo.max_context = 256;
  eo.kv_tokens = 512;
  eo.max_batch_tokens = 128;
  EnginePair engines(*file, *cuda_, *cpu_, eo);
  const auto fixture = tsupport::read_json(std::filesystem::path(TPNODE_SOURCE_DIR) /
                                           "tests/fixtures/llamacpp/smollm2_135m_q4_1_greedy.json");
  const size_t V = static_cast<size_t>(hp.n_vocab);
  constexpr int kSteps = 64;
  for (const auto& c : fixture.as_object().at("cases").as_array()) {
    const std::string name(c.as_object().at("name").as_string());
    std::vector<int32_t> feed = tsupport::to_ids(c.as_object().at("prompt_ids"));
    ASSERT_LE(feed.size() + kSteps, 16u * 16u) << name;
    StepPlan plan;
    int32_t n_past = 0;
    int identical = 0, ties = 0;
    double worst = 0;
    for (int step = 0; step < kSteps; ++step) {
      plan.seqs = {SeqStep{.seq_id = 1, .n_past = n_past, .tokens = feed,
                           .blocks = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15},
                           .want_logits = true}};
      const std::vector<float> lg = engines.gpu.step(plan);
      const std::vector<float> lc = engines.cpu.step(plan);
      ASSERT_EQ(lg.size(), V);
      ASSERT_EQ(lc.size(), V);
      double diff = 0;
      for (size_t i = 0; i < V; ++i) diff = std::max(diff, std::fabs(static_cast<double>(lg[i]) - lc[i]));
      worst = std::max(worst, diff);
      const int32_t tg = tsupport::argmax_row(lg, 0, V), tc = tsupport::argmax_row(lc, 0, V);
      if (tg == tc) {
        ++identical;
      } else {
        std::vector<float> top(lc);
        std::partial_sort(top.begin(), top.begin() + 2, top.end(), std::greater<>());
        const double margin = static_cast<double>(top[0]) - top[1];
        std::printf("[%s] step %d: GPU %d, CPU %d; CPU top-2 margin %.4f, max logit diff %.4f\n",
                    name.c_str(), step, tg, tc, margin, diff);
        EXPECT_LT(margin, 2 * diff) << name << " step " << step << ": tokens differ at a clear choice";
        ++ties;
      }
      n_past += static_cast<int32_t>(feed.size());
      feed = {tc};
    }
    std::printf("[%s] %d/%d greedy tokens identical (%d near-ties), max |GPU - CPU| logit %.4f\n",
                name.c_str(), identical, kSteps, ties, worst);
  }
}

INSTANTIATE_TEST_SUITE_P(Models, CudaEngine,
                         ::testing::Values("tests/fixtures/model_files/tiny_llama.gguf",
                                           "tests/fixtures/model_files/tiny_qwen2.gguf",
                                           "tests/fixtures/model_files/tiny_llama_st",
                                           "models/SmolLM2-135M-Instruct.Q4_1.gguf"),
                         model_param_name);

}  // namespace
}  // namespace tpnode::test
