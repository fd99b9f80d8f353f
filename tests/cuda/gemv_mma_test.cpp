// gemv_mma (int8 tensor cores, m = 2..64) for every quantized type against two references:
// the CPU backend's quantized matmul (NMSE, as tests/cuda/matmul_test.cpp), and element by
// element a double-precision product of the dequantized weights with the very 8-bit
// activations the GPU made, so that a wrong scale, row or column shows however small its share.
#include <cuda_runtime.h>
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>

#include "kernels/cuda/gemv.h"
#include "kernels/cuda/gemv_mma.h"
#include "kernels/cuda/quant_layout.h"
#include "node/model/tensor_type.h"
#include "tests/cuda/cuda_test_support.h"

namespace tpnode::test {
namespace {

namespace kc = ::tpnode::cuda;

constexpr int64_t kMaxM = kc::kGemvMmaMaxBatch;
constexpr int64_t kMaxRows = 4096;
// Not a multiple of the staged activation tiles nor of the k splits: partial tiles and
// uneven splits run.
int64_t test_cols(TensorType t) { return gguf_block_size(t) == 256 ? 4352 : 4384; }

class GemvMma : public CudaVsCpu, public ::testing::WithParamInterface<TensorType> {
 protected:
  struct Matrix {
    int64_t rows = 0, cols = 0;
    std::vector<float> deq;  // [rows][cols], dequantized on the host
    Weight gpu, cpu;
  };

  void SetUp() override {
    CudaVsCpu::SetUp();
    if (IsSkipped()) return;
    stream_ = static_cast<cudaStream_t>(cuda_backend_stream(*cuda_));
    const int64_t n = kMaxM * 4384;
    xq_.q = static_cast<int8_t*>(cuda_->alloc(n));
    xq_.d = static_cast<float*>(cuda_->alloc(n / 32 * sizeof(float)));
    xq_.s = static_cast<float*>(cuda_->alloc(n / 32 * sizeof(float)));
    x_ = put(std::vector<float>(n, 0.0f));
    y_ = zeros(kMaxM * kMaxRows);
  }

  Matrix make_matrix(int64_t rows, uint32_t seed, int64_t cols = 0) {
    const TensorType type = GetParam();
    Matrix mat;
    mat.rows = rows;
    mat.cols = cols > 0 ? cols : test_cols(type);
    const auto gguf = random_gguf_rows(type, rows, mat.cols, seed);
    const size_t stride = gguf.size() / rows;
    mat.deq.resize(rows * mat.cols);
    for (int64_t r = 0; r < rows; ++r) {
      dequantize_row(type, gguf.data() + r * stride, mat.deq.data() + r * mat.cols, mat.cols);
    }
    const HostMatrix hm{type, gguf.data(), rows, mat.cols, stride};
    mat.gpu = cuda_->upload_weight(hm);
    mat.cpu = cpu_->upload_weight(hm);
    return mat;
  }

  // y = x · Wᵀ on the GPU (quantize_acts, then gemv_mma with `plan`, or the default plan).
  // With group 256 the activations share a scale per 256 values (K-quants then add each
  // block's chunks in integers).
  std::vector<float> run(const Matrix& mat, int64_t m, const kc::GemvMmaPlan* plan) {
    const std::vector<float> poison(m * mat.rows, NAN);
    cuda_->copy_to_device(y_.gpu, poison.data(), poison.size() * sizeof(float));
    kc::quantize_acts({.x = x_.gpu, .m = m, .k = mat.cols, .out = xq_}, stream_);
    const kc::GemvParams p{.w = kc::device_matrix(mat.gpu.type, mat.rows, mat.cols, mat.gpu.data),
                           .x = x_.gpu, .xq = xq_, .y = y_.gpu, .m = m};
    if (plan != nullptr) {
      kc::gemv_mma(p, *plan, stream_);
    } else {
      kc::gemv_mma(p, stream_);
    }
    return get(*cuda_, y_.gpu, m * mat.rows);
  }

  void check(const Matrix& mat, int64_t m, uint32_t seed, const kc::GemvMmaPlan* plan) {
    const std::string what =
        fmt::format("m={} rows={} cols={}{}", m, mat.rows, mat.cols,
                    plan ? fmt::format(" plan={}x{}", plan->row_tiles_per_warp, plan->k_splits)
                         : std::string());
    const auto xh = cuda_random_floats(m * mat.cols, seed);
    const size_t xb = xh.size() * sizeof(float);
    cuda_->copy_to_device(x_.gpu, xh.data(), xb);
    cpu_->copy_to_device(x_.cpu, xh.data(), xb);
    const auto got = run(mat, m, plan);

    // The CPU backend's quantized matmul.
    cpu_->matmul(mat.cpu, x_.cpu, y_.cpu, m);
    EXPECT_LT(nmse(got, get(*cpu_, y_.cpu, m * mat.rows)), 1e-3) << what;

    // The same 8-bit activations, in double, element by element.
    const int64_t k = mat.cols, kc_n = k / 32;
    std::vector<int8_t> q(m * k);
    std::vector<float> d(m * kc_n);
    cuda_->copy_to_host(q.data(), xq_.q, q.size());
    cuda_->copy_to_host(d.data(), xq_.d, d.size() * sizeof(float));
    if (xq_.group == 256) check_groups256(xh, q, d, m, k);
    int bad = 0;
    for (int64_t r = 0; r < mat.rows; ++r) {
      // Large matrices: every 7th row (all 16-row tiles, both fragment halves) and the last.
      if (mat.rows > 1024 && r % 7 != 0 && r < mat.rows - 16) continue;
      const float* w = mat.deq.data() + r * k;
      for (int64_t j = 0; j < m; ++j) {
        double ref = 0.0, mag = 0.0;
        for (int64_t c = 0; c < kc_n; ++c) {
          double s = 0.0, a = 0.0;
          for (int64_t i = 32 * c; i < 32 * c + 32; ++i) {
            const double v = static_cast<double>(w[i]) * q[j * k + i];
            s += v;
            a += std::fabs(v);
          }
          ref += s * d[j * kc_n + c];
          mag += a * std::fabs(d[j * kc_n + c]);
        }
        const double err = std::fabs(got[j * mat.rows + r] - ref);
        if (!(err <= 1e-4 * mag + 1e-12) && bad++ < 5) {
          ADD_FAILURE() << what << fmt::format(": y[{}][{}] = {} want {} (|w||x| = {})", j, r,
                                               got[j * mat.rows + r], ref, mag);
        }
      }
    }
    EXPECT_EQ(bad, 0) << what;

    // Bitwise repeatable.
    const auto again = run(mat, m, plan);
    EXPECT_EQ(0, std::memcmp(got.data(), again.data(), got.size() * sizeof(float))) << what;
  }

  // quantize_acts in groups of 256: every chunk of a group has the group's d = amax / 127,
  // and q = round(x / d) (to within one step: the host divides in its own rounding).
  static void check_groups256(const std::vector<float>& x, const std::vector<int8_t>& q,
                              const std::vector<float>& d, int64_t m, int64_t k) {
    int bad = 0;
    for (int64_t g = 0; g < m * k / 256; ++g) {
      float amax = 0.0f;
      for (int64_t i = 256 * g; i < 256 * g + 256; ++i) amax = std::max(amax, std::fabs(x[i]));
      for (int64_t c = 8 * g; c < 8 * g + 8; ++c) {
        if (d[c] != amax / 127.0f && bad++ < 5) {
          ADD_FAILURE() << fmt::format("group {} chunk {}: d = {} want {}", g, c, d[c], amax / 127.0f);
        }
      }
      for (int64_t i = 256 * g; i < 256 * g + 256; ++i) {
        const double want = amax > 0.0f ? x[i] / (amax / 127.0) : 0.0;
        if (!(std::fabs(q[i] - want) <= 0.5 + 1e-3) && bad++ < 5) {
          ADD_FAILURE() << fmt::format("q[{}] = {} want {}", i, q[i], want);
        }
      }
    }
    EXPECT_EQ(bad, 0);
  }

  cudaStream_t stream_ = nullptr;
  kc::QuantActs xq_;
  Pair x_{}, y_{};
};

TEST_P(GemvMma, MatchesReferencesWithDefaultPlan) {
  uint32_t seed = 1000;
  for (int64_t rows : {16, 40, 1024, 4096}) {
    const Matrix mat = make_matrix(rows, seed++);
    for (int64_t m : {2, 7, 8, 9, 17, 32, 33, 64}) check(mat, m, seed++, nullptr);
  }
}

// The narrow matrices of small models (tiny fixtures: 64 and 96 columns), every plan the
// default picks for them.
TEST_P(GemvMma, NarrowMatrices) {
  const bool k_quant = gguf_block_size(GetParam()) == 256;
  uint32_t seed = 3000;
  for (int64_t cols : k_quant ? std::vector<int64_t>{256, 512} : std::vector<int64_t>{64, 96}) {
    for (int64_t rows : {16, 40, 272}) {
      const Matrix mat = make_matrix(rows, seed++, cols);
      for (int64_t m : {2, 3, 5}) check(mat, m, seed++, nullptr);
    }
  }
}

// Every work split (row tiles per warp, k split over a cluster) gives the right answer.
TEST_P(GemvMma, EveryPlan) {
  int major = 0, dev = 0;
  ASSERT_EQ(cudaGetDevice(&dev), cudaSuccess);
  ASSERT_EQ(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev), cudaSuccess);
  uint32_t seed = 2000;
  for (int64_t rows : {40, 1024}) {
    const Matrix mat = make_matrix(rows, seed++);
    for (int rt : {1, 2}) {
      for (int splits : {1, 2, 4, 8}) {
        if (splits > 1 && major < 9) {
          std::printf("k splits skipped: compute capability %d has no clusters\n", major);
          continue;
        }
        const kc::GemvMmaPlan plan{.row_tiles_per_warp = rt, .k_splits = splits};
        for (int64_t m : {3, 16, 40, 64}) check(mat, m, seed++, &plan);
      }
    }
  }
}

// Activations in 256-value groups: K-quants add each block's chunk products in integers
// (gemv_mma_block_accumulates), other types read the group's scale per chunk as before.
TEST_P(GemvMma, Groups256) {
  const bool k_quant = gguf_block_size(GetParam()) == 256;
  if (!k_quant) GTEST_SKIP() << "groups of 256 need rows of whole 256-value blocks";
  xq_.group = 256;
  uint32_t seed = 4000;
  for (int64_t rows : {40, 1024, 4096}) {
    const Matrix mat = make_matrix(rows, seed++);
    for (int64_t m : {2, 9, 17, 33, 64}) check(mat, m, seed++, nullptr);
  }
  const Matrix narrow = make_matrix(272, seed++, 512);
  for (int64_t m : {3, 40}) check(narrow, m, seed++, nullptr);
  int major = 0, dev = 0;
  ASSERT_EQ(cudaGetDevice(&dev), cudaSuccess);
  ASSERT_EQ(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev), cudaSuccess);
  const Matrix mat = make_matrix(1024, seed++);
  for (int rt : {1, 2}) {
    for (int splits : {1, 2, 4, 8}) {
      if (splits > 1 && major < 9) continue;
      const kc::GemvMmaPlan plan{.row_tiles_per_warp = rt, .k_splits = splits};
      for (int64_t m : {5, 24, 64}) check(mat, m, seed++, &plan);
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Types, GemvMma, ::testing::ValuesIn(kQuantizedTypes),
                         quant_type_label);

}  // namespace
}  // namespace tpnode::test
