// gemv_stream (batch-1 quantized GEMV streaming weights through shared memory) for every
// supported type against two references: gemv_group's output (relative L2 error), and a
// double-precision product of the host-dequantized weights with the very 8-bit activations
// the GPU made (NMSE, and element by element so that one wrong row shows). Also: bitwise
// repeatability and CUDA graph capture. Timings live in `tpnode bench-gemv`.
#include <cuda_runtime.h>
#include <fmt/format.h>

#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "kernels/cuda/gemv.h"
#include "kernels/cuda/gemv_stream.h"
#include "kernels/cuda/quant_layout.h"
#include "node/model/tensor_type.h"
#include "tests/cuda/cuda_test_support.h"
#include "tests/cuda/gemv_reference.h"

namespace tpnode::test {
namespace {

namespace kc = ::tpnode::cuda;

constexpr int64_t kMaxCols = 14336;
constexpr int64_t kMaxRows = 2 * 14336;

// ||a - ref|| / ||ref||; NaN anywhere gives +inf.
double rel_l2(const std::vector<float>& a, const std::vector<float>& ref) {
  const double e = nmse(a, ref);
  return std::isfinite(e) ? std::sqrt(e) : INFINITY;
}

bool stream_capable() {
  int dev = 0, major = 0;
  if (cudaGetDevice(&dev) != cudaSuccess) return false;
  if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) != cudaSuccess) return false;
  return major >= 9;
}

class GemvStreamBase : public CudaVsCpu {
 protected:
  void SetUp() override {
    CudaVsCpu::SetUp();
    if (IsSkipped()) return;
    if (!stream_capable()) GTEST_SKIP() << "gemv_stream needs compute capability 9.0 (TMA bulk copies)";
    kc::gemv_stream_init();
    stream_ = static_cast<cudaStream_t>(cuda_backend_stream(*cuda_));
    xq_.q = static_cast<int8_t*>(cuda_->alloc(kMaxCols));
    xq_.d = static_cast<float*>(cuda_->alloc(kMaxCols / 32 * sizeof(float)));
    xq_.s = static_cast<float*>(cuda_->alloc(kMaxCols / 32 * sizeof(float)));
    x_ = static_cast<float*>(cuda_->alloc(kMaxCols * sizeof(float)));
    y_stream_ = static_cast<float*>(cuda_->alloc(kMaxRows * sizeof(float)));
    y_group_ = static_cast<float*>(cuda_->alloc(kMaxRows * sizeof(float)));
  }

  // Random x quantized on the device (quantize_acts), as the backend does.
  void set_x(int64_t cols, uint32_t seed) {
    const auto xh = cuda_random_floats(cols, seed);
    cuda_->copy_to_device(x_, xh.data(), cols * sizeof(float));
    kc::quantize_acts({.x = x_, .m = 1, .k = cols, .out = xq_}, stream_);
  }

  // The group over `ws`, writing the outputs one after the other from `y`.
  kc::GemvGroupParams group(const std::vector<Weight>& ws, float* y) const {
    std::vector<kc::DeviceMatrix> mats;
    for (const Weight& w : ws) mats.push_back(kc::device_matrix(w.type, w.rows, w.cols, w.data));
    return kc::stacked_gemv_group(mats.data(), static_cast<int>(mats.size()), y, xq_);
  }

  std::vector<float> run_stream(const kc::GemvGroupParams& p) {
    const std::vector<float> poison(p.total_rows, NAN);
    cuda_->copy_to_device(y_stream_, poison.data(), poison.size() * sizeof(float));
    kc::gemv_stream(p, stream_);
    return get(*cuda_, y_stream_, p.total_rows);
  }
  std::vector<float> run_group(const kc::GemvGroupParams& p) {
    kc::gemv_group(p, stream_);
    return get(*cuda_, y_group_, p.total_rows);
  }

  cudaStream_t stream_ = nullptr;
  kc::QuantActs xq_;
  float* x_ = nullptr;
  float* y_stream_ = nullptr;
  float* y_group_ = nullptr;
};

class GemvStream : public GemvStreamBase, public ::testing::WithParamInterface<TensorType> {
 protected:
  QuantMatrix make_matrix(int64_t rows, int64_t cols, uint32_t seed) {
    return make_quant_matrix(*cuda_, GetParam(), rows, cols, seed);
  }

  // Checks y = x · Wᵀ for the group of matrices with `rows` rows and `cols` columns.
  void check(const std::vector<int64_t>& rows, int64_t cols, uint32_t seed) {
    const TensorType type = GetParam();
    std::string what = fmt::format("{} cols={} rows=", kc::weight_type_label(type), cols);
    for (int64_t r : rows) what += fmt::format("{} ", r);
    std::vector<QuantMatrix> mats;
    std::vector<Weight> ws;
    for (size_t i = 0; i < rows.size(); ++i) {
      mats.push_back(make_matrix(rows[i], cols, seed + 7 * static_cast<uint32_t>(i)));
      ws.push_back(mats.back().gpu);
    }
    set_x(cols, seed + 100);
    const kc::GemvGroupParams ps = group(ws, y_stream_);
    const kc::GemvGroupParams pg = group(ws, y_group_);
    ASSERT_TRUE(kc::gemv_stream_supports(ps)) << what;
    const auto got = run_stream(ps);
    const auto want = run_group(pg);
    EXPECT_LT(rel_l2(got, want), 1e-5) << what << ": against gemv_group";

    expect_dequantized_product(*cuda_, mats, cols, xq_, got, what);

    const auto again = run_stream(ps);
    EXPECT_EQ(0, std::memcmp(got.data(), again.data(), got.size() * sizeof(float)))
        << what << ": not bitwise repeatable";
  }
};

TEST_P(GemvStream, SmallShapes) {
  const bool k_quant = gguf_block_size(GetParam()) == 256;
  check({1}, 256, 10);
  check({7}, 512, 20);
  check({40}, 4096, 30);
  // Rows narrower than a warp step and not a multiple of it: partial last steps.
  check({33}, k_quant ? 2304 : 2080, 40);
}

TEST_P(GemvStream, LlamaShapes) {
  check({4096}, 4096, 50);
  check({14336}, 4096, 60);
  const TensorType t = GetParam();
  if (t == TensorType::kQ4_K || t == TensorType::kQ6_K) check({4096}, 14336, 70);
}

TEST_P(GemvStream, Groups) {
  check({4096, 1024, 1024}, 4096, 80);  // q, k, v
  check({14336, 14336}, 4096, 90);      // gate, up
  check({5, 1, 3}, 512, 100);           // matrix boundaries inside one warp's rows
}

// Captured into a CUDA graph and replayed: the same bits as a direct launch.
TEST_P(GemvStream, GraphReplay) {
  const QuantMatrix m = make_matrix(4096, 4096, 110);
  set_x(4096, 111);
  const kc::GemvGroupParams p = group({m.gpu}, y_stream_);
  const auto direct = run_stream(p);
  const std::vector<float> poison(p.total_rows, NAN);
  cuda_->copy_to_device(y_stream_, poison.data(), poison.size() * sizeof(float));
  cudaGraph_t graph = nullptr;
  cudaGraphExec_t exec = nullptr;
  ASSERT_EQ(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeThreadLocal), cudaSuccess);
  kc::gemv_stream(p, stream_);
  ASSERT_EQ(cudaStreamEndCapture(stream_, &graph), cudaSuccess);
  ASSERT_EQ(cudaGraphInstantiate(&exec, graph, 0), cudaSuccess);
  ASSERT_EQ(cudaGraphLaunch(exec, stream_), cudaSuccess);
  ASSERT_EQ(cudaStreamSynchronize(stream_), cudaSuccess);
  const auto replayed = get(*cuda_, y_stream_, p.total_rows);
  EXPECT_EQ(0, std::memcmp(direct.data(), replayed.data(), direct.size() * sizeof(float)));
  cudaGraphExecDestroy(exec);
  cudaGraphDestroy(graph);
}

INSTANTIATE_TEST_SUITE_P(Types, GemvStream, ::testing::ValuesIn(kQuantizedTypes),
                         quant_type_label);

}  // namespace
}  // namespace tpnode::test
