// Paged attention of the CUDA backend against the CPU backend: prefill tiles on tensor
// cores, decode tokens (GQA), split-K over long contexts, shuffled block tables, mixed steps.
#include <fmt/format.h>

#include <algorithm>
#include <map>
#include <numeric>

#include "tests/cuda/cuda_test_support.h"

namespace tpnode::test {
namespace {

struct AttnCase {
  int64_t head_dim;
  KvCacheDtype kv;  // CPU oracle: F16 cache for F16 (same rounding), F32 for BF16
  double tol;
};

class CudaAttention : public CudaVsCpu, public ::testing::WithParamInterface<AttnCase> {
 protected:
  CudaBackendOptions cuda_options() const override {
    CudaBackendOptions o = CudaVsCpu::cuda_options();
    o.kv_dtype = GetParam().kv;
    return o;
  }
  CpuBackendOptions cpu_options() const override {
    CpuBackendOptions o;
    o.kv_type = GetParam().kv == KvCacheDtype::kF16 ? TensorType::kF16 : TensorType::kF32;
    return o;
  }

  static constexpr int64_t kBlock = 16, kBlocks = 256, kHeads = 8, kKvHeads = 2;

  void SetUp() override {
    CudaVsCpu::SetUp();
    if (IsSkipped()) return;
    ids_.resize(kBlocks);
    std::iota(ids_.begin(), ids_.end(), 0);
    std::shuffle(ids_.begin(), ids_.end(), std::mt19937(7));
    const KvCacheShape shape{2, kBlocks, kBlock, kKvHeads, GetParam().head_dim};
    cuda_->init_kv_cache(shape);
    cpu_->init_kv_cache(shape);
  }

  // One step: for each (seq id, new tokens) the seq's table grows; returns NMSE of `out`.
  double step(const std::vector<std::pair<int, int32_t>>& seqs, int64_t layer, uint32_t seed) {
    const int64_t hd = GetParam().head_dim;
    BatchMeta b;
    b.seq_start.push_back(0);
    int32_t width = 0;
    for (auto [id, n] : seqs) {
      auto& t = tables_[id];
      const int32_t past = past_[id];
      while (static_cast<int64_t>(t.size()) * kBlock < past + n) t.push_back(ids_.at(next_++));
      width = std::max(width, static_cast<int32_t>(t.size()));
    }
    b.max_blocks = width;
    for (size_t s = 0; s < seqs.size(); ++s) {
      auto [id, n] = seqs[s];
      for (int32_t i = 0; i < n; ++i) {
        b.tokens.push_back(1);
        b.positions.push_back(past_[id] + i);
        b.token_seq.push_back(static_cast<int32_t>(s));
      }
      past_[id] += n;
      b.seq_start.push_back(b.n_tokens());
      b.seq_kv_len.push_back(past_[id]);
      auto row = tables_[id];
      row.resize(width, -1);
      b.block_tables.insert(b.block_tables.end(), row.begin(), row.end());
    }
    const int64_t T = b.n_tokens();
    cuda_->begin_step(b);
    cpu_->begin_step(b);
    const auto q = put(cuda_random_floats(T * kHeads * hd, seed, 2.0f));
    const auto k = put(cuda_random_floats(T * kKvHeads * hd, seed + 1, 2.0f));
    const auto v = put(cuda_random_floats(T * kKvHeads * hd, seed + 2));
    const auto out = put(std::vector<float>(T * kHeads * hd, NAN));
    const AttentionParams p{layer, kHeads, kKvHeads, hd, 1.0f / std::sqrt(static_cast<float>(hd))};
    cuda_->attention(q.gpu, k.gpu, v.gpu, out.gpu, p);
    cpu_->attention(q.cpu, k.cpu, v.cpu, out.cpu, p);
    return nmse(gpu(out, T * kHeads * hd), cpu(out, T * kHeads * hd));
  }

  std::vector<int32_t> ids_;
  size_t next_ = 0;
  std::map<int, std::vector<int32_t>> tables_;
  std::map<int, int32_t> past_;
};

TEST_P(CudaAttention, PrefillDecodeAndMixedSteps) {
  const double tol = GetParam().tol;
  // Prefill: 40 and 300 tokens (tensor-core tiles, a partial last tile), 5 tokens (decode kernel).
  EXPECT_LT(step({{0, 40}, {1, 300}, {2, 5}}, 0, 10), tol);
  // The same sequences on the other layer, so the layers' caches must not mix.
  EXPECT_LT(step({{0, 1}, {1, 1}, {2, 20}}, 1, 20), tol);
  // Decode on layer 0 after the prefill: GQA decode kernel over shuffled blocks.
  EXPECT_LT(step({{0, 1}, {1, 1}, {2, 1}}, 0, 30), tol);
}

TEST_P(CudaAttention, LongContextSplitK) {
  const double tol = GetParam().tol;
  EXPECT_LT(step({{3, 1500}}, 0, 40), tol);
  // One decode token over 1501 keys: few CTAs, so the key axis is split and merged.
  EXPECT_LT(step({{3, 1}}, 0, 50), tol);
  EXPECT_LT(step({{3, 1}, {4, 3}}, 0, 60), tol);
}

INSTANTIATE_TEST_SUITE_P(Shapes, CudaAttention,
                         ::testing::Values(AttnCase{64, KvCacheDtype::kF16, 1e-4},
                                           AttnCase{128, KvCacheDtype::kF16, 1e-4},
                                           AttnCase{128, KvCacheDtype::kBF16, 5e-4},
                                           AttnCase{80, KvCacheDtype::kF16, 1e-6}),
                         [](const auto& i) {
                           return fmt::format("hd{}_{}", i.param.head_dim,
                                              i.param.kv == KvCacheDtype::kF16 ? "f16" : "bf16");
                         });

}  // namespace
}  // namespace tpnode::test
