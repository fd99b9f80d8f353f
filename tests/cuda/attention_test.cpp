// Paged attention of the CUDA backend:
//   - CudaAttention: against the CPU backend over prefill tiles on tensor cores, decode tokens
//     (GQA groups of 1 to 16 heads), split-K over long contexts, block tables wider than the
//     sequences (as graph steps pad them), shuffled blocks, mixed steps, batch 64, and decode
//     steps where the decode kernel stores K/V itself; repeated runs are bitwise equal;
//   - CudaRopeAttention: RoPE inside attention (rotation fused into decode steps, the rope
//     kernel first otherwise) against the CPU's rope() then attention(), and the attn_output
//     matmul reading the 8-bit copy the decode kernel writes;
//   - CudaDecodeQuant: that 8-bit copy against quantize_acts of the F32 output, bitwise;
//   - CudaDecodeLong: one decode token over 4096 and 32768 keys (many splits) against a
//     double-precision reference computed here from the K/V the cache holds;
//   - CudaAttentionPerf: times decode attention inside a CUDA graph (prints, for tuning).
#include "kernels/cuda/attention.h"

#include <cuda_runtime.h>
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <map>
#include <numeric>
#include <optional>
#include <tuple>
#include <utility>

#include "kernels/cpu/rope.h"
#include "kernels/cuda/decode_attention_mma.h"
#include "kernels/cuda/gemm_kq.h"
#include "kernels/cuda/gemv.h"
#include "tests/cuda/cuda_test_support.h"

namespace tpnode::test {
namespace {

namespace kc = ::tpnode::cuda;

struct AttnCase {
  int64_t head_dim;
  int64_t n_head;
  int64_t n_head_kv;
  KvCacheDtype kv;  // CPU oracle: F16 cache for F16 (same rounding), F32 for BF16
  double tol;
  std::optional<RopeStyle> rope = std::nullopt;  // RoPE inside attention (AttentionParams::rope)
  int heads_per_cta = 0;  // CudaBackendOptions::decode_heads_per_cta (0: the kernel's pick)
  int64_t mma_min_batch = 0;  // CudaBackendOptions::decode_mma_min_batch (0: CUDA cores only)
};

std::string dtype_name(KvCacheDtype d) { return d == KvCacheDtype::kF16 ? "f16" : "bf16"; }

int32_t next_pow2(int32_t n) {
  int32_t p = 1;
  while (p < n) p *= 2;
  return p;
}

class CudaAttention : public CudaVsCpu, public ::testing::WithParamInterface<AttnCase> {
 protected:
  CudaBackendOptions cuda_options() const override {
    CudaBackendOptions o = CudaVsCpu::cuda_options();
    o.kv_dtype = GetParam().kv;
    o.decode_heads_per_cta = GetParam().heads_per_cta;
    o.decode_mma_min_batch = GetParam().mma_min_batch;
    return o;
  }
  CpuBackendOptions cpu_options() const override {
    CpuBackendOptions o;
    o.kv_type = GetParam().kv == KvCacheDtype::kF16 ? TensorType::kF16 : TensorType::kF32;
    return o;
  }

  static constexpr int64_t kBlock = 16, kBlocks = 1024;

  void SetUp() override {
    CudaVsCpu::SetUp();
    if (IsSkipped()) return;
    ids_.resize(kBlocks);
    std::iota(ids_.begin(), ids_.end(), 0);
    std::shuffle(ids_.begin(), ids_.end(), std::mt19937(7));
    const KvCacheShape shape{2, kBlocks, kBlock, GetParam().n_head_kv, GetParam().head_dim};
    cuda_->init_kv_cache(shape);
    cpu_->init_kv_cache(shape);
  }

  // One step: for each (seq id, new tokens) the seq's table grows; the tables are at least
  // `min_width` blocks wide (-1 padded). Returns the NMSE of the CUDA output against the CPU.
  double step(const std::vector<std::pair<int, int32_t>>& seqs, int64_t layer, uint32_t seed,
              int32_t min_width = 0) {
    const int64_t hd = GetParam().head_dim, nh = GetParam().n_head, nkv = GetParam().n_head_kv;
    BatchMeta b;
    b.seq_start.push_back(0);
    int32_t width = min_width;
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
    last_ = b;
    cuda_->begin_step(b);
    cpu_->begin_step(b);
    q_ = put(cuda_random_floats(T * nh * hd, seed, 2.0f));
    k_ = put(cuda_random_floats(T * nkv * hd, seed + 1, 2.0f));
    v_ = put(cuda_random_floats(T * nkv * hd, seed + 2));
    out_ = put(std::vector<float>(T * nh * hd, NAN));
    params_ = AttentionParams{layer, nh, nkv, hd, 1.0f / std::sqrt(static_cast<float>(hd))};
    if (GetParam().rope) {
      rope_ = RopeParams{.n_head = nh, .n_head_kv = nkv, .head_dim = hd,
                         .style = *GetParam().rope, .theta = 10000.0f, .scaling = {}};
      params_.rope = &rope_;
    }
    cuda_->attention(q_.gpu, k_.gpu, v_.gpu, out_.gpu, params_);
    cpu_->attention(q_.cpu, k_.cpu, v_.cpu, out_.cpu, params_);
    n_out_ = T * nh * hd;
    return nmse(gpu(out_, n_out_), cpu(out_, n_out_));
  }

  // The last step's CUDA output, and the output of running that step again on the GPU
  // (the same slots are stored again with the same values).
  std::pair<std::vector<float>, std::vector<float>> rerun_last() {
    std::vector<float> first = gpu(out_, n_out_);
    cuda_->copy_to_device(out_.gpu, std::vector<float>(n_out_, NAN).data(), n_out_ * sizeof(float));
    cuda_->begin_step(last_);
    cuda_->attention(q_.gpu, k_.gpu, v_.gpu, out_.gpu, params_);
    return {std::move(first), gpu(out_, n_out_)};
  }

  std::vector<int32_t> ids_;
  size_t next_ = 0;
  std::map<int, std::vector<int32_t>> tables_;
  std::map<int, int32_t> past_;
  BatchMeta last_;
  Pair q_{}, k_{}, v_{}, out_{};
  AttentionParams params_;
  RopeParams rope_;
  int64_t n_out_ = 0;
};

TEST_P(CudaAttention, PrefillDecodeAndMixedSteps) {
  const double tol = GetParam().tol;
  // Prefill: 40 and 300 tokens (tensor-core tiles, a partial last tile), 5 tokens (decode kernel).
  EXPECT_LT(step({{0, 40}, {1, 300}, {2, 5}}, 0, 10), tol);
  // The same sequences on the other layer, so the layers' caches must not mix.
  EXPECT_LT(step({{0, 1}, {1, 1}, {2, 20}}, 1, 20), tol);
  // Decode on layer 0 after the prefill: every sequence one token, so the decode kernel
  // stores K/V itself; then again, reading the keys it stored.
  EXPECT_LT(step({{0, 1}, {1, 1}, {2, 1}}, 0, 30), tol);
  EXPECT_LT(step({{0, 1}, {1, 1}, {2, 1}}, 0, 31), tol);
}

TEST_P(CudaAttention, LongContextSplitK) {
  const double tol = GetParam().tol;
  EXPECT_LT(step({{3, 1500}}, 0, 40), tol);
  // One decode token over 1501 keys: few CTAs, so the key axis is split and merged.
  EXPECT_LT(step({{3, 1}}, 0, 50), tol);
  EXPECT_LT(step({{3, 1}, {4, 3}}, 0, 60), tol);
  // Tables padded as graph steps pad them: splits planned over 4096 keys, most of them
  // past the sequences' lengths.
  EXPECT_LT(step({{3, 1}, {4, 1}}, 0, 70, 256), tol);
  EXPECT_LT(step({{3, 1}}, 0, 80, 128), tol);
}

TEST_P(CudaAttention, DecodeBatch64) {
  const double tol = GetParam().tol;
  std::vector<std::pair<int, int32_t>> prefill, decode;
  for (int s = 0; s < 64; ++s) {
    prefill.emplace_back(10 + s, 100 + (s * 37) % 60);  // 100..159 tokens
    decode.emplace_back(10 + s, 1);
  }
  EXPECT_LT(step(prefill, 1, 90), tol);
  EXPECT_LT(step(decode, 1, 91, 16), tol);  // 256 keys of capacity, as a graph bucket
  EXPECT_LT(step(decode, 1, 92, 16), tol);
  // Fewer sequences: few enough CTAs that the keys are split.
  decode.resize(3);
  EXPECT_LT(step(decode, 1, 93, 16), tol);
}

TEST_P(CudaAttention, RepeatedRunsAreBitwiseEqual) {
  step({{5, 700}}, 0, 100);
  step({{5, 1}, {6, 30}}, 0, 101);  // split decode next to a prefill
  auto [a, b] = rerun_last();
  EXPECT_EQ(a, b);
  step({{5, 1}}, 0, 102, 64);  // split decode, kv_store fused
  auto [c, d] = rerun_last();
  EXPECT_EQ(c, d);
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, CudaAttention,
    ::testing::Values(AttnCase{64, 8, 2, KvCacheDtype::kF16, 1e-4},
                      AttnCase{128, 8, 2, KvCacheDtype::kF16, 1e-4},
                      AttnCase{128, 8, 2, KvCacheDtype::kBF16, 5e-4},
                      AttnCase{80, 8, 2, KvCacheDtype::kF16, 1e-6},
                      // GQA groups: 1, 3 (SmolLM2), 8, 16 (two CTAs per KV head)
                      AttnCase{128, 4, 4, KvCacheDtype::kF16, 1e-4},
                      AttnCase{64, 2, 2, KvCacheDtype::kBF16, 5e-4},
                      AttnCase{64, 9, 3, KvCacheDtype::kF16, 1e-4},
                      AttnCase{128, 16, 2, KvCacheDtype::kBF16, 5e-4},
                      AttnCase{80, 8, 1, KvCacheDtype::kF16, 1e-6},
                      AttnCase{64, 16, 1, KvCacheDtype::kF16, 1e-4},
                      // The tiny fixtures' shape (head_dim 16)
                      AttnCase{16, 4, 2, KvCacheDtype::kBF16, 5e-4}),
    [](const auto& i) {
      return fmt::format("hd{}_h{}kv{}_{}", i.param.head_dim, i.param.n_head, i.param.n_head_kv,
                         dtype_name(i.param.kv));
    });

// Fewer query heads per CTA than the group (more CTAs, each with a shorter chain); with RoPE
// inside attention in CudaRopeAttention below.
INSTANTIATE_TEST_SUITE_P(
    FewHeadsPerCta, CudaAttention,
    ::testing::Values(AttnCase{128, 8, 2, KvCacheDtype::kF16, 1e-4, std::nullopt, 1},
                      AttnCase{128, 32, 8, KvCacheDtype::kBF16, 5e-4, std::nullopt, 2},
                      AttnCase{64, 16, 2, KvCacheDtype::kF16, 1e-4, std::nullopt, 4},
                      AttnCase{128, 16, 2, KvCacheDtype::kBF16, 5e-4, std::nullopt, 8}),
    [](const auto& info) {
      const AttnCase& c = info.param;
      return "hd" + std::to_string(c.head_dim) + "_h" + std::to_string(c.n_head) + "_kv" +
             std::to_string(c.n_head_kv) + "_" + dtype_name(c.kv) + "_g" +
             std::to_string(c.heads_per_cta);
    });

// Decode on tensor cores (every decode batch): groups of 1-8 query heads, head_dim 64 and 128,
// both caches; group 16 and head_dim 80 take the CUDA-core kernel instead.
INSTANTIATE_TEST_SUITE_P(
    TensorCores, CudaAttention,
    ::testing::Values(AttnCase{64, 8, 2, KvCacheDtype::kF16, 1e-4, std::nullopt, 0, 1},
                      AttnCase{128, 8, 2, KvCacheDtype::kF16, 1e-4, std::nullopt, 0, 1},
                      AttnCase{128, 8, 2, KvCacheDtype::kBF16, 5e-4, std::nullopt, 0, 1},
                      AttnCase{128, 4, 4, KvCacheDtype::kF16, 1e-4, std::nullopt, 0, 1},
                      AttnCase{64, 9, 3, KvCacheDtype::kF16, 1e-4, std::nullopt, 0, 1},
                      AttnCase{128, 16, 2, KvCacheDtype::kBF16, 5e-4, std::nullopt, 0, 1},
                      AttnCase{128, 32, 8, KvCacheDtype::kBF16, 5e-4, std::nullopt, 0, 1},
                      AttnCase{64, 16, 1, KvCacheDtype::kF16, 1e-4, std::nullopt, 0, 1},
                      AttnCase{80, 8, 2, KvCacheDtype::kF16, 1e-6, std::nullopt, 0, 1}),
    [](const auto& i) {
      return fmt::format("hd{}_h{}kv{}_{}_mma", i.param.head_dim, i.param.n_head,
                         i.param.n_head_kv, dtype_name(i.param.kv));
    });

// ---- RoPE inside attention ---------------------------------------------------------------
// With AttentionParams::rope, decode steps (every sequence one new token) rotate q and the new
// key inside the decode kernel, which also writes the 8-bit copy of its output that the
// attn_output GEMV reads; prefill steps run the rope kernel first. The CPU backend runs rope()
// then attention(): the oracle.
class CudaRopeAttention : public CudaAttention {};

TEST_P(CudaRopeAttention, DecodeMatchesCpuRopeThenAttention) {
  const double tol = GetParam().tol;
  const int64_t cols = GetParam().n_head * GetParam().head_dim, wo_rows = 37;
  // An attn_output-like quantized matrix after attention: on the GPU it reads the 8-bit copy
  // the decode kernel wrote (head_dim % 32 == 0), else one quantize_acts makes it.
  const auto w_host = random_gguf_rows(TensorType::kQ8_0, wo_rows, cols, 5);
  const HostMatrix hm{TensorType::kQ8_0, w_host.data(), wo_rows, cols, w_host.size() / wo_rows};
  const Weight wg = cuda_->upload_weight(hm), wc = cpu_->upload_weight(hm);
  auto wo_nmse = [&](int64_t n_tok) {
    const Pair y = zeros(n_tok * wo_rows);
    cuda_->matmul(wg, out_.gpu, y.gpu, n_tok);
    cpu_->matmul(wc, out_.cpu, y.cpu, n_tok);
    return nmse(gpu(y, n_tok * wo_rows), cpu(y, n_tok * wo_rows));
  };
  // Each context: the keys the first decode token sees. Every decode runs twice, the second
  // time reading the key the first stored (rotated) over a table as wide as a graph bucket
  // (1024 keys: many key splits, most past the sequences' lengths).
  int id = 0;
  auto run = [&](const std::vector<int32_t>& contexts) {
    std::vector<std::pair<int, int32_t>> prefill, decode;
    std::string what = "contexts";
    for (int32_t c : contexts) {
      if (c > 1) prefill.emplace_back(id, c - 1);
      decode.emplace_back(id, 1);
      what += fmt::format(" {}", c);
      ++id;
    }
    const auto n = static_cast<int64_t>(decode.size());
    if (!prefill.empty()) {
      EXPECT_LT(step(prefill, 0, 200 + id), 1e-4) << what << ": prefill";
    }
    EXPECT_LT(step(decode, 0, 300 + id), tol) << what;
    EXPECT_LT(wo_nmse(n), 1e-3) << what << ": attn_output";
    EXPECT_LT(step(decode, 0, 400 + id, 64), tol) << what << ", wide table";
    EXPECT_LT(wo_nmse(n), 1e-3) << what << ", wide table: attn_output";
  };
  for (int32_t c : {1, 17, 128, 700}) run({c});  // batch 1
  run({1, 17, 128, 700, 40});                    // batch 5
}

// Decode outputs need no tensor-core rounding of q, so F16 caches match the CPU closely.
INSTANTIATE_TEST_SUITE_P(
    Shapes, CudaRopeAttention,
    ::testing::Values(
        // head_dim 64 and 128, GQA 4:1 and 1:1, both styles
        AttnCase{64, 8, 2, KvCacheDtype::kF16, 1e-8, RopeStyle::kNeox},
        AttnCase{64, 8, 2, KvCacheDtype::kF16, 1e-8, RopeStyle::kInterleaved},
        AttnCase{64, 2, 2, KvCacheDtype::kF16, 1e-8, RopeStyle::kNeox},
        AttnCase{64, 2, 2, KvCacheDtype::kF16, 1e-8, RopeStyle::kInterleaved},
        AttnCase{128, 8, 2, KvCacheDtype::kF16, 1e-8, RopeStyle::kNeox},
        AttnCase{128, 8, 2, KvCacheDtype::kF16, 1e-8, RopeStyle::kInterleaved},
        AttnCase{128, 2, 2, KvCacheDtype::kF16, 1e-8, RopeStyle::kNeox},
        AttnCase{128, 2, 2, KvCacheDtype::kF16, 1e-8, RopeStyle::kInterleaved},
        // Llama-3-8B (BF16 cache), SmolLM2 (3:1), 16:1 (two CTAs per KV head), head_dim 80
        // (no 8-bit copy: 80 % 32 != 0) and 16 (the tiny fixtures)
        AttnCase{128, 32, 8, KvCacheDtype::kBF16, 5e-4, RopeStyle::kNeox},
        AttnCase{64, 9, 3, KvCacheDtype::kF16, 1e-8, RopeStyle::kInterleaved},
        AttnCase{128, 16, 1, KvCacheDtype::kF16, 1e-8, RopeStyle::kNeox},
        AttnCase{80, 4, 4, KvCacheDtype::kF16, 1e-8, RopeStyle::kNeox},
        AttnCase{16, 4, 2, KvCacheDtype::kBF16, 5e-4, RopeStyle::kInterleaved},
        // Fewer query heads per CTA than the group
        AttnCase{128, 32, 8, KvCacheDtype::kBF16, 5e-4, RopeStyle::kNeox, 1},
        AttnCase{128, 32, 8, KvCacheDtype::kBF16, 5e-4, RopeStyle::kNeox, 2},
        AttnCase{64, 8, 2, KvCacheDtype::kF16, 1e-8, RopeStyle::kInterleaved, 1}),
    [](const auto& i) {
      return fmt::format("hd{}_h{}kv{}_{}_{}{}", i.param.head_dim, i.param.n_head,
                         i.param.n_head_kv, dtype_name(i.param.kv),
                         *i.param.rope == RopeStyle::kNeox ? "neox" : "interleaved",
                         i.param.heads_per_cta ? fmt::format("_g{}", i.param.heads_per_cta) : "");
    });

// The same on tensor cores: q and the softmax weights rounded to the cache's type (F16: NMSE
// ~1e-7 instead of ~1e-9).
INSTANTIATE_TEST_SUITE_P(
    TensorCores, CudaRopeAttention,
    ::testing::Values(
        AttnCase{128, 32, 8, KvCacheDtype::kBF16, 5e-4, RopeStyle::kNeox, 0, 1},
        AttnCase{128, 8, 2, KvCacheDtype::kF16, 2e-6, RopeStyle::kNeox, 0, 1},
        AttnCase{64, 9, 3, KvCacheDtype::kF16, 2e-6, RopeStyle::kInterleaved, 0, 1},
        AttnCase{64, 2, 2, KvCacheDtype::kF16, 2e-6, RopeStyle::kInterleaved, 0, 1},
        AttnCase{128, 16, 2, KvCacheDtype::kBF16, 5e-4, RopeStyle::kNeox, 0, 1}),
    [](const auto& i) {
      return fmt::format("hd{}_h{}kv{}_{}_{}_mma", i.param.head_dim, i.param.n_head,
                         i.param.n_head_kv, dtype_name(i.param.kv),
                         *i.param.rope == RopeStyle::kNeox ? "neox" : "interleaved");
    });

// ---- the 8-bit copy of the decode output ---------------------------------------------------

// Device memory of a kernel-level test.
struct DeviceBuffer {
  explicit DeviceBuffer(size_t bytes) {
    EXPECT_EQ(cudaMalloc(&p, std::max<size_t>(bytes, 1)), cudaSuccess);
  }
  ~DeviceBuffer() { cudaFree(p); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  template <typename T>
  T* as() const { return static_cast<T*>(p); }
  void* p = nullptr;
};
template <typename T>
std::unique_ptr<DeviceBuffer> upload(const std::vector<T>& h) {
  auto b = std::make_unique<DeviceBuffer>(h.size() * sizeof(T));
  EXPECT_EQ(cudaMemcpy(b->p, h.data(), h.size() * sizeof(T), cudaMemcpyHostToDevice), cudaSuccess);
  return b;
}
template <typename T>
std::vector<T> download(const DeviceBuffer& b, size_t n) {
  std::vector<T> h(n);
  EXPECT_EQ(cudaMemcpy(h.data(), b.p, n * sizeof(T), cudaMemcpyDeviceToHost), cudaSuccess);
  return h;
}
std::vector<uint32_t> float_bits(const std::vector<float>& v) {
  std::vector<uint32_t> b(v.size());
  std::memcpy(b.data(), v.data(), v.size() * sizeof(float));
  return b;
}

struct QuantCase {
  int64_t head_dim;
  int64_t n_head;
  int64_t n_head_kv;
  std::vector<int32_t> contexts;  // keys each decode token sees (one token per sequence)
  int32_t max_blocks;             // block-table width: 16-key blocks
};

// How a CudaDecodeQuant launch runs: the CUDA-core kernel with its own pick of heads and global
// merges, or with the group's four heads per CTA and clusters; the tensor-core kernel with
// global merges or clusters, four warps per CTA or two (narrow).
enum class QuantVariant {
  kGlobal,
  kCluster,
  kMmaGlobal,
  kMmaCluster,
  kMmaNarrowGlobal,
  kMmaNarrowCluster,
  kMmaNarrowDeep,  // and three-tile rings; clusters where the plan takes them
  kMmaWhole        // twelve warps per CTA; clusters where the plan splits
};

const char* variant_name(QuantVariant v) {
  switch (v) {
    case QuantVariant::kGlobal: return "global";
    case QuantVariant::kCluster: return "cluster";
    case QuantVariant::kMmaGlobal: return "mma_global";
    case QuantVariant::kMmaCluster: return "mma_cluster";
    case QuantVariant::kMmaNarrowGlobal: return "mma2_global";
    case QuantVariant::kMmaNarrowCluster: return "mma2_cluster";
    case QuantVariant::kMmaNarrowDeep: return "mma2_deep";
    case QuantVariant::kMmaWhole: return "mma12";
  }
  return "?";
}

class CudaDecodeQuant : public ::testing::TestWithParam<std::tuple<QuantCase, QuantVariant>> {
 protected:
  void SetUp() override {
    if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device (cudaGetDeviceCount gave 0)";
    // The tensor-core variants' shared-memory limits, which a CudaBackend would set (the test
    // launches the kernels without one).
    int major = 0;
    ASSERT_EQ(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, 0), cudaSuccess);
    if (major >= 8) kc::decode_attention_mma_init();
  }
};

// decode_attention with RoPE, the fused K/V store and the 8-bit copy, against quantize_acts of
// its own F32 output: the copy must be bitwise equal (q, d and s), whole or split (in a
// cluster or over global memory); split or not, the output must match the unsplit launch.
TEST_P(CudaDecodeQuant, CopyEqualsQuantizeActsBitwise) {
  const QuantCase c = std::get<0>(GetParam());
  int major = 0;
  ASSERT_EQ(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, 0), cudaSuccess);
  const QuantVariant variant = std::get<1>(GetParam());
  const bool deep = variant == QuantVariant::kMmaNarrowDeep;
  const bool narrow = deep || variant == QuantVariant::kMmaNarrowGlobal ||
                      variant == QuantVariant::kMmaNarrowCluster;
  const bool whole = variant == QuantVariant::kMmaWhole;
  const bool clusters = variant == QuantVariant::kCluster ||
                        variant == QuantVariant::kMmaCluster ||
                        variant == QuantVariant::kMmaNarrowCluster || deep || whole;
  const bool mma = narrow || whole || variant == QuantVariant::kMmaGlobal ||
                   variant == QuantVariant::kMmaCluster;
  const int warps = narrow ? 2 : whole ? 12 : 4;
  if (clusters && major < 9) GTEST_SKIP() << "thread-block clusters need compute capability >= 9.0";
  if (mma && !kc::decode_mma_supports(c.n_head, c.n_head_kv, c.head_dim)) {
    GTEST_SKIP() << "the tensor-core kernel takes groups of at most 8 heads";
  }
  const int64_t hd = c.head_dim, nh = c.n_head, nkv = c.n_head_kv, bs = 16;
  const auto n = static_cast<int64_t>(c.contexts.size());
  const int64_t n_blocks = n * c.max_blocks;
  kc::PagedKv kv{.k = nullptr, .v = nullptr, .block_size = bs, .n_head_kv = nkv, .head_dim = hd,
                 .dtype = kc::KvDtype::kBF16};
  const size_t cache_bytes = static_cast<size_t>(n_blocks * nkv * bs * hd * 2);
  DeviceBuffer k_cache(cache_bytes), v_cache(cache_bytes);
  kv.k = k_cache.p;
  kv.v = v_cache.p;
  // Sequence s owns blocks s, s + n, s + 2n, ... (interleaved, not contiguous).
  std::vector<int32_t> tables(static_cast<size_t>(n * c.max_blocks));
  for (int64_t s = 0; s < n; ++s) {
    for (int64_t j = 0; j < c.max_blocks; ++j) {
      tables[s * c.max_blocks + j] = static_cast<int32_t>(j * n + s);
    }
  }
  const auto d_tables = upload(tables);

  // The cached keys: every sequence's positions 0 .. context - 2, stored by kv_store.
  std::vector<int32_t> pre_pos, pre_seq;
  for (int64_t s = 0; s < n; ++s) {
    for (int32_t p = 0; p + 1 < c.contexts[s]; ++p) {
      pre_pos.push_back(p);
      pre_seq.push_back(static_cast<int32_t>(s));
    }
  }
  const auto n_pre = static_cast<int64_t>(pre_pos.size());
  if (n_pre > 0) {
    const auto d_pos = upload(pre_pos), d_seq = upload(pre_seq);
    const auto k = upload(cuda_random_floats(n_pre * nkv * hd, 1, 2.0f));
    const auto v = upload(cuda_random_floats(n_pre * nkv * hd, 2));
    kc::kv_store({.kv = kv,
                  .batch = {.positions = d_pos->as<int32_t>(), .token_seq = d_seq->as<int32_t>(),
                            .block_tables = d_tables->as<int32_t>(), .max_blocks = c.max_blocks,
                            .n_tokens = n_pre},
                  .k = k->as<float>(),
                  .v = v->as<float>()},
                 nullptr);
  }

  // One decode token per sequence, at position context - 1.
  std::vector<int32_t> pos, seq;
  for (int64_t s = 0; s < n; ++s) {
    pos.push_back(c.contexts[s] - 1);
    seq.push_back(static_cast<int32_t>(s));
  }
  const auto d_pos = upload(pos), d_seq = upload(seq);
  const auto q = upload(cuda_random_floats(n * nh * hd, 3, 2.0f));
  const auto k_new = upload(cuda_random_floats(n * nkv * hd, 4, 2.0f));
  const auto v_new = upload(cuda_random_floats(n * nkv * hd, 5));
  const auto inv_freq = upload(cpu::rope_inv_freq(hd, 500000.0f, {}));
  const int64_t n_out = n * nh * hd, chunks = n_out / 32;
  DeviceBuffer out(n_out * sizeof(float));
  DeviceBuffer aq(n_out), ad(chunks * sizeof(float)), as(chunks * sizeof(float));
  DeviceBuffer rq(n_out), rd(chunks * sizeof(float)), rs(chunks * sizeof(float));
  int n_sms = 0;
  ASSERT_EQ(cudaDeviceGetAttribute(&n_sms, cudaDevAttrMultiProcessorCount, 0), cudaSuccess);
  // The cluster variant keeps the group's four heads per CTA, whose grids of a few tokens merge
  // in clusters; the other takes the kernel's own pick.
  const int heads = clusters && !mma ? 4 : 0;
  const kc::DecodeSplit split = kc::plan_decode_split({.n = n,
                                                       .n_head = nh,
                                                       .n_head_kv = nkv,
                                                       .head_dim = hd,
                                                       .max_keys = c.max_blocks * bs,
                                                       .n_sms = n_sms,
                                                       .clusters = clusters,
                                                       .heads_per_cta = heads,
                                                       .mma = mma,
                                                       .mma_warps = warps,
                                                       .mma_deep = deep});
  if (variant == QuantVariant::kCluster) {
    EXPECT_TRUE(split.n_splits == 1 || split.cluster) << "the plan should merge in a cluster";
  }
  if (mma) {
    EXPECT_EQ(split.mma_warps, warps);
    EXPECT_EQ(split.mma_deep, deep);
  }
  DeviceBuffer part_out(split.part_out_floats * sizeof(float)),
      part_lse(split.part_lse_floats * sizeof(float)),
      counters(kc::kDecodeMaxCounters * sizeof(uint32_t));
  ASSERT_EQ(cudaMemset(counters.p, 0, kc::kDecodeMaxCounters * sizeof(uint32_t)), cudaSuccess);
  kc::DecodeAttentionParams d{
      .kv = kv,
      .batch = {.positions = d_pos->as<int32_t>(), .token_seq = d_seq->as<int32_t>(),
                .block_tables = d_tables->as<int32_t>(), .max_blocks = c.max_blocks,
                .n_tokens = n},
      .q = q->as<float>(),
      .out = out.as<float>(),
      .tokens = nullptr,
      .n = n,
      .n_head = nh,
      .scale = 1.0f / std::sqrt(static_cast<float>(hd)),
      .n_splits = split.n_splits,
      .split_len = split.split_len,
      .cluster = split.cluster,
      .heads_per_cta = heads,
      .part_out = split.part_out_floats > 0 ? part_out.as<float>() : nullptr,
      .part_lse = split.part_out_floats > 0 ? part_lse.as<float>() : nullptr,
      .counters = split.part_out_floats > 0 ? counters.as<uint32_t>() : nullptr,
      .k_new = k_new->as<float>(),
      .v_new = v_new->as<float>(),
      .rope = {.inv_freq = inv_freq->as<float>(), .style = RopeStyle::kNeox},
      .quant = {.q = aq.as<int8_t>(), .d = ad.as<float>(), .s = as.as<float>()},
      .mma = mma,
      .mma_warps = split.mma_warps,
      .mma_deep = split.mma_deep};
  kc::decode_attention(d, nullptr);
  kc::quantize_acts({.x = out.as<float>(), .m = n, .k = nh * hd,
                     .out = {.q = rq.as<int8_t>(), .d = rd.as<float>(), .s = rs.as<float>()}},
                    nullptr);
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  const std::string what = fmt::format("{} splits of {} keys{}{}", split.n_splits,
                                       split.split_len, split.cluster ? " in a cluster" : "",
                                       !mma     ? ""
                                       : deep   ? " on tensor cores, two warps, deep rings"
                                       : narrow ? " on tensor cores, two warps"
                                                : " on tensor cores");
  const std::vector<float> f = download<float>(out, n_out);
  EXPECT_TRUE(std::all_of(f.begin(), f.end(), [](float x) { return std::isfinite(x); })) << what;
  EXPECT_EQ(download<int8_t>(aq, n_out), download<int8_t>(rq, n_out)) << what << ": q";
  EXPECT_EQ(float_bits(download<float>(ad, chunks)), float_bits(download<float>(rd, chunks)))
      << what << ": d";
  EXPECT_EQ(float_bits(download<float>(as, chunks)), float_bits(download<float>(rs, chunks)))
      << what << ": s";
  // The launch leaves its split counters at zero (graphs replay it).
  const std::vector<uint32_t> ctr = download<uint32_t>(counters, kc::kDecodeMaxCounters);
  EXPECT_TRUE(std::all_of(ctr.begin(), ctr.end(), [](uint32_t x) { return x == 0; })) << what;

  // gemm_kq's records of the output, where each CTA's heads are whole 256-value stages: the same
  // launch again writing them, against gemm_kq_acts of its output (bitwise, padding included).
  const int resolved = kc::decode_heads_per_cta(nh / nkv, heads, n, nkv, mma);
  if (kc::decode_kq_records_supports(nh, nkv, hd, resolved, split.cluster)) {
    const size_t bytes = kc::gemm_kq_acts_bytes(n, nh * hd);
    DeviceBuffer out2(n_out * sizeof(float)), recs(bytes), want(bytes);
    ASSERT_EQ(cudaMemset(recs.p, 0xA5, bytes), cudaSuccess);  // every byte is written
    kc::DecodeAttentionParams r = d;
    r.out = out2.as<float>();
    r.quant = {};
    r.kq = recs.as<uint8_t>();
    kc::decode_attention(r, nullptr);
    kc::gemm_kq_acts({.x = out2.as<float>(), .y = want.as<uint8_t>(), .m = n, .cols = nh * hd},
                     nullptr);
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    EXPECT_EQ(download<uint8_t>(recs, bytes), download<uint8_t>(want, bytes))
        << what << ": records";
    EXPECT_EQ(float_bits(download<float>(out2, n_out)), float_bits(f)) << what << ": output";
  } else {
    kc::DecodeAttentionParams r = d;
    DeviceBuffer recs(kc::gemm_kq_acts_bytes(n, nh * hd));
    r.kq = recs.as<uint8_t>();
    EXPECT_THROW(kc::decode_attention(r, nullptr), Error) << what;
  }

  // The same launch unsplit (the cache now also holds the new keys, which it stored: the
  // unsplit launch stores the same values again) gives the same output within rounding.
  if (split.n_splits > 1) {
    DeviceBuffer whole(n_out * sizeof(float));
    kc::DecodeAttentionParams w = d;
    w.out = whole.as<float>();
    w.n_splits = 1;
    w.split_len = c.max_blocks * static_cast<int>(bs);
    w.cluster = false;
    w.quant = {};
    kc::decode_attention(w, nullptr);
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    const std::vector<float> g = download<float>(whole, n_out);
    double err = 0.0, ref = 0.0;
    for (int64_t i = 0; i < n_out; ++i) {
      err += (f[i] - g[i]) * static_cast<double>(f[i] - g[i]);
      ref += g[i] * static_cast<double>(g[i]);
    }
    // On tensor cores each split rounds its softmax weights to BF16 against its own maximum.
    EXPECT_LT(err, (mma ? 1e-5 : 1e-10) * ref) << what << ": split against whole";
  }
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, CudaDecodeQuant,
    ::testing::Combine(
        ::testing::Values(
            // Llama-3-8B at batch 1 and 3: split (1024 keys of capacity) and whole (64)
            QuantCase{128, 32, 8, {129}, 64}, QuantCase{128, 32, 8, {1, 40, 700}, 64},
            QuantCase{128, 32, 8, {1, 20, 60}, 4},
            // the benchmark's batch-1 shape: 129 keys in 256 of capacity (splits past the
            // token's length, some empty in a cluster)
            QuantCase{128, 32, 8, {129}, 16}, QuantCase{128, 32, 8, {33}, 16},
            // 16 query heads per KV head (two CTAs each), head_dim 64; 1:1 groups
            QuantCase{64, 16, 1, {300, 2}, 32}, QuantCase{64, 4, 4, {17}, 2}),
        ::testing::Values(QuantVariant::kGlobal, QuantVariant::kCluster,
                          QuantVariant::kMmaGlobal, QuantVariant::kMmaCluster,
                          QuantVariant::kMmaNarrowGlobal, QuantVariant::kMmaNarrowCluster,
                          QuantVariant::kMmaNarrowDeep, QuantVariant::kMmaWhole)),
    [](const auto& i) {
      const QuantCase& c = std::get<0>(i.param);
      return fmt::format("hd{}_h{}kv{}_n{}_ctx{}_w{}_{}", c.head_dim, c.n_head, c.n_head_kv,
                         c.contexts.size(), c.contexts[0], c.max_blocks,
                         variant_name(std::get<1>(i.param)));
    });

// ---- long contexts against a reference computed here ------------------------------------

struct LongCase {
  int64_t head_dim;
  int64_t n_head;
  int64_t n_head_kv;
  KvCacheDtype kv;
  int64_t context;  // keys the first decode token sees
  bool mma = false;  // on tensor cores (q and the softmax weights rounded to the cache's type)
  int mma_warps = 0;  // CudaBackendOptions::decode_mma_warps
  bool deep = false;  // CudaBackendOptions::decode_mma_deep
};

float round_to_cache(float x, KvCacheDtype d) {
  if (d == KvCacheDtype::kF16) return static_cast<float>(static_cast<_Float16>(x));
  uint32_t b;
  std::memcpy(&b, &x, 4);
  b = (b + 0x7fffu + ((b >> 16) & 1u)) & 0xffff0000u;  // round to nearest even
  float r;
  std::memcpy(&r, &b, 4);
  return r;
}

class CudaDecodeLong : public ::testing::TestWithParam<LongCase> {
 protected:
  void SetUp() override {
    if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device (cudaGetDeviceCount gave 0)";
    int smem = 0;
    ASSERT_EQ(cudaDeviceGetAttribute(&smem, cudaDevAttrMaxSharedMemoryPerBlockOptin, 0), cudaSuccess);
    if (GetParam().mma_warps == 12 &&
        !kc::decode_mma_whole_fits(GetParam().head_dim, static_cast<size_t>(smem))) {
      GTEST_SKIP() << "twelve-warp CTAs need more shared memory per CTA than this GPU gives";
    }
    CudaBackendOptions o;
    o.gpu_memory_fraction = 0.5;
    o.kv_dtype = GetParam().kv;
    o.decode_mma_min_batch = GetParam().mma ? 1 : 0;
    o.decode_mma_warps = GetParam().mma_warps;
    o.decode_mma_deep = GetParam().deep;
    cuda_ = make_cuda_backend(o);
  }
  float* dev(const std::vector<float>& host) {
    auto* p = static_cast<float*>(cuda_->alloc(host.size() * sizeof(float)));
    cuda_->copy_to_device(p, host.data(), host.size() * sizeof(float));
    return p;
  }
  std::unique_ptr<Backend> cuda_;
};

TEST_P(CudaDecodeLong, MatchesDoubleReference) {
  const LongCase c = GetParam();
  const int64_t hd = c.head_dim, nh = c.n_head, nkv = c.n_head_kv, group = nh / nkv;
  const int64_t keys = c.context + 1;  // two decode tokens: at context - 1 and context
  constexpr int64_t kBlock = 16;
  const auto blocks = static_cast<int32_t>((keys + kBlock - 1) / kBlock);
  const int32_t width = next_pow2(blocks);  // as the engine's graph buckets pad tables
  std::vector<int32_t> table(blocks);
  std::iota(table.begin(), table.end(), 0);
  std::shuffle(table.begin(), table.end(), std::mt19937(3));
  table.resize(width, -1);
  cuda_->init_kv_cache({1, blocks, kBlock, nkv, hd});

  // Every key's K and V, [keys][n_head_kv][head_dim], and what the cache holds of them.
  const std::vector<float> k_all = cuda_random_floats(keys * nkv * hd, 11, 2.0f);
  const std::vector<float> v_all = cuda_random_floats(keys * nkv * hd, 12);
  std::vector<float> k_held(k_all.size()), v_held(v_all.size());
  for (size_t i = 0; i < k_all.size(); ++i) {
    k_held[i] = round_to_cache(k_all[i], c.kv);
    v_held[i] = round_to_cache(v_all[i], c.kv);
  }
  const AttentionParams ap{0, nh, nkv, hd, 1.0f / std::sqrt(static_cast<float>(hd))};
  auto meta = [&](int64_t first, int64_t n) {
    BatchMeta b;
    b.tokens.assign(n, 1);
    for (int64_t i = 0; i < n; ++i) b.positions.push_back(static_cast<int32_t>(first + i));
    b.token_seq.assign(n, 0);
    b.seq_start = {0, static_cast<int32_t>(n)};
    b.seq_kv_len = {static_cast<int32_t>(first + n)};
    b.block_tables = table;
    b.max_blocks = width;
    return b;
  };

  // Fill keys 0 .. context - 2 with prefill steps (their outputs are not checked here).
  constexpr int64_t kChunk = 4096;
  float* q0 = static_cast<float*>(cuda_->alloc(kChunk * nh * hd * sizeof(float)));
  float* scratch_out = static_cast<float*>(cuda_->alloc(kChunk * nh * hd * sizeof(float)));
  cuda_->copy_to_device(q0, std::vector<float>(kChunk * nh * hd, 0.0f).data(),
                        kChunk * nh * hd * sizeof(float));
  for (int64_t first = 0; first < c.context - 1; first += kChunk) {
    const int64_t n = std::min(kChunk, c.context - 1 - first);
    cuda_->begin_step(meta(first, n));
    float* k = dev({k_all.begin() + first * nkv * hd, k_all.begin() + (first + n) * nkv * hd});
    float* v = dev({v_all.begin() + first * nkv * hd, v_all.begin() + (first + n) * nkv * hd});
    cuda_->attention(q0, k, v, scratch_out, ap);
  }

  // Two decode steps (K/V stored by the decode kernel); the second reads the first's key.
  for (int64_t pos = c.context - 1; pos <= c.context; ++pos) {
    const std::vector<float> q = cuda_random_floats(nh * hd, static_cast<uint32_t>(pos), 2.0f);
    cuda_->begin_step(meta(pos, 1));
    float* out = dev(std::vector<float>(nh * hd, NAN));
    cuda_->attention(
        dev(q), dev({k_all.begin() + pos * nkv * hd, k_all.begin() + (pos + 1) * nkv * hd}),
        dev({v_all.begin() + pos * nkv * hd, v_all.begin() + (pos + 1) * nkv * hd}), out, ap);
    std::vector<float> got(nh * hd);
    cuda_->copy_to_host(got.data(), out, got.size() * sizeof(float));

    std::vector<float> ref(nh * hd);
    std::vector<double> s(pos + 1);
    for (int64_t h = 0; h < nh; ++h) {
      const int64_t kvh = h / group;
      double mx = -INFINITY;
      for (int64_t j = 0; j <= pos; ++j) {
        double dot = 0.0;
        for (int64_t d = 0; d < hd; ++d) {
          dot += static_cast<double>(q[h * hd + d]) * k_held[(j * nkv + kvh) * hd + d];
        }
        s[j] = dot * ap.scale;
        mx = std::max(mx, s[j]);
      }
      double den = 0.0;
      for (int64_t j = 0; j <= pos; ++j) den += (s[j] = std::exp(s[j] - mx));
      for (int64_t d = 0; d < hd; ++d) {
        double num = 0.0;
        for (int64_t j = 0; j <= pos; ++j) {
          num += s[j] * v_held[(j * nkv + kvh) * hd + d];
        }
        ref[h * hd + d] = static_cast<float>(num / den);
      }
    }
    const double tol = !c.mma ? 1e-8 : c.kv == KvCacheDtype::kBF16 ? 1e-4 : 2e-6;
    EXPECT_LT(nmse(got, ref), tol) << "decode token at position " << pos;
  }
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, CudaDecodeLong,
    ::testing::Values(LongCase{128, 32, 8, KvCacheDtype::kBF16, 4096},  // Llama-3-8B
                      LongCase{128, 32, 8, KvCacheDtype::kBF16, 32768},
                      LongCase{64, 8, 1, KvCacheDtype::kF16, 4096},     // G = 8
                      LongCase{128, 16, 1, KvCacheDtype::kBF16, 4096},  // G = 16
                      LongCase{80, 4, 4, KvCacheDtype::kF16, 4096},     // G = 1, no tensor cores
                      LongCase{128, 32, 8, KvCacheDtype::kBF16, 4096, true},
                      LongCase{128, 32, 8, KvCacheDtype::kBF16, 32768, true},
                      LongCase{64, 8, 1, KvCacheDtype::kF16, 4096, true},
                      LongCase{128, 4, 4, KvCacheDtype::kF16, 4096, true},
                      LongCase{128, 32, 8, KvCacheDtype::kBF16, 4096, true, 2},
                      LongCase{64, 8, 1, KvCacheDtype::kF16, 4096, true, 2},
                      LongCase{128, 32, 8, KvCacheDtype::kBF16, 4096, true, 2, true},
                      LongCase{128, 32, 8, KvCacheDtype::kBF16, 4096, true, 4},
                      LongCase{128, 32, 8, KvCacheDtype::kBF16, 32768, true, 12},
                      LongCase{64, 8, 1, KvCacheDtype::kF16, 4096, true, 12}),
    [](const auto& i) {
      return fmt::format("hd{}_h{}kv{}_{}_ctx{}{}{}{}", i.param.head_dim, i.param.n_head,
                         i.param.n_head_kv, dtype_name(i.param.kv), i.param.context,
                         i.param.mma ? "_mma" : "",
                         i.param.mma_warps > 0 ? fmt::format("{}w", i.param.mma_warps) : "",
                         i.param.deep ? "_deep" : "");
    });

// ---- split planning (host only) ---------------------------------------------------------

// The split plans below take one CTA per KV head's whole group (heads_per_cta 8: at most the
// group rounded up), the grid geometry they were written for.
TEST(DecodeSplitPlan, CoversCapacityAndSplitsOnlySmallGrids) {
  auto plan = [](int64_t n, int64_t nh, int64_t nkv, int64_t hd, int64_t keys) {
    return kc::plan_decode_split({.n = n, .n_head = nh, .n_head_kv = nkv, .head_dim = hd,
                                  .max_keys = keys, .n_sms = 132, .heads_per_cta = 8});
  };
  // Llama-3-8B on an H200: batch 1 splits into pieces of at least eight ring stages (256
  // keys), batch 64 (512 CTAs) does not split.
  const kc::DecodeSplit b1 = plan(1, 32, 8, 128, 2048);
  EXPECT_EQ(b1.n_splits, 8);
  EXPECT_EQ(b1.split_len, 256);
  EXPECT_EQ(b1.part_lse_floats, 1 * 32 * 8);
  EXPECT_EQ(b1.part_out_floats, 1 * 32 * 8 * 128);
  EXPECT_EQ(plan(1, 32, 8, 128, 2049).n_splits, 9);
  // The benchmark's 128-token context (9 blocks of capacity) and up to 256 keys run whole.
  EXPECT_EQ(plan(1, 32, 8, 128, 144).n_splits, 1);
  EXPECT_EQ(plan(1, 32, 8, 128, 256).n_splits, 1);
  // A cap from the options.
  EXPECT_EQ(kc::plan_decode_split({.n = 1, .n_head = 32, .n_head_kv = 8, .head_dim = 128,
                                   .max_keys = 32768, .n_sms = 132, .max_splits = 4,
                                   .heads_per_cta = 8})
                .n_splits,
            4);
  const kc::DecodeSplit b64 = plan(64, 32, 8, 128, 256);
  EXPECT_EQ(b64.n_splits, 1);
  EXPECT_EQ(b64.split_len, 256);
  EXPECT_EQ(b64.part_out_floats, 0);
  const kc::DecodeSplit long_ctx = plan(1, 32, 8, 128, 32768);
  EXPECT_EQ(long_ctx.n_splits, 32);
  EXPECT_EQ(long_ctx.split_len, 1024);
  // Short capacities stay whole.
  EXPECT_EQ(plan(1, 32, 8, 128, 64).n_splits, 1);
  for (int64_t n : {1, 3, 16, 64}) {
    for (auto [nh, nkv, hd] : {std::tuple<int64_t, int64_t, int64_t>{32, 8, 128},
                               {8, 1, 64},
                               {4, 4, 80},
                               {16, 1, 128},
                               {9, 3, 64},
                               {12, 2, 256}}) {
      for (int64_t keys : {1, 16, 130, 256, 1500, 4096, 32768, 131072}) {
        const kc::DecodeSplit s = plan(n, nh, nkv, hd, keys);
        const std::string what =
            fmt::format("n {} heads {}/{} dim {} keys {}", n, nh, nkv, hd, keys);
        EXPECT_GE(static_cast<int64_t>(s.n_splits) * s.split_len, keys) << what;
        EXPECT_GE(s.n_splits, 1) << what;
        EXPECT_LE(s.n_splits, kc::kDecodeMaxSplits) << what;
        if (s.n_splits > 1) {
          EXPECT_LT(static_cast<int64_t>(s.n_splits - 1) * s.split_len, keys)
              << what;  // none empty
          EXPECT_LT(n * nh, 2 * 132 * 8) << what;
          EXPECT_EQ(s.part_out_floats, n * nh * s.n_splits * hd) << what;
        }
      }
    }
  }
  for (int64_t keys : {256, 4096}) EXPECT_FALSE(plan(1, 32, 8, 128, keys).cluster);
  EXPECT_TRUE(kc::decode_attention_supports(64, 8, 256));
  EXPECT_TRUE(kc::decode_attention_supports(32, 8, 512));
  EXPECT_FALSE(kc::decode_attention_supports(64, 8, 512));  // 8 heads per CTA: dim <= 256
  EXPECT_FALSE(kc::decode_attention_supports(32, 8, 100));  // not a multiple of 8
  EXPECT_FALSE(kc::decode_attention_supports(30, 8, 128));  // heads not a multiple of KV heads
}

// The kernel's pick of query heads per CTA: two, or one where two would leave fewer than 16
// CTAs before the key splits; never more than the group rounded up.
TEST(DecodeSplitPlan, HeadsPerCtaPick) {
  EXPECT_EQ(kc::decode_heads_per_cta(4, 0, 1, 8), 2);   // Llama-3-8B batch 1
  EXPECT_EQ(kc::decode_heads_per_cta(4, 0, 1, 4), 1);   // its TP2 rank: four KV heads
  EXPECT_EQ(kc::decode_heads_per_cta(4, 0, 64, 8), 2);
  EXPECT_EQ(kc::decode_heads_per_cta(3, 0, 1, 3), 1);   // SmolLM2 batch 1
  EXPECT_EQ(kc::decode_heads_per_cta(3, 0, 8, 3), 2);
  EXPECT_EQ(kc::decode_heads_per_cta(1, 0, 64, 8), 1);  // no GQA
  EXPECT_EQ(kc::decode_heads_per_cta(4, 8, 1, 8), 4);   // a request above the group
  EXPECT_EQ(kc::decode_heads_per_cta(16, 8, 1, 1), 8);
  EXPECT_THROW(kc::decode_heads_per_cta(4, 3, 1, 8), Error);
  // The plan follows the pick: Llama-3-8B batch 1 at 256 keys, two heads per CTA, 16 CTAs.
  const kc::DecodeSplit auto_plan = kc::plan_decode_split(
      {.n = 1, .n_head = 32, .n_head_kv = 8, .head_dim = 128, .max_keys = 256, .n_sms = 132,
       .clusters = true});
  EXPECT_TRUE(auto_plan.cluster);
  EXPECT_GT(auto_plan.n_splits, 1);
  // On tensor cores a CTA takes the whole group: Llama-3-8B batch 64 is 512 CTAs, unsplit;
  // batch 16 (128 CTAs) splits its keys in rounds of 64.
  EXPECT_EQ(kc::decode_heads_per_cta(4, 0, 64, 8, true), 4);
  EXPECT_EQ(kc::decode_heads_per_cta(3, 2, 1, 3, true), 3);
  const kc::DecodeSplit mma64 = kc::plan_decode_split(
      {.n = 64, .n_head = 32, .n_head_kv = 8, .head_dim = 128, .max_keys = 256, .n_sms = 132,
       .clusters = true, .mma = true});
  EXPECT_EQ(mma64.n_splits, 1);
  const kc::DecodeSplit mma16 = kc::plan_decode_split(
      {.n = 16, .n_head = 32, .n_head_kv = 8, .head_dim = 128, .max_keys = 4096, .n_sms = 132,
       .clusters = true, .mma = true});
  EXPECT_GT(mma16.n_splits, 1);
  EXPECT_EQ(mma16.split_len % kc::decode_mma_stage_keys(mma16.mma_warps), 0);
  EXPECT_TRUE(kc::decode_mma_supports(32, 8, 128));
  EXPECT_TRUE(kc::decode_mma_supports(9, 3, 64));
  EXPECT_FALSE(kc::decode_mma_supports(16, 1, 128));  // a group of 16
  EXPECT_FALSE(kc::decode_mma_supports(8, 2, 80));
}

// With clusters the splits may be one ring stage (32 keys here) long, up to a cluster's size;
// longer contexts merge over global memory once that gives more splits.
TEST(DecodeSplitPlan, ClusterSplitsForShortAndMidContexts) {
  auto plan = [](int64_t n, int64_t keys, int max_splits = 0) {
    return kc::plan_decode_split({.n = n, .n_head = 32, .n_head_kv = 8, .head_dim = 128,
                                  .max_keys = keys, .n_sms = 132, .max_splits = max_splits,
                                  .clusters = true, .heads_per_cta = 8});
  };
  // Whether the plan merges in a cluster, its splits and their length.
  auto expect_plan = [](const kc::DecodeSplit& s, bool cluster, int splits, int len,
                        const char* what) {
    EXPECT_EQ(s.cluster, cluster) << what;
    EXPECT_EQ(s.n_splits, splits) << what;
    EXPECT_EQ(s.split_len, len) << what;
  };
  const kc::DecodeSplit b1 = plan(1, 256);
  expect_plan(b1, true, 8, 32, "the benchmark's 129 keys, bucketed to 256");
  EXPECT_EQ(b1.part_out_floats, 0);
  EXPECT_EQ(b1.part_lse_floats, 0);
  expect_plan(plan(1, 2048), true, 8, 256, "2048 keys");
  expect_plan(plan(1, 64), true, 2, 32, "64 keys");
  EXPECT_EQ(plan(1, 32).n_splits, 1);
  const kc::DecodeSplit g = plan(1, 4096);
  expect_plan(g, false, 16, 256, "4096 keys: 16 global splits of 256 beat 8 in a cluster of 512");
  EXPECT_EQ(g.part_lse_floats, 32 * 16);
  expect_plan(plan(1, 4096, 4), true, 4, 1024, "a cap that leaves no more than a cluster holds");
  // Batch 4 (32 CTAs) splits in clusters: about two CTAs per SM; batch 8 (64 CTAs: more than
  // one per four SMs) splits only over global memory, from 512 keys on; batch 64 never.
  expect_plan(plan(4, 256), true, 8, 32, "batch 4");
  EXPECT_EQ(plan(8, 256).n_splits, 1);
  expect_plan(plan(8, 2048), false, 5, 416, "batch 8, 2048 keys");
  EXPECT_EQ(plan(64, 256).n_splits, 1);
  for (int64_t n : {1, 2, 3, 16}) {
    for (int64_t keys : {1, 16, 33, 130, 256, 1500, 2048, 4096, 32768}) {
      const kc::DecodeSplit s = plan(n, keys);
      const std::string what = fmt::format("n {} keys {}", n, keys);
      EXPECT_GE(static_cast<int64_t>(s.n_splits) * s.split_len, keys) << what;
      if (s.n_splits > 1) {
        EXPECT_LT(static_cast<int64_t>(s.n_splits - 1) * s.split_len, keys) << what;
      }
      if (s.cluster) {
        EXPECT_LE(s.n_splits, kc::kDecodeMaxClusterSplits) << what;
        EXPECT_EQ(s.split_len % 32, 0) << what;
        EXPECT_EQ(s.part_out_floats, 0) << what;
      }
    }
  }
}

// The tensor-core kernel's narrow CTAs (two warps, five per SM) serve grids that four-warp CTAs
// (three per SM) would run in more than one wave; forced, they also split, in 32-key stages.
TEST(DecodeSplitPlan, NarrowTensorCoreCtasForGridsOverOneWave) {
  auto plan = [](int64_t n, int64_t keys, int warps = 0) {
    return kc::plan_decode_split({.n = n, .n_head = 32, .n_head_kv = 8, .head_dim = 128,
                                  .max_keys = keys, .n_sms = 132, .clusters = true,
                                  .mma = true, .mma_warps = warps});
  };
  EXPECT_EQ(plan(49, 256).mma_warps, 4);  // 392 CTAs: one wave of 396
  EXPECT_EQ(plan(50, 256).mma_warps, 2);  // 400
  EXPECT_EQ(plan(64, 256).mma_warps, 2);
  EXPECT_EQ(plan(64, 256).n_splits, 1);
  EXPECT_EQ(plan(1, 256, 4).mma_warps, 4);
  EXPECT_EQ(plan(64, 256, 4).mma_warps, 4);
  const kc::DecodeSplit forced = plan(1, 256, 2);
  EXPECT_EQ(forced.mma_warps, 2);
  EXPECT_GT(forced.n_splits, 1);
  EXPECT_EQ(forced.split_len % 32, 0);
  EXPECT_EQ(plan(1, 256, 4).split_len % 64, 0);
  // Three-tile rings for narrow CTAs where four per SM hold the grid (528 on 132 SMs).
  auto deep = [](int64_t n) {
    return kc::plan_decode_split({.n = n, .n_head = 32, .n_head_kv = 8, .head_dim = 128,
                                  .max_keys = 256, .n_sms = 132, .mma = true, .mma_deep = true});
  };
  EXPECT_TRUE(deep(64).mma_deep);
  EXPECT_TRUE(deep(66).mma_deep);
  EXPECT_FALSE(deep(67).mma_deep);
  EXPECT_FALSE(deep(32).mma_deep);  // four warps
  EXPECT_FALSE(plan(64, 256).mma_deep);
}

// Grids of at most one CTA per eight SMs (batches 1-2 of Llama-3-8B's 8 KV heads on 132 SMs)
// take twelve-warp CTAs, whose rounds of 192 keys leave short contexts unsplit: at batch 1 up
// to a round and a half (288 keys).
TEST(DecodeSplitPlan, WholeTensorCoreCtasForGridsOfAFewTokens) {
  auto plan = [](int64_t n, int64_t keys, int warps = 0) {
    return kc::plan_decode_split({.n = n, .n_head = 32, .n_head_kv = 8, .head_dim = 128,
                                  .max_keys = keys, .n_sms = 132, .clusters = true,
                                  .mma = true, .mma_warps = warps});
  };
  EXPECT_EQ(kc::decode_mma_stage_keys(12), 192);
  for (int64_t n : {1, 2}) {
    EXPECT_EQ(plan(n, 192).mma_warps, 12) << n;
    EXPECT_EQ(plan(n, 192).n_splits, 1) << n;  // the benchmark's 129-192 keys: one round
  }
  EXPECT_EQ(plan(3, 192).mma_warps, 4);  // 24 CTAs
  for (int64_t keys : {208, 256, 272, 288}) {  // the benchmark's tables of 200 and 264 keys
    const kc::DecodeSplit one = plan(1, keys);
    EXPECT_EQ(one.mma_warps, 12) << keys;
    EXPECT_EQ(one.n_splits, 1) << keys;
    EXPECT_GE(one.split_len, keys) << keys;
  }
  for (const auto& [n, keys] : {std::pair<int64_t, int64_t>{1, 289}, {1, 372}, {2, 208}}) {
    const kc::DecodeSplit two = plan(n, keys);
    EXPECT_EQ(two.mma_warps, 12) << n << " " << keys;
    EXPECT_TRUE(two.cluster) << n << " " << keys;
    EXPECT_EQ(two.n_splits, 2) << n << " " << keys;
    EXPECT_EQ(two.split_len, 192) << n << " " << keys;
  }
  const kc::DecodeSplit long_ctx = plan(1, 4096);
  EXPECT_EQ(long_ctx.split_len % 192, 0);
  EXPECT_GE(static_cast<int64_t>(long_ctx.n_splits) * long_ctx.split_len, 4096);
  EXPECT_LE(long_ctx.n_splits, kc::kDecodeMaxSplits);
  EXPECT_EQ(plan(1, 192, 4).mma_warps, 4);  // asked for
  // Devices whose CTAs get less shared memory (an A100: 163 KB) keep four warps at head_dim
  // 128; asking them for twelve is an error.
  EXPECT_TRUE(kc::decode_mma_whole_fits(128, 227 * 1024));
  EXPECT_FALSE(kc::decode_mma_whole_fits(128, 163 * 1024));
  EXPECT_TRUE(kc::decode_mma_whole_fits(64, 163 * 1024));
  EXPECT_FALSE(kc::decode_mma_whole_fits(64, 96 * 1024));
  EXPECT_FALSE(kc::decode_mma_whole_fits(80, 227 * 1024));
  auto small = [](int warps) {
    return kc::plan_decode_split({.n = 1, .n_head = 32, .n_head_kv = 8, .head_dim = 128,
                                  .max_keys = 192, .n_sms = 108, .clusters = true, .mma = true,
                                  .mma_warps = warps, .mma_whole = false});
  };
  EXPECT_EQ(small(0).mma_warps, 4);
  EXPECT_THROW(small(12), Error);
}

// ---- timing ------------------------------------------------------------------------------

// Decode attention of Llama-3-8B (32 heads, 8 KV heads, head_dim 128, BF16 cache, RoPE and the
// 8-bit output copy fused) inside a CUDA graph of one call per layer, as decode steps run it;
// prints the time per call and the K/V read rate. The caches hold real (prefilled) values, so
// the outputs must be finite.
TEST(CudaAttentionPerf, DecodeLlama3Shapes) {
  if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device (cudaGetDeviceCount gave 0)";
  struct Shape {
    int64_t batch, context, layers;
  };
  constexpr int64_t kHeads = 32, kKvHeads = 8, kDim = 128, kBlock = 16;
  for (const Shape& sh : {Shape{1, 130, 32}, Shape{1, 256, 32}, Shape{64, 130, 32},
                          Shape{1, 4096, 32}, Shape{1, 32768, 8}}) {
    CudaBackendOptions o;
    o.gpu_memory_fraction = 0.5;
    o.kv_dtype = KvCacheDtype::kBF16;
    auto be = make_cuda_backend(o);
    const auto per_seq = static_cast<int32_t>((sh.context + kBlock - 1) / kBlock);
    const int32_t width = next_pow2(std::max(per_seq, 4));
    be->init_kv_cache({sh.layers, sh.batch * per_seq, kBlock, kKvHeads, kDim});
    auto meta = [&](int64_t n_tok, int64_t first) {
      BatchMeta b;
      b.seq_start.push_back(0);
      for (int64_t s = 0; s < sh.batch; ++s) {
        for (int64_t i = 0; i < n_tok; ++i) {
          b.tokens.push_back(1);
          b.positions.push_back(static_cast<int32_t>(first + i));
          b.token_seq.push_back(static_cast<int32_t>(s));
        }
        b.seq_start.push_back(b.n_tokens());
        b.seq_kv_len.push_back(static_cast<int32_t>(first + n_tok));
        for (int32_t j = 0; j < width; ++j) {
          b.block_tables.push_back(j < per_seq ? static_cast<int32_t>(s * per_seq + j) : -1);
        }
      }
      b.max_blocks = width;
      return b;
    };
    auto dev = [&](const std::vector<float>& h) {
      auto* p = static_cast<float*>(be->alloc(h.size() * sizeof(float)));
      be->copy_to_device(p, h.data(), h.size() * sizeof(float));
      return p;
    };
    // Llama-3's RoPE inside attention, as the engine runs it.
    const RopeParams rope{.n_head = kHeads,
                          .n_head_kv = kKvHeads,
                          .head_dim = kDim,
                          .style = RopeStyle::kNeox,
                          .theta = 500000.0f,
                          .scaling = {}};
    const AttentionParams ap0{0, kHeads, kKvHeads, kDim, 1.0f / std::sqrt(128.0f), &rope};
    auto params = [&](int64_t layer) {
      AttentionParams a = ap0;
      a.layer = layer;
      return a;
    };
    {  // prefill every layer with the same random keys
      const int64_t n = sh.batch * (sh.context - 1);
      float* q = dev(std::vector<float>(n * kHeads * kDim, 0.0f));
      float* k = dev(cuda_random_floats(n * kKvHeads * kDim, 1, 2.0f));
      float* v = dev(cuda_random_floats(n * kKvHeads * kDim, 2));
      float* out = static_cast<float*>(be->alloc(n * kHeads * kDim * sizeof(float)));
      be->begin_step(meta(sh.context - 1, 0));
      for (int64_t l = 0; l < sh.layers; ++l) be->attention(q, k, v, out, params(l));
      be->sync();
    }
    const int64_t n = sh.batch;
    float* q = dev(cuda_random_floats(n * kHeads * kDim, 3, 2.0f));
    float* k = dev(cuda_random_floats(n * kKvHeads * kDim, 4, 2.0f));
    float* v = dev(cuda_random_floats(n * kKvHeads * kDim, 5));
    float* out = dev(std::vector<float>(n * kHeads * kDim, NAN));
    const BatchMeta decode = meta(1, sh.context - 1);
    const GraphKey key{static_cast<int32_t>(sh.batch), width};
    for (int pass = 0; pass < 2; ++pass) {  // the first sizes the scratch, the second captures
      be->begin_step(decode);
      be->graph_capture_begin(key);
      for (int64_t l = 0; l < sh.layers; ++l) be->attention(q, k, v, out, params(l));
      be->graph_capture_end();
    }
    be->sync();
    auto stream = static_cast<cudaStream_t>(cuda_backend_stream(*be));
    cudaEvent_t e0, e1;
    ASSERT_EQ(cudaEventCreate(&e0), cudaSuccess);
    ASSERT_EQ(cudaEventCreate(&e1), cudaSuccess);
    constexpr int kReps = 20;
    ASSERT_EQ(cudaEventRecord(e0, stream), cudaSuccess);
    for (int r = 0; r < kReps; ++r) ASSERT_TRUE(be->graph_replay(key));
    ASSERT_EQ(cudaEventRecord(e1, stream), cudaSuccess);
    ASSERT_EQ(cudaEventSynchronize(e1), cudaSuccess);
    float ms = 0.0f;
    ASSERT_EQ(cudaEventElapsedTime(&ms, e0, e1), cudaSuccess);
    cudaEventDestroy(e0);
    cudaEventDestroy(e1);
    const double us = 1e3 * ms / (kReps * sh.layers);
    const double bytes = 2.0 * sh.batch * sh.context * kKvHeads * kDim * 2;
    const kc::DecodeSplit split =
        kc::plan_decode_split({.n = n,
                               .n_head = kHeads,
                               .n_head_kv = kKvHeads,
                               .head_dim = kDim,
                               .max_keys = static_cast<int64_t>(width) * kBlock,
                               .n_sms = cuda_device_info(*be).sm_count});
    fmt::print(
        "[ perf ] decode attention batch {:>2} context {:>5}: {:7.2f} us per layer "
        "call, K/V read {:7.1f} GB/s ({} splits of {} keys)\n",
        sh.batch, sh.context, us, bytes / us * 1e-3, split.n_splits, split.split_len);
    std::vector<float> got(n * kHeads * kDim);
    be->copy_to_host(got.data(), out, got.size() * sizeof(float));
    EXPECT_TRUE(std::all_of(got.begin(), got.end(), [](float x) { return std::isfinite(x); }));
  }
}

}  // namespace
}  // namespace tpnode::test
