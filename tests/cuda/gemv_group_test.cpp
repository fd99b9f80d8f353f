// The batch-1 quantized GEMV (gemv_group) in every geometry compiled for each type, against
// the double-precision product of the host-dequantized weights with the GPU's own 8-bit
// activations: shapes with partial warp steps, matrix boundaries inside a warp's rows, and
// the Llama-3-8B decode shapes. Each geometry is also bitwise repeatable.
#include <cuda_runtime.h>
#include <fmt/format.h>

#include <cstring>
#include <string>
#include <vector>

#include "kernels/cuda/gemv.h"
#include "tests/cuda/cuda_test_support.h"
#include "tests/cuda/gemv_reference.h"

namespace tpnode::test {
namespace {

namespace kc = ::tpnode::cuda;

constexpr int64_t kMaxCols = 14336;
constexpr int64_t kMaxRows = 2 * 14336;

class GemvGroup : public CudaVsCpu, public ::testing::WithParamInterface<TensorType> {
 protected:
  void SetUp() override {
    CudaVsCpu::SetUp();
    if (IsSkipped()) return;
    stream_ = static_cast<cudaStream_t>(cuda_backend_stream(*cuda_));
    xq_.q = static_cast<int8_t*>(cuda_->alloc(kMaxCols));
    xq_.d = static_cast<float*>(cuda_->alloc(kMaxCols / 32 * sizeof(float)));
    xq_.s = static_cast<float*>(cuda_->alloc(kMaxCols / 32 * sizeof(float)));
    x_ = static_cast<float*>(cuda_->alloc(kMaxCols * sizeof(float)));
    y_ = static_cast<float*>(cuda_->alloc(kMaxRows * sizeof(float)));
  }

  // Every geometry on the group of matrices with `rows` rows and `cols` columns.
  void check(const std::vector<int64_t>& rows, int64_t cols, uint32_t seed) {
    const TensorType type = GetParam();
    std::vector<QuantMatrix> mats;
    std::vector<kc::DeviceMatrix> dms;
    for (size_t i = 0; i < rows.size(); ++i) {
      mats.push_back(make_quant_matrix(*cuda_, type, rows[i], cols, seed + 7 * static_cast<uint32_t>(i)));
      const Weight& w = mats.back().gpu;
      dms.push_back(kc::device_matrix(w.type, w.rows, w.cols, w.data));
    }
    const auto xh = cuda_random_floats(cols, seed + 100);
    cuda_->copy_to_device(x_, xh.data(), cols * sizeof(float));
    kc::quantize_acts({.x = x_, .m = 1, .k = cols, .out = xq_}, stream_);
    const kc::GemvGroupParams p = kc::stacked_gemv_group(dms.data(), static_cast<int>(dms.size()), y_, xq_);
    const ProductReference ref = dequantized_product(*cuda_, mats, cols, xq_);
    const std::vector<kc::GemvGeometry> geometries = kc::gemv_group_geometries(type);
    ASSERT_GE(geometries.size(), 3u);
    for (const kc::GemvGeometry& g : geometries) {
      std::string what = fmt::format("{} {} cols={} rows=", kc::weight_type_label(type), kc::gemv_geometry_label(g), cols);
      for (int64_t r : rows) what += fmt::format("{} ", r);
      const auto got = run(p, g);
      expect_product(ref, got, what);
      const auto again = run(p, g);
      EXPECT_EQ(0, std::memcmp(got.data(), again.data(), got.size() * sizeof(float)))
          << what << ": not bitwise repeatable";
    }
  }

  std::vector<float> run(const kc::GemvGroupParams& p, const kc::GemvGeometry& g) {
    const std::vector<float> poison(p.total_rows, NAN);
    cuda_->copy_to_device(y_, poison.data(), poison.size() * sizeof(float));
    kc::gemv_group(p, g, stream_);
    return get(*cuda_, y_, p.total_rows);
  }

  cudaStream_t stream_ = nullptr;
  kc::QuantActs xq_;
  float* x_ = nullptr;
  float* y_ = nullptr;
};

TEST_P(GemvGroup, SmallShapes) {
  const bool k_quant = gguf_block_size(GetParam()) == 256;
  check({1}, 256, 10);
  check({7}, 512, 20);
  check({41}, 4096, 30);
  // Rows narrower than a warp step and not a multiple of it: partial last steps.
  check({33}, k_quant ? 2304 : 2080, 40);
  check({5, 1, 3}, 512, 50);  // matrix boundaries inside one warp's rows
}

TEST_P(GemvGroup, LlamaShapes) {
  check({4096, 1024, 1024}, 4096, 60);  // q, k, v
  check({14336, 14336}, 4096, 70);      // gate, up
  check({4096}, 14336, 80);             // ffn_down
}

TEST(GemvGroupGeometry, UnknownGeometryIsAnError) {
  if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device (cudaGetDeviceCount gave 0)";
  kc::GemvGroupParams p;
  p.n = 1;
  p.cols = 256;
  p.total_rows = 1;
  p.outs[0].w = kc::device_matrix(TensorType::kQ4_0, 1, 256, nullptr);
  EXPECT_THROW(kc::gemv_group(p, kc::GemvGeometry{3, 1, 2, 0}, nullptr), std::exception);
}

INSTANTIATE_TEST_SUITE_P(Types, GemvGroup, ::testing::ValuesIn(kQuantizedTypes), quant_type_label);

}  // namespace
}  // namespace tpnode::test
