// CUDA matmul (whichever kernel CudaBackend::matmul picks for the batch: GEMVs, int8 MMAs,
// gemm_kq, gemm_dq, cuBLASLt) against the CPU backend, for every weight type, odd row counts
// and batch sizes on both sides of each kernel's limit.
#include <fmt/format.h>

#include "tests/cuda/cuda_test_support.h"

namespace tpnode::test {
namespace {

struct MatmulCase {
  TensorType type;
  int64_t rows;
  int64_t cols;
  double tol;  // NMSE against the CPU backend
};

std::string case_name(const ::testing::TestParamInfo<MatmulCase>& i) {
  static const char* names[] = {"F32", "F16", "Q4_0", "Q4_1", "", "", "Q5_0", "Q5_1", "Q8_0"};
  switch (i.param.type) {
    case TensorType::kQ4_K: return "Q4_K";
    case TensorType::kQ5_K: return "Q5_K";
    case TensorType::kQ6_K: return "Q6_K";
    case TensorType::kBF16: return "BF16";
    default: return names[static_cast<int>(i.param.type)];
  }
}

class CudaMatmul : public CudaVsCpu, public ::testing::WithParamInterface<MatmulCase> {
 protected:
  void check(Backend& cuda, int64_t m, uint32_t seed) {
    const MatmulCase& c = GetParam();
    const auto rows = random_gguf_rows(c.type, c.rows, c.cols, seed);
    HostMatrix hm{c.type, rows.data(), c.rows, c.cols, rows.size() / c.rows};
    const Weight wg = cuda.upload_weight(hm);
    const Weight wc = cpu_->upload_weight(hm);
    const auto xh = cuda_random_floats(m * c.cols, seed + 1);
    const size_t xb = xh.size() * sizeof(float), yb = m * c.rows * sizeof(float);
    auto* xg = static_cast<float*>(cuda.alloc(xb));
    auto* yg = static_cast<float*>(cuda.alloc(yb));
    auto* xc = static_cast<float*>(cpu_->alloc(xb));
    auto* yc = static_cast<float*>(cpu_->alloc(yb));
    cuda.copy_to_device(xg, xh.data(), xb);
    cpu_->copy_to_device(xc, xh.data(), xb);
    const std::vector<float> poison(m * c.rows, NAN);
    cuda.copy_to_device(yg, poison.data(), yb);
    cuda.matmul(wg, xg, yg, m);
    cpu_->matmul(wc, xc, yc, m);
    const auto got = get(cuda, yg, m * c.rows);
    const auto ref = get(*cpu_, yc, m * c.rows);
    const double e = nmse(got, ref);
    EXPECT_LT(e, c.tol) << fmt::format("m={} rows={} cols={}", m, c.rows, c.cols);
    // Determinism: the same product again is bitwise equal.
    cuda.matmul(wg, xg, yg, m);
    const auto again = get(cuda, yg, m * c.rows);
    EXPECT_EQ(0, std::memcmp(got.data(), again.data(), yb)) << "m=" << m;
  }
};

TEST_P(CudaMatmul, MatchesCpuAcrossBatchSizes) {
  for (int64_t m : {1, 2, 3, 5, 8, 16, 17, 40}) check(*cuda_, m, 100 + static_cast<uint32_t>(m));
}

// Without BF16 weight copies, batches up to 128 of quantized weights whose width is a multiple
// of 256 run the dequantizing GEMM (gemm_dq; Q4_K batches 9-64 gemm_kq, as with copies); other
// shapes dequantize into a staging buffer.
TEST_P(CudaMatmul, GemmWithoutBf16Copy) {
  CudaBackendOptions o = cuda_options();
  o.bf16_copy_fraction = 0.0;
  auto cuda = make_cuda_backend(o);
  for (int64_t m : {17, 64, 128, 200}) check(*cuda, m, 200 + static_cast<uint32_t>(m));
}

// K-quant batches on int8 tensor cores with activations in 256-value groups (gemv_mma's block
// accumulation) up to the largest limit, 64, and past it; the CPU result as every path.
// (Default options take it for batches 2-8 in the tests above.)
TEST_P(CudaMatmul, KQuantBlockMma) {
  CudaBackendOptions o = cuda_options();
  o.kquant_mma_max_batch = 64;
  auto cuda = make_cuda_backend(o);
  for (int64_t m : {2, 9, 16, 33, 64, 65}) check(*cuda, m, 400 + static_cast<uint32_t>(m));
}

// cuBLASLt with the fastest of several algorithms per shape (timed on first use) gives the
// CPU result too, and the same bits on the second call (the plan is cached).
TEST_P(CudaMatmul, GemmAutotune) {
  CudaBackendOptions o = cuda_options();
  o.gemm_autotune_max_rows = 256;
  o.dq_gemm_max_batch = 0;  // every batch above the GEMV limit on cuBLASLt
  o.dq_gemm_over_copies_max_batch = 0;
  auto cuda = make_cuda_backend(o);
  for (int64_t m : {17, 64, 200}) check(*cuda, m, 300 + static_cast<uint32_t>(m));
}

INSTANTIATE_TEST_SUITE_P(
    Types, CudaMatmul,
    ::testing::Values(MatmulCase{TensorType::kF32, 131, 776, 1e-5},
                      MatmulCase{TensorType::kF16, 131, 776, 1e-5},
                      MatmulCase{TensorType::kBF16, 131, 776, 1e-5},
                      MatmulCase{TensorType::kQ4_0, 131, 800, 1e-3},
                      MatmulCase{TensorType::kQ4_1, 131, 800, 1e-3},
                      MatmulCase{TensorType::kQ5_0, 131, 800, 1e-3},
                      MatmulCase{TensorType::kQ5_1, 131, 800, 1e-3},
                      MatmulCase{TensorType::kQ8_0, 131, 800, 1e-3},
                      MatmulCase{TensorType::kQ4_K, 131, 768, 1e-3},
                      MatmulCase{TensorType::kQ5_K, 131, 768, 1e-3},
                      MatmulCase{TensorType::kQ6_K, 131, 768, 1e-3}),
    case_name);

}  // namespace
}  // namespace tpnode::test
