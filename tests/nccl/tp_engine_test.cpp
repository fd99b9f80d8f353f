// The whole forward split over the ranks' GPUs (Engine + NcclCommunicator) against the same
// model on one GPU (tp 1), on the small safetensors fixtures whose heads divide by 2; and
// the tp output bit-identical run after run.
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <memory>

#include "node/engine/single_rank_collective.h"
#include "node/engine/engine.h"
#include "node/engine/weight_source.h"
#include "node/model/model_file.h"
#include "tests/engine/test_support.h"
#include "tests/nccl/nccl_fixture.h"

namespace tpnode::test {
namespace {

struct TpCase {
  const char* model;  // under TPNODE_SOURCE_DIR
  bool one_shot;      // false: NCCL for every all-reduce
};

class TpEngine : public ::testing::TestWithParam<TpCase> {
 protected:
  void SetUp() override {
    const std::string why = gpu_ranks_unavailable();
    if (!why.empty()) GTEST_SKIP() << why;
    path_ = std::string(TPNODE_SOURCE_DIR) + "/" + GetParam().model;
    if (!std::filesystem::exists(path_)) GTEST_SKIP() << path_ << " is absent";
  }
  // This rank's GPU backend and communicator (the case's all-reduce path); skips when the
  // one-shot path is asked for and the GPUs have no peer access.
  void open_rank() {
    backend_options_.device = world().topology().local_rank;
    backend_options_.gpu_memory_fraction = 0.1;
    // For bisecting on the GPU machine (tests only): TPNODE_TEST_CUDA_NO_GRAPHS=1.
    if (std::getenv("TPNODE_TEST_CUDA_NO_GRAPHS")) backend_options_.use_cuda_graphs = false;
    backend_ = make_cuda_backend(backend_options_);
    NcclCommunicatorOptions co = default_comm_options(*backend_);
    if (!GetParam().one_shot) co.one_shot_max_bytes = 0;
    comm_ = std::make_unique<NcclCommunicator>(host_comm(), co);
    if (GetParam().one_shot && !comm_->one_shot_available()) {
      GTEST_SKIP() << "no peer access between these GPUs: the one-shot all-reduce is off";
    }
  }
  std::string path_;
  CudaBackendOptions backend_options_;
  std::unique_ptr<Backend> backend_;
  std::unique_ptr<NcclCommunicator> comm_;
};

EngineOptions small_engine() {
  EngineOptions eo;
  eo.max_context = 128;
  eo.kv_tokens = 512;
  eo.max_batch_tokens = 64;
  return eo;
}

// A 24-token and a 3-token prompt (rows of fresh KV blocks from `block0`).
StepPlan prompts(int64_t vocab, uint64_t id0, int32_t block0) {
  SeqStep a{.seq_id = id0, .n_past = 0, .tokens = {}, .blocks = {block0, block0 + 1, block0 + 2},
            .want_logits = true};
  SeqStep b{.seq_id = id0 + 1, .n_past = 0, .tokens = {3, 7, static_cast<int32_t>(vocab - 1)},
            .blocks = {block0 + 4, block0 + 3}, .want_logits = true};
  for (int i = 0; i < 24; ++i) a.tokens.push_back(static_cast<int32_t>((i * 37 + 11) % vocab));
  StepPlan plan;
  plan.seqs = {a, b};
  return plan;
}

// Rank 0's next token of each sequence to every rank; each sequence then decodes it.
void advance(NcclCommunicator& comm, StepPlan& plan, std::vector<int32_t>& next) {
  comm.broadcast(next.data(), next.size() * sizeof(int32_t), 0);
  for (size_t s = 0; s < plan.seqs.size(); ++s) {
    SeqStep& q = plan.seqs[s];
    q.sampling = {};
    q.n_past += static_cast<int32_t>(q.tokens.size());
    q.tokens = {next[s]};
  }
}

TEST_P(TpEngine, LogitsMatchOneGpuAndRepeatBitForBit) {
  const int rank = world().topology().rank;
  auto file = ModelFile::open(path_);
  const HParams& hp = file->hparams();
  const size_t V = static_cast<size_t>(hp.n_vocab);

  open_rank();
  if (IsSkipped()) return;
  NcclCommunicator& comm = *comm_;
  FileWeightSource tp_src(*file);
  Engine tp(hp, tp_src, *backend_, comm, small_engine());

  // tp 1 on rank 0's GPU, in a backend of its own (a backend holds one KV cache).
  std::unique_ptr<Backend> one_backend;
  std::unique_ptr<FileWeightSource> one_src;
  std::unique_ptr<Engine> one;
  SingleRankCollective single;
  if (rank == 0) {
    one_backend = make_cuda_backend(backend_options_);
    one_src = std::make_unique<FileWeightSource>(*file);
    one = std::make_unique<Engine>(hp, *one_src, *one_backend, single, small_engine());
  }

  StepPlan plan = prompts(hp.n_vocab, 1, 0);
  std::vector<std::vector<float>> tp_steps;
  for (int step = 0; step < 5; ++step) {
    const std::vector<float> lt = tp.step(plan);
    std::vector<int32_t> next(2, 0);
    if (rank == 0) {
      const std::vector<float> l1 = one->step(plan);
      ASSERT_EQ(lt.size(), 2 * V);
      ASSERT_EQ(l1.size(), 2 * V);
      float scale = 0.0f, diff = 0.0f;
      for (size_t i = 0; i < l1.size(); ++i) {
        scale = std::max(scale, std::fabs(l1[i]));
        diff = std::max(diff, std::fabs(lt[i] - l1[i]));
      }
      EXPECT_LE(diff, 1e-2f * scale) << "step " << step << ": max |tp - tp1| " << diff
                                     << " against max |logit| " << scale;
      for (int s = 0; s < 2; ++s) next[s] = tsupport::argmax_row(l1, s, V);
    } else {
      EXPECT_TRUE(lt.empty());
    }
    tp_steps.push_back(lt);
    advance(comm, plan, next);
  }

  // The same prompts again, in other sequences and KV blocks: the same bits.
  const std::vector<float> again = tp.step(prompts(hp.n_vocab, 10, 8));
  if (rank == 0) {
    EXPECT_TRUE(again == tp_steps[0]) << "tp logits changed between identical runs";
  }
}

// Greedy rows under tensor parallelism come back as tokens (each rank's best logit and id, the
// distributed argmax on the GPUs): the token equals the argmax of the same step's logits.
TEST_P(TpEngine, GreedyTokensEqualTheArgmaxOfTheLogits) {
  const int rank = world().topology().rank;
  auto file = ModelFile::open(path_);
  const HParams& hp = file->hparams();
  const size_t V = static_cast<size_t>(hp.n_vocab);
  open_rank();
  if (IsSkipped()) return;
  NcclCommunicator& comm = *comm_;
  FileWeightSource src(*file);
  Engine tp(hp, src, *backend_, comm, small_engine());
  StepPlan plan = prompts(hp.n_vocab, 1, 0);
  for (int step = 0; step < 6; ++step) {
    const std::vector<float> logits = tp.step(plan);
    // The same step again (the KV slots are rewritten with the same values), greedy.
    for (SeqStep& q : plan.seqs) q.sampling = {.enabled = true, .temperature = 0.0f};
    const StepOutput& out = tp.run(plan);
    std::vector<int32_t> next(2, 0);
    if (rank == 0) {
      ASSERT_EQ(logits.size(), 2 * V);
      ASSERT_EQ(out.tokens.size(), 2u) << "step " << step;
      EXPECT_TRUE(out.logits.empty());
      for (int s = 0; s < 2; ++s) {
        EXPECT_EQ(out.tokens[s], tsupport::argmax_row(logits, s, V))
            << "step " << step << " sequence " << s;
        next[s] = out.tokens[s];
      }
    }
    advance(comm, plan, next);
  }
}

using SourceFactory = std::function<std::unique_ptr<WeightSource>()>;

// Two tp engines, each on a backend of its own options and a communicator of its own (a
// communicator's collectives run on its backend's stream), fed the same prompts (the first
// `n_seqs` of prompts()) and greedy continuations: rank 0's logits must agree bit for bit at
// every step, prefill and decode. On a mismatch the message says how many logits differ and
// by how much.
void expect_same_bits(const HParams& hp, const SourceFactory& make_source,
                      const CudaBackendOptions& oa, const CudaBackendOptions& ob, bool one_shot,
                      size_t n_seqs = 2) {
  const size_t V = static_cast<size_t>(hp.n_vocab);
  std::unique_ptr<Backend> ba = make_cuda_backend(oa), bb = make_cuda_backend(ob);
  NcclCommunicatorOptions ca = default_comm_options(*ba), cb = default_comm_options(*bb);
  if (!one_shot) ca.one_shot_max_bytes = cb.one_shot_max_bytes = 0;
  NcclCommunicator comm_a(host_comm(), ca), comm_b(host_comm(), cb);
  std::unique_ptr<WeightSource> src_a = make_source(), src_b = make_source();
  Engine a(hp, *src_a, *ba, comm_a, small_engine());
  Engine b(hp, *src_b, *bb, comm_b, small_engine());
  StepPlan plan = prompts(hp.n_vocab, 1, 0);
  plan.seqs.resize(n_seqs);
  for (int step = 0; step < 6; ++step) {
    const std::vector<float> la = a.step(plan);
    const std::vector<float> lb = b.step(plan);
    std::vector<int32_t> next(n_seqs, 0);
    if (world().topology().rank == 0) {
      ASSERT_EQ(la.size(), lb.size());
      size_t differ = 0, first = la.size();
      float diff = 0.0f;
      for (size_t i = 0; i < la.size(); ++i) {
        if (la[i] == lb[i]) continue;
        ++differ;
        first = std::min(first, i);
        diff = std::max(diff, std::fabs(la[i] - lb[i]));
      }
      EXPECT_EQ(differ, 0u) << "step " << step << ": " << differ << " of " << la.size()
                            << " logits differ (first at " << first << "), max |a - b| " << diff;
      for (size_t s = 0; s < n_seqs; ++s) next[s] = tsupport::argmax_row(lb, s, V);
    }
    advance(comm_a, plan, next);
  }
}

// The same over a model file's weights.
void expect_same_bits(const std::string& path, const CudaBackendOptions& oa,
                      const CudaBackendOptions& ob, bool one_shot) {
  auto file = ModelFile::open(path);
  expect_same_bits(
      file->hparams(), [&] { return std::make_unique<FileWeightSource>(*file); }, oa, ob,
      one_shot);
}

// Two identical engines: the tp forward is deterministic over prefill and decode steps.
TEST_P(TpEngine, TwoEnginesAgreeBitForBit) {
  open_rank();
  if (IsSkipped()) return;
  CudaBackendOptions o = backend_options_;
  o.fold_all_reduce = false;
  expect_same_bits(path_, o, o, GetParam().one_shot);
}

// The all-reduce folded into the RMSNorm after it (CudaBackendOptions::fold_all_reduce, on by
// default; one-shot cases only) sums in the same order and normalizes with the same
// arithmetic: the logits keep every bit against the unfolded path.
TEST_P(TpEngine, FoldedAllReduceChangesNoBit) {
  if (!GetParam().one_shot) GTEST_SKIP() << "only the one-shot all-reduce folds";
  open_rank();
  if (IsSkipped()) return;
  auto file = ModelFile::open(path_);
  ASSERT_TRUE(backend_->folds_reduce(2, file->hparams().n_embd));
  CudaBackendOptions unfolded = backend_options_;
  unfolded.fold_all_reduce = false;
  expect_same_bits(path_, backend_options_, unfolded, true);
}

// One sequence decoding alone: its batch-1 attn_output and ffn_down int8 GEMVs send their
// outputs to the peer themselves (CudaBackendOptions::gemv_push) and the folded norm only
// waits for them. Synthetic weights in two quantized layouts (Q4_K with Q6_K ffn_down, as in
// Q4_K_M, and Q8_0) whose row-parallel halves keep whole blocks: the logits keep every bit
// against the unfolded all-reduce followed by its own norm, prefill and decode.
TEST_P(TpEngine, BatchOneGemvPushChangesNoBit) {
  if (!GetParam().one_shot) GTEST_SKIP() << "only the one-shot all-reduce folds";
  if (std::string(GetParam().model).find("tiny-llama") == std::string::npos) {
    GTEST_SKIP() << "run once";
  }
  open_rank();
  if (IsSkipped()) return;
  const HParams hp = tsupport::small_llama("gemv push test", 1024);
  ASSERT_TRUE(backend_->folds_reduce(1, hp.n_embd));
  CudaBackendOptions unfolded = backend_options_;
  unfolded.fold_all_reduce = false;
  using Overrides = std::vector<std::pair<std::string, TensorType>>;
  const std::pair<TensorType, Overrides> layouts[] = {
      {TensorType::kQ4_K, {{"ffn_down.weight", TensorType::kQ6_K}}}, {TensorType::kQ8_0, {}}};
  for (const auto& layout : layouts) {
    SCOPED_TRACE(std::string(type_name(layout.first)));
    expect_same_bits(
        hp,
        [&] { return std::make_unique<SyntheticWeightSource>(hp, layout.first, 7, layout.second); },
        backend_options_, unfolded, true, 1);
  }
}

INSTANTIATE_TEST_SUITE_P(
    Models, TpEngine,
    ::testing::Values(TpCase{"tests/fixtures/tiny_models/tiny-llama/hf", true},
                      TpCase{"tests/fixtures/tiny_models/tiny-llama/hf", false},
                      TpCase{"tests/fixtures/tiny_models/tiny-qwen2/hf", true},
                      TpCase{"tests/fixtures/tiny_models/tiny-qwen2/hf", false}),
    [](const ::testing::TestParamInfo<TpCase>& info) {
      std::string m = std::filesystem::path(info.param.model).parent_path().filename().string();
      std::replace(m.begin(), m.end(), '-', '_');
      return m + (info.param.one_shot ? "_one_shot" : "_nccl");
    });

}  // namespace
}  // namespace tpnode::test
