// The engine's automatic limits on the CUDA backend (its memory budget): 256 sequences per step
// and a KV cache of what the budget leaves after the weights and step buffers, less the
// backend's scratch reserve, capped at 256 full contexts; and such an engine runs: 40
// sequences decode together (a graph bucket past 32) with the logits that four of them get
// as a batch of four on an engine of explicit small limits.
#include <memory>
#include <vector>

#include "node/engine/engine.h"
#include "node/engine/single_rank_collective.h"
#include "node/engine/weight_source.h"
#include "tests/cuda/cuda_test_support.h"
#include "tests/engine/test_support.h"

namespace tpnode::test {
namespace {

class CudaEngineLimits : public CudaVsCpu {
 protected:
  CudaBackendOptions cuda_options() const override {
    CudaBackendOptions o = CudaVsCpu::cuda_options();
    o.gpu_memory_fraction = 0.1;
    return o;
  }
};

TEST_F(CudaEngineLimits, KvCacheAndSequencesFollowTheBudget) {
  const HParams hp = tsupport::small_llama("limits test", 1024);
  // K and V in 16 bits for each layer's KV heads.
  const int64_t per_token = 2 * hp.n_layer * hp.n_head_kv * hp.head_dim * 2;
  SyntheticWeightSource src(hp, TensorType::kQ4_K);
  SingleRankCollective one;

  // Contexts of 2^16 tokens: 256 of them would need 32 GiB, past the budget (a tenth of the
  // card): the memory decides, leaving the reserve.
  EngineOptions eo;
  eo.max_context = 65536;
  Engine big(hp, src, *cuda_, one, eo);
  const CudaDeviceInfo info = cuda_device_info(*cuda_);
  EXPECT_EQ(big.options().max_seqs, kDeviceMaxSeqs);
  const uint64_t kv_bytes = static_cast<uint64_t>(big.kv_blocks() * eo.kv_block_size * per_token);
  EXPECT_LT(big.kv_blocks() * eo.kv_block_size, 256 * eo.max_context);
  EXPECT_GT(kv_bytes, info.budget_bytes / 2) << "the KV cache left most of the budget unused";
  EXPECT_GE(info.budget_bytes - info.used_bytes, kDeviceScratchReserve)
      << "the KV cache ate into the scratch reserve";
}

TEST_F(CudaEngineLimits, ManySequencesDecodeAsInASmallBatch) {
  const HParams hp = tsupport::small_llama("limits test", 1024);
  SyntheticWeightSource src(hp, TensorType::kQ4_K), src_small(hp, TensorType::kQ4_K);
  SingleRankCollective c1, c2;
  EngineOptions eo;
  eo.max_context = 512;  // 256 contexts of 512 fit the budget: capped at max_seqs contexts
  Engine wide(hp, src, *cuda_, c1, eo);
  EXPECT_EQ(wide.kv_blocks() * eo.kv_block_size, kDeviceMaxSeqs * eo.max_context);

  auto small_backend = make_cuda_backend([] {
    CudaBackendOptions o;
    o.gpu_memory_fraction = 0.05;
    return o;
  }());
  EngineOptions so = eo;
  so.max_context = 64;
  so.max_seqs = 4;
  so.kv_tokens = 256;
  Engine small(hp, src_small, *small_backend, c2, so);

  // 40 sequences together (prompts of 5-11 tokens, then greedy decode steps); four of them
  // also run as a batch of four on the small engine, in its blocks 2t and 2t + 1.
  constexpr int kSeqs = 40;
  const int tracked[] = {0, 13, 26, 39};
  StepPlan plan, four;
  for (int s = 0; s < kSeqs; ++s) {
    SeqStep q{.seq_id = static_cast<uint64_t>(s + 1), .n_past = 0, .tokens = {}, .blocks = {}, .want_logits = true};
    for (int i = 0; i < 5 + s % 7; ++i) {
      q.tokens.push_back(static_cast<int32_t>((s * 31 + i * 17 + 3) % hp.n_vocab));
    }
    q.blocks = {static_cast<int32_t>(2 * s), static_cast<int32_t>(2 * s + 1)};
    plan.seqs.push_back(q);
  }
  for (int t = 0; t < 4; ++t) {
    SeqStep q = plan.seqs[static_cast<size_t>(tracked[t])];
    q.blocks = {2 * t, 2 * t + 1};
    four.seqs.push_back(q);
  }
  const size_t V = static_cast<size_t>(hp.n_vocab);
  for (int step = 0; step < 4; ++step) {
    const std::vector<float> lw = wide.step(plan);
    const std::vector<float> l4 = small.step(four);
    ASSERT_EQ(lw.size(), kSeqs * V);
    ASSERT_EQ(l4.size(), 4 * V);
    for (int t = 0; t < 4; ++t) {
      const auto row = [&](const std::vector<float>& l, int r) {
        return std::vector<float>(l.begin() + static_cast<std::ptrdiff_t>(r * V),
                                  l.begin() + static_cast<std::ptrdiff_t>((r + 1) * V));
      };
      EXPECT_LT(nmse(row(lw, tracked[t]), row(l4, t)), 1e-3)
          << "sequence " << tracked[t] << ", step " << step;
    }
    for (int s = 0; s < kSeqs; ++s) {
      SeqStep& q = plan.seqs[static_cast<size_t>(s)];
      q.n_past += static_cast<int32_t>(q.tokens.size());
      q.tokens = {tsupport::argmax_row(lw, static_cast<size_t>(s), V)};
    }
    for (int t = 0; t < 4; ++t) {
      four.seqs[static_cast<size_t>(t)].n_past = plan.seqs[static_cast<size_t>(tracked[t])].n_past;
      four.seqs[static_cast<size_t>(t)].tokens = plan.seqs[static_cast<size_t>(tracked[t])].tokens;
    }
  }
}

}  // namespace
}  // namespace tpnode::test
