// gemm_dq (weights dequantized to BF16 inside a tensor-core GEMM) for every supported type
// against a host reference: the weights dequantized by the CPU library (kernels/cpu), the
// products summed in double with the very BF16 activations the GPU reads. x reaches the kernel
// through gemm_dq_acts (F32 -> BF16 in the kernel's layout), which has its own test below.
//
// Tolerance: the kernel rounds each weight to BF16 (8 significant bits, relative error at most
// 2^-8, as a BF16 copy of the weights does); for every type but Q8_0 it also rounds each
// sub-block's scale and its offset from the sub-block's middle value to BF16 first (its packed
// decode). For random signs that gives an NMSE of ~3e-6 with the one rounding and ~6e-6 with
// the packed decode (NumPy, with this file's Q4_1, Q5_1, Q4_K and Q5_K blocks; rounding the
// offset from the minimum instead gave ~2e-5 for Q4_1 and Q5_1, which the bound rejects), so
// the NMSE bound is 1.5e-5 where at least 4096 outputs are checked and 4e-5 for the small
// cases, whose NMSE is a ratio of few squares; a wrong scale or row lands at 1e-3 or more.
// Element by element, |error| <= (2^-8 + k 2^-22) * sum |w x| (weight rounding plus FP32
// accumulation) so that a wrong row, column or scale shows wherever it lands.
#include "kernels/cuda/gemm_dq.h"

#include <cuda_runtime.h>
#include <fmt/format.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "kernels/cpu/dequantize.h"
#include "kernels/cuda/quant_layout.h"
#include "node/model/tensor_type.h"
#include "tests/cuda/cuda_test_support.h"

namespace tpnode::test {
namespace {

namespace kc = ::tpnode::cuda;

#define DQ_CUDA_OK(call) ASSERT_EQ((call), cudaSuccess) << #call

using DeviceBuffer = DeviceBytes;

uint16_t bf16_bits(float f) {  // round to nearest even (finite inputs)
  uint32_t b;
  std::memcpy(&b, &f, 4);
  b += 0x7FFFu + ((b >> 16) & 1u);
  return static_cast<uint16_t>(b >> 16);
}
float bf16_value(uint16_t h) {
  const uint32_t b = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &b, 4);
  return f;
}

class GemmDqTest : public ::testing::Test {
 protected:
  struct Matrix {
    TensorType type = TensorType::kQ4_K;
    int64_t rows = 0, cols = 0;
    std::vector<float> deq;  // [rows][cols]
    DeviceBuffer data;       // split layout
    kc::DeviceMatrix dm;
  };

  void SetUp() override {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess || n == 0) {
      GTEST_SKIP() << "no CUDA device (cudaGetDeviceCount gave " << n << ")";
    }
    DQ_CUDA_OK(cudaStreamCreate(&stream_));
    kc::gemm_dq_init();
    const kc::GemmDqWorkspaceSize wsz = kc::gemm_dq_workspace_size();
    partials_ = DeviceBuffer(wsz.partial_floats * sizeof(float));
    counters_ = DeviceBuffer(wsz.n_counters * sizeof(unsigned));
    ASSERT_NE(partials_.as<float>(), nullptr);
    ASSERT_NE(counters_.as<unsigned>(), nullptr);
    DQ_CUDA_OK(cudaMemset(counters_.as<unsigned>(), 0, wsz.n_counters * sizeof(unsigned)));
    ws_ = {.partials = partials_.as<float>(),
           .partial_floats = wsz.partial_floats,
           .counters = counters_.as<unsigned>(),
           .n_counters = wsz.n_counters};
  }
  void TearDown() override {
    if (!worst_case_.empty()) {
      std::printf("gemm_dq: largest NMSE %.3g (%s)\n", worst_nmse_, worst_case_.c_str());
    }
    if (stream_ != nullptr) cudaStreamDestroy(stream_);
  }

  Matrix make_matrix(TensorType type, int64_t rows, int64_t cols, uint32_t seed) {
    Matrix mat;
    mat.type = type;
    mat.rows = rows;
    mat.cols = cols;
    const auto gguf = random_gguf_rows(type, rows, cols, seed);
    const size_t stride = gguf.size() / rows;
    mat.deq.resize(rows * cols);
    for (int64_t r = 0; r < rows; ++r) {
      cpu::dequantize_row(type, gguf.data() + r * stride, mat.deq.data() + r * cols, cols);
    }
    std::vector<uint8_t> split(kc::split_matrix_bytes(type, rows, cols));
    kc::repack_to_split(type, gguf.data(), stride, rows, cols, split.data());
    mat.data = DeviceBuffer(split.size());
    EXPECT_NE(mat.data.as<uint8_t>(), nullptr);
    EXPECT_EQ(
        cudaMemcpy(mat.data.as<uint8_t>(), split.data(), split.size(), cudaMemcpyHostToDevice),
        cudaSuccess);
    mat.dm = kc::device_matrix(type, rows, cols, mat.data.as<uint8_t>());
    return mat;
  }

  // x [m, k] as gemm_dq reads it, made on the device by gemm_dq_acts.
  DeviceBuffer chunk_order_acts(const std::vector<float>& xf, int64_t m, int64_t k) {
    DeviceBuffer xd(xf.size() * sizeof(float)), x(kc::gemm_dq_acts_elems(m, k) * 2);
    EXPECT_EQ(
        cudaMemcpy(xd.as<float>(), xf.data(), xf.size() * sizeof(float), cudaMemcpyHostToDevice),
        cudaSuccess);
    kc::gemm_dq_acts({.x = xd.as<float>(), .y = x.as<__nv_bfloat16>(), .m = m, .cols = k}, stream_);
    EXPECT_EQ(cudaStreamSynchronize(stream_), cudaSuccess);
    return x;
  }

  struct Run {
    int64_t m = 0;
    int64_t ldy = 0;                       // 0 = rows
    const kc::GemmDqPlan* plan = nullptr;  // null: the default plan
    bool workspace = true;
  };

  // y = x · Wᵀ on the GPU; y starts as NaN everywhere (ldy columns per row).
  std::vector<float> run(const Matrix& mat, const DeviceBuffer& x, const Run& r) {
    const int64_t ldy = r.ldy ? r.ldy : mat.rows;
    const size_t yn = static_cast<size_t>(r.m * ldy);
    DeviceBuffer y(yn * sizeof(float));
    const std::vector<float> poison(yn, NAN);
    EXPECT_EQ(cudaMemcpy(y.as<float>(), poison.data(), yn * sizeof(float), cudaMemcpyHostToDevice),
              cudaSuccess);
    kc::GemmDqParams p{.w = mat.dm,
                       .x = x.as<__nv_bfloat16>(),
                       .y = y.as<float>(),
                       .m = r.m,
                       .ldy = r.ldy,
                       .ws = r.workspace ? ws_ : kc::GemmDqWorkspace{}};
    if (r.plan != nullptr) {
      kc::gemm_dq(p, *r.plan, stream_);
    } else {
      kc::gemm_dq(p, stream_);
    }
    EXPECT_EQ(cudaStreamSynchronize(stream_), cudaSuccess);
    std::vector<float> out(yn);
    EXPECT_EQ(cudaMemcpy(out.data(), y.as<float>(), yn * sizeof(float), cudaMemcpyDeviceToHost),
              cudaSuccess);
    return out;
  }

  void check(const Matrix& mat, uint32_t seed, const Run& r) {
    const int64_t m = r.m, k = mat.cols, rows = mat.rows;
    const int64_t ldy = r.ldy ? r.ldy : rows;
    std::string what = fmt::format("{} rows={} cols={} m={} ldy={}",
                                   kc::weight_type_label(mat.type), rows, k, m, ldy);
    if (r.plan != nullptr) what += fmt::format(" splits={}", r.plan->k_splits);
    if (!r.workspace) what += " (no workspace)";

    const auto xf = cuda_random_floats(m * k, seed);
    std::vector<float> xr(xf.size());  // the BF16 values as floats
    for (size_t i = 0; i < xf.size(); ++i) xr[i] = bf16_value(bf16_bits(xf[i]));
    DeviceBuffer x = chunk_order_acts(xf, m, k);
    const auto got = run(mat, x, r);

    std::vector<float> g, ref;
    int bad = 0;
    for (int64_t row = 0; row < rows; ++row) {
      // Large matrices: every 7th row (all fragment rows and tiles) and the last 16.
      if (rows > 1024 && row % 7 != 0 && row < rows - 16) continue;
      const float* w = mat.deq.data() + row * k;
      for (int64_t t = 0; t < m; ++t) {
        const float* xt = xr.data() + t * k;
        double s = 0.0, mag = 0.0;
        for (int64_t i = 0; i < k; ++i) {
          const double v = static_cast<double>(w[i]) * xt[i];
          s += v;
          mag += std::fabs(v);
        }
        const float y = got[t * ldy + row];
        g.push_back(y);
        ref.push_back(static_cast<float>(s));
        const double tol = (std::ldexp(1.0, -8) + k * std::ldexp(1.0, -22)) * mag + 1e-30;
        if (!(std::fabs(y - s) <= tol) && bad++ < 5) {
          ADD_FAILURE() << what
                        << fmt::format(": y[{}][{}] = {} want {} (sum |w x| = {})", t, row, y, s,
                                       mag);
        }
      }
    }
    EXPECT_EQ(bad, 0) << what;
    const double e = nmse(g, ref);
    EXPECT_LT(e, g.size() >= 4096 ? 1.5e-5 : 4e-5) << what;
    if (e > worst_nmse_) {
      worst_nmse_ = e;
      worst_case_ = what;
    }

    // Columns past `rows` of a wider y are left alone.
    int touched = 0;
    for (int64_t t = 0; t < m; ++t) {
      for (int64_t c = rows; c < ldy; ++c) touched += !std::isnan(got[t * ldy + c]);
    }
    EXPECT_EQ(touched, 0) << what;

    // Bitwise repeatable.
    const auto again = run(mat, x, r);
    EXPECT_EQ(0, std::memcmp(got.data(), again.data(), got.size() * sizeof(float))) << what;
  }

  cudaStream_t stream_ = nullptr;
  double worst_nmse_ = 0.0;
  std::string worst_case_;
  DeviceBuffer partials_, counters_;
  kc::GemmDqWorkspace ws_;
};

class GemmDq : public GemmDqTest, public ::testing::WithParamInterface<TensorType> {};

// Row counts below, at and off the 128-row tile; every batch size class (one n-tile, 64
// tokens in one tile, two token tiles); one stage and sixteen.
TEST_P(GemmDq, MatchesReference) {
  uint32_t seed = 100;
  for (int64_t cols : {256, 4096}) {
    for (int64_t rows : {16, 40, 1024}) {
      const Matrix mat = make_matrix(GetParam(), rows, cols, seed++);
      for (int64_t m : {1, 16, 17, 33, 64, 128}) check(mat, seed++, {.m = m});
    }
  }
}

TEST_P(GemmDq, Square4096) {
  const Matrix mat = make_matrix(GetParam(), 4096, 4096, 200);
  for (int64_t m : {17, 64, 128}) check(mat, 201 + static_cast<uint32_t>(m), {.m = m});
}

// y with a row stride wider than the matrix (a slice of a fused output).
TEST_P(GemmDq, RowStride) {
  const Matrix mat = make_matrix(GetParam(), 40, 512, 300);
  for (int64_t m : {5, 33, 100}) check(mat, 301 + static_cast<uint32_t>(m), {.m = m, .ldy = 64});
}

// Every k split gives the reference (and its own bitwise repeatable result); so does the
// plan without a workspace.
TEST_P(GemmDq, EverySplit) {
  const Matrix mat = make_matrix(GetParam(), 200, 2048, 400);
  uint32_t seed = 401;
  for (int splits = 1; splits <= kc::kGemmDqMaxSplits; ++splits) {
    const kc::GemmDqPlan plan{.k_splits = splits};
    for (int64_t m : {9, 64, 72}) check(mat, seed++, {.m = m, .plan = &plan});
  }
  check(mat, seed++, {.m = 64, .workspace = false});
}

INSTANTIATE_TEST_SUITE_P(Types, GemmDq, ::testing::ValuesIn(kQuantizedTypes), quant_type_label);

// The Llama-3-8B FFN shapes: gate/up (Q4_K 14336 x 4096) and down (Q6_K 4096 x 14336).
TEST_F(GemmDqTest, LlamaFfnShapes) {
  const Matrix up = make_matrix(TensorType::kQ4_K, 14336, 4096, 500);
  check(up, 501, {.m = 64});
  const Matrix down = make_matrix(TensorType::kQ6_K, 4096, 14336, 502);
  for (int64_t m : {64, 128}) check(down, 503 + static_cast<uint32_t>(m), {.m = m});
}

// The layout written out: [stage of 256][group of 8 tokens][piece][token][8 values], piece j
// of a stage holding values 2i, 2i+1, 2i+8, 2i+9, 2i+16, 2i+17, 2i+24, 2i+25 (i = j % 4) of
// chunk j / 4, each rounded to BF16 (nearest even); tokens past m are zero.
TEST_F(GemmDqTest, ActsLayout) {
  constexpr int kOrder[32] = {0, 1, 8,  9,  16, 17, 24, 25, 2, 3, 10, 11, 18, 19, 26, 27,
                              4, 5, 12, 13, 20, 21, 28, 29, 6, 7, 14, 15, 22, 23, 30, 31};
  for (int pos = 0; pos < 32; ++pos) EXPECT_EQ(kc::gemm_dq_chunk_source(pos), kOrder[pos]);
  const int64_t m = 11, k = 512, groups = 2;
  ASSERT_EQ(kc::gemm_dq_acts_elems(m, k), groups * 8 * k);
  std::vector<float> xf(m * k);
  for (size_t i = 0; i < xf.size(); ++i) xf[i] = 1.0f + static_cast<float>(i % 997) / 1024.0f;
  xf[5] = 1.0f + 3.0f / 256.0f;  // halfway between 1 + 1/128 and 1 + 2/128: rounds to even
  const DeviceBuffer x = chunk_order_acts(xf, m, k);
  std::vector<uint16_t> got(kc::gemm_dq_acts_elems(m, k));
  ASSERT_EQ(cudaMemcpy(got.data(), x.as<uint16_t>(), got.size() * 2, cudaMemcpyDeviceToHost),
            cudaSuccess);
  int bad = 0;
  for (size_t o = 0; o < got.size(); ++o) {
    const int64_t i = o % 8, tok8 = o / 8 % 8, piece = o / 64 % 32, grp = o / 2048 % groups,
                  stage = o / 2048 / groups;
    const int64_t tok = grp * 8 + tok8;
    const int64_t col = stage * 256 + piece / 4 * 32 + kOrder[piece % 4 * 8 + i];
    const uint16_t want = tok < m ? bf16_bits(xf[tok * k + col]) : 0;
    if (got[o] != want && bad++ < 5)
      ADD_FAILURE() << "element " << o << ": " << got[o] << " want " << want;
  }
  EXPECT_EQ(bad, 0);
  // x[0][5] sits at position 17 of chunk 0: piece 2, value 1 of token 0.
  EXPECT_EQ(got[2 * 64 + 1], 0x3F82u) << "x[0][5] = 1 + 3/256 rounds to 1 + 2/128";
  const kc::GemmDqActsParams odd{.x = nullptr, .y = nullptr, .m = 1, .cols = 96};
  EXPECT_THROW(kc::gemm_dq_acts(odd, stream_), Error);
}

TEST_F(GemmDqTest, RejectsWhatItCannotRun) {
  const Matrix mat = make_matrix(TensorType::kQ4_0, 16, 96, 600);  // 96 % 256 != 0
  EXPECT_FALSE(kc::gemm_dq_supports(mat.dm));
  DeviceBuffer x(16 * 96 * 2), y(16 * 16 * 4);
  const kc::GemmDqParams p{
      .w = mat.dm, .x = x.as<__nv_bfloat16>(), .y = y.as<float>(), .m = 4, .ldy = 0, .ws = {}};
  EXPECT_THROW(kc::gemm_dq(p, stream_), Error);
  const Matrix ok = make_matrix(TensorType::kQ4_K, 16, 256, 601);
  EXPECT_TRUE(kc::gemm_dq_supports(ok.dm));
  const kc::GemmDqParams big{.w = ok.dm,
                             .x = x.as<__nv_bfloat16>(),
                             .y = y.as<float>(),
                             .m = kc::kGemmDqMaxBatch + 1,
                             .ldy = 0,
                             .ws = {}};
  EXPECT_THROW(kc::gemm_dq(big, stream_), Error);
}

}  // namespace
}  // namespace tpnode::test
