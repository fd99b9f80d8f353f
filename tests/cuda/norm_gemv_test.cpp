// The RMSNorm folded into the batch-1 group GEMV (gemv_norm_group) against a host reference:
// x (+ r) times the norm weights quantized per 32-value chunk with quantize_acts' recipe, the
// double-precision product of the host-dequantized weights with those 8-bit values, scaled by
// 1 / rms. Also: x + r written to x_out bitwise (x untouched), repeated launches bitwise equal, the unfused path (rmsnorm kernel + gemv_group) close, and the backend's
// norm_matmul_shared with the option on against the CPU backend.
#include <cuda_runtime.h>
#include <fmt/format.h>

#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "kernels/cuda/elementwise.h"
#include "kernels/cuda/gemv.h"
#include "tests/cuda/cuda_test_support.h"
#include "tests/cuda/gemv_reference.h"

namespace tpnode::test {
namespace {

namespace kc = ::tpnode::cuda;

constexpr int64_t kMaxCols = 8192;
constexpr int64_t kMaxRows = 2 * 14336;

struct NormCase {
  TensorType type;
  std::vector<int64_t> rows;
  int64_t cols;
  bool residual;
};

std::string case_name(const ::testing::TestParamInfo<NormCase>& i) {
  std::string s = fmt::format("{}_c{}_r", kc::weight_type_label(i.param.type), i.param.cols);
  for (int64_t r : i.param.rows) s += fmt::format("{}_", r);
  return s + (i.param.residual ? "residual" : "plain");
}

// The host's 8-bit copy of v: d = amax / 127, q = round-half-even(v / d) per 32 values.
void quantize_host(const std::vector<float>& v, std::vector<int8_t>& q, std::vector<float>& d) {
  const size_t chunks = v.size() / 32;
  q.assign(v.size(), 0);
  d.assign(chunks, 0.0f);
  for (size_t c = 0; c < chunks; ++c) {
    float amax = 0.0f;
    for (size_t i = 32 * c; i < 32 * c + 32; ++i) amax = std::max(amax, std::fabs(v[i]));
    d[c] = amax / 127.0f;
    for (size_t i = 32 * c; i < 32 * c + 32; ++i) {
      q[i] = amax > 0.0f ? static_cast<int8_t>(std::nearbyint(v[i] / d[c])) : 0;
    }
  }
}

class NormGemv : public CudaVsCpu, public ::testing::WithParamInterface<NormCase> {
 protected:
  void SetUp() override {
    CudaVsCpu::SetUp();
    if (IsSkipped()) return;
    stream_ = static_cast<cudaStream_t>(cuda_backend_stream(*cuda_));
    auto f = [&](int64_t n) { return static_cast<float*>(cuda_->alloc(n * sizeof(float))); };
    x_ = f(kMaxCols);
    r_ = f(kMaxCols);
    w_ = f(kMaxCols);
    h_ = f(kMaxCols);
    y_ = f(kMaxRows);
    y2_ = f(kMaxRows);
    x_out_ = f(kMaxCols);
    xq_ = {static_cast<int8_t*>(cuda_->alloc(kMaxCols)), f(kMaxCols / 32), f(kMaxCols / 32)};
  }

  cudaStream_t stream_ = nullptr;
  float *x_ = nullptr, *r_ = nullptr, *w_ = nullptr, *h_ = nullptr, *y_ = nullptr, *y2_ = nullptr;
  float* x_out_ = nullptr;
  kc::QuantActs xq_;
};

TEST_P(NormGemv, MatchesHostNormThenProduct) {
  const NormCase c = GetParam();
  const int64_t cols = c.cols;
  std::vector<QuantMatrix> mats;
  std::vector<kc::DeviceMatrix> dms;
  for (size_t i = 0; i < c.rows.size(); ++i) {
    mats.push_back(make_quant_matrix(*cuda_, c.type, c.rows[i], cols, 40 + 3 * static_cast<uint32_t>(i)));
    const Weight& w = mats.back().gpu;
    dms.push_back(kc::device_matrix(w.type, w.rows, w.cols, w.data));
  }
  const kc::GemvGroupParams p =
      kc::stacked_gemv_group(dms.data(), static_cast<int>(dms.size()), y_, {});
  ASSERT_TRUE(kc::gemv_norm_group_supports(p)) << case_name({c, 0});

  const std::vector<float> x = cuda_random_floats(cols, 1, 3.0f);
  const std::vector<float> r = cuda_random_floats(cols, 2, 2.0f);
  std::vector<float> w = cuda_random_floats(cols, 3);
  for (float& v : w) v = 1.0f + 0.5f * v;
  cuda_->copy_to_device(x_, x.data(), cols * sizeof(float));
  cuda_->copy_to_device(r_, r.data(), cols * sizeof(float));
  cuda_->copy_to_device(w_, w.data(), cols * sizeof(float));
  const std::vector<float> stale(cols, -7.0f);
  cuda_->copy_to_device(x_out_, stale.data(), cols * sizeof(float));
  const kc::GemvNorm norm{.x = x_, .r = c.residual ? r_ : nullptr, .x_out = x_out_, .w = w_,
                          .eps = 1e-5f};
  kc::gemv_norm_group(p, norm, stream_);
  const std::vector<float> got = get(*cuda_, y_, p.total_rows);
  const std::vector<float> x_after = get(*cuda_, x_, cols);
  const std::vector<float> sum_after = get(*cuda_, x_out_, cols);

  // Host reference.
  std::vector<float> xs(cols), z(cols);
  double ss = 0.0;
  for (int64_t i = 0; i < cols; ++i) {
    xs[i] = c.residual ? x[i] + r[i] : x[i];
    ss += static_cast<double>(xs[i]) * xs[i];
    z[i] = xs[i] * w[i];
  }
  const double inv = 1.0 / std::sqrt(ss / static_cast<double>(cols) + 1e-5);
  std::vector<int8_t> q;
  std::vector<float> d;
  quantize_host(z, q, d);
  cuda_->copy_to_device(xq_.q, q.data(), cols);
  cuda_->copy_to_device(xq_.d, d.data(), d.size() * sizeof(float));
  ProductReference ref = dequantized_product(*cuda_, mats, cols, xq_);
  for (double& v : ref.y) v *= inv;
  for (double& v : ref.mag) v *= inv;
  const std::string what = case_name({c, 0});
  expect_product(ref, got, what);

  // x is as it was; x + r went to x_out bit for bit (every slice of it), which is left alone
  // without r.
  EXPECT_EQ(x_after, x) << what << ": x changed";
  EXPECT_EQ(sum_after, c.residual ? xs : stale) << what << ": x_out";

  // The same inputs again: the same bits.
  kc::gemv_norm_group(p, norm, stream_);
  const std::vector<float> again = get(*cuda_, y_, p.total_rows);
  EXPECT_EQ(0, std::memcmp(got.data(), again.data(), got.size() * sizeof(float)))
      << what << ": not bitwise repeatable";

  // The unfused path: the rmsnorm kernel (with its 8-bit copy), then gemv_group.
  kc::rmsnorm({.x = x_, .w = w_, .y = h_, .rows = 1, .n = cols, .eps = 1e-5f, .quant = xq_,
               .r = c.residual ? r_ : nullptr, .x_out = c.residual ? x_ : nullptr},
              stream_);
  kc::GemvGroupParams u = kc::stacked_gemv_group(dms.data(), static_cast<int>(dms.size()), y2_, xq_);
  kc::gemv_group(u, stream_);
  const std::vector<float> unfused = get(*cuda_, y2_, p.total_rows);
  EXPECT_LT(nmse(got, unfused), 1e-5) << what << ": against rmsnorm + gemv_group";
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, NormGemv,
    ::testing::Values(
        // Llama-3-8B gate/up at TP1 and TP2 (Q4_K: three rows of two items per warp)
        NormCase{TensorType::kQ4_K, {14336, 14336}, 4096, true},
        NormCase{TensorType::kQ4_K, {14336, 14336}, 4096, false},
        NormCase{TensorType::kQ4_K, {7168, 7168}, 4096, true},
        // Q6_K (four rows of one item), odd group sizes, rows of 1, 2, 4 and 8 passes of the CTA
        NormCase{TensorType::kQ6_K, {5000, 4000, 7}, 1024, true},
        NormCase{TensorType::kQ4_K, {8192, 3}, 2048, true},
        NormCase{TensorType::kQ6_K, {9001}, 512, false},
        // Q4_K rows of more than 64 work items (four rows of one item per warp)
        NormCase{TensorType::kQ4_K, {8192}, 4608, true}),
    case_name);

TEST(NormGemvChecks, SupportsOnlyThePipelinedPicks) {
  auto group = [](TensorType t, std::vector<int64_t> rows, int64_t cols) {
    kc::GemvGroupParams p;
    p.n = static_cast<int>(rows.size());
    p.cols = cols;
    for (size_t i = 0; i < rows.size(); ++i) {
      p.outs[i] = {kc::device_matrix(t, rows[i], cols, nullptr), nullptr};
      p.total_rows += rows[i];
    }
    return p;
  };
  EXPECT_TRUE(kc::gemv_norm_group_supports(group(TensorType::kQ4_K, {14336, 14336}, 4096)));
  EXPECT_TRUE(kc::gemv_norm_group_supports(group(TensorType::kQ6_K, {9001}, 512)));
  EXPECT_TRUE(kc::gemv_norm_group_supports(group(TensorType::kQ4_K, {14336, 14336}, 8192)));
  // Groups of fewer rows than the norm serves (q/k/v), whose pick is another geometry (small
  // groups); a type without the pipelined geometries; widths off the CTA's passes.
  EXPECT_FALSE(kc::gemv_norm_group_supports(group(TensorType::kQ4_K, {4096, 1024, 1024}, 4096)));
  EXPECT_FALSE(kc::gemv_norm_group_supports(group(TensorType::kQ4_K, {576, 192, 192}, 512)));
  EXPECT_FALSE(kc::gemv_norm_group_supports(group(TensorType::kQ8_0, {14336, 14336}, 4096)));
  EXPECT_FALSE(kc::gemv_norm_group_supports(group(TensorType::kQ4_K, {14336, 14336}, 4352)));
  EXPECT_FALSE(kc::gemv_norm_group_supports(group(TensorType::kQ4_K, {8192}, 32768)));
  EXPECT_THROW(kc::gemv_norm_group(group(TensorType::kQ8_0, {4096}, 4096), {}, nullptr), Error);
}

// The backend with the option: norm_matmul_shared on the GPU against the CPU backend's norm and
// matmuls (which run unfused), x + r equal; in place (x_out = x) it falls back to the unfused
// kernels, with the same results.
class NormGemvBackend : public CudaVsCpuFusedNorm {};

TEST_F(NormGemvBackend, MatchesCpuNormMatmulShared) {
  constexpr int64_t kCols = 4096;
  const std::vector<int64_t> rows = {8192, 1024};  // a group that takes the fused kernel
  std::vector<Weight> gw, cw;
  for (size_t i = 0; i < rows.size(); ++i) {
    const std::vector<uint8_t> g = random_gguf_rows(TensorType::kQ4_K, rows[i], kCols, 70 + static_cast<uint32_t>(i));
    const HostMatrix hm{TensorType::kQ4_K, g.data(), rows[i], kCols, g.size() / rows[i]};
    gw.push_back(cuda_->upload_weight(hm));
    cw.push_back(cpu_->upload_weight(hm));
  }
  const Pair x = put(cuda_random_floats(kCols, 5, 3.0f));
  const Pair r = put(cuda_random_floats(kCols, 6, 2.0f));
  std::vector<float> wh = cuda_random_floats(kCols, 7);
  for (float& v : wh) v = 1.0f + 0.5f * v;
  const Pair w = put(wh);
  const Pair h = zeros(kCols);
  const Pair sum = zeros(kCols);
  std::vector<Pair> ys;
  std::vector<Backend::MatmulOut> go, co;
  for (size_t i = 0; i < rows.size(); ++i) {
    ys.push_back(zeros(rows[i]));
    go.push_back({&gw[i], ys.back().gpu});
    co.push_back({&cw[i], ys.back().cpu});
  }
  for (bool in_place : {false, true}) {
    const Pair& out = in_place ? x : sum;
    cuda_->norm_matmul_shared(
        {.x = x.gpu, .r = r.gpu, .x_out = out.gpu, .w = w.gpu, .y = h.gpu, .n = kCols, .eps = 1e-5f},
        go, 1);
    cpu_->norm_matmul_shared(
        {.x = x.cpu, .r = r.cpu, .x_out = out.cpu, .w = w.cpu, .y = h.cpu, .n = kCols, .eps = 1e-5f},
        co, 1);
    EXPECT_EQ(gpu(out, kCols), cpu(out, kCols)) << "x + r, in place " << in_place;
    for (size_t i = 0; i < rows.size(); ++i) {
      EXPECT_LT(nmse(gpu(ys[i], rows[i]), cpu(ys[i], rows[i])), 1e-4)
          << "output " << i << ", in place " << in_place;
    }
  }
}

}  // namespace
}  // namespace tpnode::test
