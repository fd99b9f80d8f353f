// The float-weight GEMVs (gemv_float_group: the pipelined resident-grid kernel in every
// compiled geometry and the one-warp-per-row kernel) against a double-precision host product
// of the very weights and activations uploaded: BF16, F16 and F32 weights, m = 1 and 2, rows
// that are not a multiple of any CTA's rows, widths that are a multiple of 8 but not of 256,
// groups of three matrices of different heights, and shapes where a warp walks several row
// groups. Each result is also bitwise repeatable. The group checks run without a GPU.
#include <cuda_runtime.h>
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "kernels/cuda/gemv.h"
#include "kernels/cuda/gemv_float.h"
#include "tests/cuda/cuda_test_support.h"
#include "tests/cuda/gemv_reference.h"

namespace tpnode::test {
namespace {

namespace kc = ::tpnode::cuda;

constexpr TensorType kFloatTypes[] = {TensorType::kBF16, TensorType::kF16, TensorType::kF32};

double float_value(TensorType type, const uint8_t* p) {
  switch (type) {
    case TensorType::kF32: {
      float f;
      std::memcpy(&f, p, 4);
      return f;
    }
    case TensorType::kF16: {
      _Float16 h;
      std::memcpy(&h, p, 2);
      return static_cast<double>(h);
    }
    case TensorType::kBF16: {
      uint16_t b;
      std::memcpy(&b, p, 2);
      const uint32_t bits = static_cast<uint32_t>(b) << 16;
      float f;
      std::memcpy(&f, &bits, 4);
      return f;
    }
    default: return NAN;
  }
}

struct FloatMatrix {
  std::vector<uint8_t> host;  // [rows][cols] of the type
  Weight gpu;
};

// y [m, rows] of each matrix one after the other (the stacked group's layout), and per output
// the sum of |w x| that bounds its rounding.
ProductReference float_product(const std::vector<FloatMatrix>& mats, const std::vector<float>& x,
                             int64_t m, int64_t cols) {
  ProductReference ref;
  for (const FloatMatrix& mat : mats) {
    const TensorType type = mat.gpu.type;
    const size_t elem = gguf_block_bytes(type);
    std::vector<double> w(cols);
    std::vector<double> y(m * mat.gpu.rows), mag(m * mat.gpu.rows);
    for (int64_t r = 0; r < mat.gpu.rows; ++r) {
      for (int64_t k = 0; k < cols; ++k) w[k] = float_value(type, mat.host.data() + (r * cols + k) * elem);
      for (int64_t c = 0; c < m; ++c) {
        double acc = 0.0, a = 0.0;
        for (int64_t k = 0; k < cols; ++k) {
          const double v = w[k] * x[c * cols + k];
          acc += v;
          a += std::fabs(v);
        }
        y[c * mat.gpu.rows + r] = acc;
        mag[c * mat.gpu.rows + r] = a;
      }
    }
    ref.y.insert(ref.y.end(), y.begin(), y.end());
    ref.mag.insert(ref.mag.end(), mag.begin(), mag.end());
  }
  return ref;
}

// Each output within 2e-5 of its sum |w x| (F32 accumulation over at most a few hundred
// terms per lane; a dropped or repeated 8-element item is far outside), and the whole vector
// within NMSE 1e-9.
void expect_float_product(const ProductReference& ref, const std::vector<float>& got,
                          const std::string& what) {
  expect_product(ref, got, what, {.of_sum = 2e-5, .floor = 1e-30, .nmse = 1e-9});
}

class GemvFloat : public CudaVsCpu, public ::testing::WithParamInterface<TensorType> {
 protected:
  static constexpr int64_t kMaxElems = int64_t{1} << 22;  // of x and of y

  void SetUp() override {
    CudaVsCpu::SetUp();
    if (IsSkipped()) return;
    stream_ = static_cast<cudaStream_t>(cuda_backend_stream(*cuda_));
    x_ = static_cast<float*>(cuda_->alloc(kMaxElems * sizeof(float)));
    y_ = static_cast<float*>(cuda_->alloc(kMaxElems * sizeof(float)));
  }

  std::vector<FloatMatrix> make(const std::vector<int64_t>& rows, int64_t cols, uint32_t seed) {
    const TensorType type = GetParam();
    std::vector<FloatMatrix> mats;
    for (size_t i = 0; i < rows.size(); ++i) {
      FloatMatrix mat;
      mat.host = random_gguf_rows(type, rows[i], cols, seed + 7 * static_cast<uint32_t>(i));
      mat.gpu = cuda_->upload_weight(HostMatrix{type, mat.host.data(), rows[i], cols,
                                                static_cast<size_t>(cols) * gguf_block_bytes(type)});
      mats.push_back(std::move(mat));
    }
    return mats;
  }

  std::vector<float> put_x(int64_t m, int64_t cols, uint32_t seed) {
    EXPECT_LE(m * cols, kMaxElems);
    const auto x = cuda_random_floats(m * cols, seed);
    cuda_->copy_to_device(x_, x.data(), x.size() * sizeof(float));
    return x;
  }

  // Every geometry compiled for m on the group of matrices with `rows` rows and `cols`
  // columns, each run twice.
  void check(const std::vector<int64_t>& rows, int64_t cols, uint32_t seed) {
    const TensorType type = GetParam();
    const std::vector<FloatMatrix> mats = make(rows, cols, seed);
    std::vector<kc::DeviceMatrix> dms;
    for (const FloatMatrix& mat : mats) {
      dms.push_back(kc::device_matrix(mat.gpu.type, mat.gpu.rows, mat.gpu.cols, mat.gpu.data));
    }
    for (int64_t m = 1; m <= kc::kFloatGemvBestBatch; ++m) {
      const auto x = put_x(m, cols, seed + 100);
      const kc::GemvFloatGroupParams p =
          kc::stacked_gemv_float_group(dms.data(), static_cast<int>(dms.size()), x_, m, y_);
      ASSERT_LE(m * p.total_rows, kMaxElems);
      const ProductReference ref = float_product(mats, x, m, cols);
      const std::vector<kc::GemvGeometry> geometries = kc::gemv_float_group_geometries(m);
      ASSERT_GE(geometries.size(), 2u);
      for (const kc::GemvGeometry& g : geometries) {
        std::string what = fmt::format("{} {}{} m={} cols={} rows=", kc::weight_type_label(type),
                                       kc::gemv_geometry_label(g), g.pipelined ? "" : " (1 warp/row)",
                                       m, cols);
        for (int64_t r : rows) what += fmt::format("{} ", r);
        const auto got = run(p, g);
        expect_float_product(ref, got, what);
        const auto again = run(p, g);
        EXPECT_EQ(0, std::memcmp(got.data(), again.data(), got.size() * sizeof(float)))
            << what << ": not bitwise repeatable";
      }
      // The default geometry is one of them.
      const auto got = run(p, kc::gemv_float_group_geometry(p));
      expect_float_product(ref, got, fmt::format("default geometry, m={}", m));
    }
  }

  std::vector<float> run(const kc::GemvFloatGroupParams& p, const kc::GemvGeometry& g) {
    const std::vector<float> poison(p.m * p.total_rows, NAN);
    cuda_->copy_to_device(y_, poison.data(), poison.size() * sizeof(float));
    kc::gemv_float_group(p, g, stream_);
    return get(*cuda_, y_, poison.size());
  }

  cudaStream_t stream_ = nullptr;
  float* x_ = nullptr;
  float* y_ = nullptr;
};

TEST_P(GemvFloat, SmallShapes) {
  check({1}, 8, 10);      // one item per row
  check({7}, 264, 20);    // 33 items: a partial step
  check({37}, 2056, 30);  // rows not a multiple of any CTA's rows; 257 items
  check({130}, 4096, 40);
}

TEST_P(GemvFloat, GroupsOfThree) {
  check({13, 5, 22}, 1032, 50);  // matrix boundaries inside a warp's rows
  check({1, 2, 3}, 520, 60);
  check({64, 8, 8}, 512, 70);
}

// More row groups than resident warps: each warp walks several, its next group's first
// loads issued before its current group's last dot products.
TEST_P(GemvFloat, ManyRowGroupsPerWarp) { check({20011}, 264, 80); }

TEST_P(GemvFloat, LlamaShapes) {
  check({4096, 1024, 1024}, 4096, 90);  // Llama-3-8B q/k/v
  check({4096}, 14336, 100);            // ffn_down
}

// gemv() for float weights goes through the float group: one warp per row above
// kFloatGemvBestBatch, up to kGemvMaxBatch columns.
TEST_P(GemvFloat, GemvEntryAllBatches) {
  const int64_t rows = 45, cols = 776;
  const std::vector<FloatMatrix> mats = make({rows}, cols, 110);
  const Weight& w = mats[0].gpu;
  for (int64_t m : {int64_t{1}, int64_t{2}, int64_t{3}, int64_t{5}, kc::kGemvMaxBatch}) {
    const auto x = put_x(m, cols, 120 + static_cast<uint32_t>(m));
    const std::vector<float> poison(m * rows, NAN);
    cuda_->copy_to_device(y_, poison.data(), poison.size() * sizeof(float));
    kc::gemv({.w = kc::device_matrix(w.type, w.rows, w.cols, w.data), .x = x_, .xq = {}, .y = y_, .m = m},
             stream_);
    expect_float_product(float_product(mats, x, m, cols), get(*cuda_, y_, m * rows),
                         fmt::format("gemv m={}", m));
  }
}

// The backend's matmul_shared sends q/k/v of one float type through one group launch.
TEST_P(GemvFloat, BackendMatmulShared) {
  const int64_t cols = 1032;
  const std::vector<int64_t> rows = {24, 8, 8};
  const std::vector<FloatMatrix> mats = make(rows, cols, 130);
  for (int64_t m = 1; m <= kc::kFloatGemvBestBatch; ++m) {
    const auto x = put_x(m, cols, 140);
    std::vector<Backend::MatmulOut> outs;
    int64_t at = 0;
    for (const FloatMatrix& mat : mats) {
      outs.push_back({&mat.gpu, y_ + at});
      at += m * mat.gpu.rows;
    }
    const std::vector<float> poison(at, NAN);
    cuda_->copy_to_device(y_, poison.data(), poison.size() * sizeof(float));
    cuda_->matmul_shared(outs, x_, m);
    expect_float_product(float_product(mats, x, m, cols), get(*cuda_, y_, at),
                         fmt::format("matmul_shared m={}", m));
  }
}

INSTANTIATE_TEST_SUITE_P(Types, GemvFloat, ::testing::ValuesIn(kFloatTypes), quant_type_label);

// ---- host-side checks: no GPU needed (they throw before any launch) ---------------------

// A group of `n` BF16 matrices of `rows` x `cols` at fake, aligned addresses.
kc::GemvFloatGroupParams fake_group(int n, int64_t rows, int64_t cols, int64_t m) {
  alignas(16) static float fake_x[64];
  kc::GemvFloatGroupParams p;
  p.n = n;
  p.cols = cols;
  p.m = m;
  p.x = fake_x;
  for (int i = 0; i < n; ++i) {
    p.outs[i].w = kc::device_matrix(TensorType::kBF16, rows, cols, reinterpret_cast<const void*>(0x10000));
    p.outs[i].y = reinterpret_cast<float*>(0x20000);
    p.total_rows += rows;
  }
  return p;
}

TEST(GemvFloatChecks, GeometriesPerBatch) {
  const std::vector<kc::GemvGeometry> one = kc::gemv_float_group_geometries(1);
  ASSERT_GE(one.size(), 3u);
  EXPECT_FALSE(one[0].pipelined);
  EXPECT_EQ(one[0], kc::gemv_float_rowwise_geometry(1));
  for (size_t i = 1; i < one.size(); ++i) {
    EXPECT_TRUE(one[i].pipelined) << kc::gemv_geometry_label(one[i]);
    for (size_t j = 0; j < i; ++j) EXPECT_NE(one[i], one[j]) << "listed twice";
  }
  EXPECT_EQ(kc::gemv_float_group_geometries(2), one);
  // Above kFloatGemvBestBatch only the one-warp-per-row kernel, with fewer items per lane.
  const std::vector<kc::GemvGeometry> three = kc::gemv_float_group_geometries(3);
  ASSERT_EQ(three.size(), 1u);
  EXPECT_EQ(three[0], kc::gemv_float_rowwise_geometry(3));
  EXPECT_NE(three[0], one[0]);
  // The default is compiled, and pipelined where it may be.
  for (int64_t m = 1; m <= kc::kGemvMaxBatch; ++m) {
    for (int64_t rows : {int64_t{1}, int64_t{512}, int64_t{28672}, int64_t{64128}}) {
      for (int64_t cols : {int64_t{8}, int64_t{4096}, int64_t{14336}}) {
        const kc::GemvFloatGroupParams p = fake_group(1, rows, cols, m);
        const kc::GemvGeometry g = kc::gemv_float_group_geometry(p);
        const std::vector<kc::GemvGeometry> all = kc::gemv_float_group_geometries(m);
        EXPECT_NE(std::find(all.begin(), all.end(), g), all.end())
            << kc::gemv_geometry_label(g) << " m=" << m;
        EXPECT_EQ(g.pipelined, m <= kc::kFloatGemvBestBatch) << "m=" << m;
      }
    }
  }
}

TEST(GemvFloatChecks, Supports) {
  EXPECT_TRUE(kc::gemv_float_supports(kc::device_matrix(TensorType::kBF16, 4, 8, nullptr)));
  EXPECT_TRUE(kc::gemv_float_supports(kc::device_matrix(TensorType::kF16, 4, 4104, nullptr)));
  EXPECT_TRUE(kc::gemv_float_supports(kc::device_matrix(TensorType::kF32, 4, 16, nullptr)));
  EXPECT_FALSE(kc::gemv_float_supports(kc::device_matrix(TensorType::kBF16, 4, 12, nullptr)));
  EXPECT_FALSE(kc::gemv_float_supports(kc::device_matrix(TensorType::kQ8_0, 4, 64, nullptr)));
}

TEST(GemvFloatChecks, BadGroupsThrow) {
  const kc::GemvGeometry pick = kc::gemv_float_group_geometry(fake_group(1, 16, 64, 1));
  auto expect_error = [&](const kc::GemvFloatGroupParams& p, const std::string& what) {
    EXPECT_THROW(kc::gemv_float_group(p, pick, nullptr), Error) << what;
  };
  expect_error(fake_group(1, 16, 64, 0), "batch 0");
  expect_error(fake_group(1, 16, 64, kc::kGemvMaxBatch + 1), "batch above kGemvMaxBatch");
  {
    kc::GemvFloatGroupParams p = fake_group(1, 16, 64, 1);
    p.n = 0;
    expect_error(p, "no matrix");
    p.n = kc::kMaxGemvGroup + 1;
    expect_error(p, "too many matrices");
  }
  {
    kc::GemvFloatGroupParams p = fake_group(2, 16, 64, 1);
    p.outs[1].w = kc::device_matrix(TensorType::kF16, 16, 64, reinterpret_cast<const void*>(0x10000));
    expect_error(p, "two types");
  }
  {
    kc::GemvFloatGroupParams p = fake_group(2, 16, 64, 1);
    p.outs[1].w = kc::device_matrix(TensorType::kBF16, 16, 72, reinterpret_cast<const void*>(0x10000));
    expect_error(p, "two widths");
  }
  expect_error(fake_group(1, 16, 60, 1), "cols not a multiple of 8");
  {
    kc::GemvFloatGroupParams p = fake_group(1, 16, 64, 1);
    p.outs[0].w = kc::device_matrix(TensorType::kQ8_0, 16, 64, reinterpret_cast<const void*>(0x10000));
    expect_error(p, "a quantized matrix");
  }
  {
    kc::GemvFloatGroupParams p = fake_group(2, 16, 64, 1);
    p.total_rows += 1;
    expect_error(p, "total_rows");
  }
  {
    kc::GemvFloatGroupParams p = fake_group(1, 16, 64, 1);
    p.x = reinterpret_cast<const float*>(reinterpret_cast<uintptr_t>(p.x) + 4);
    expect_error(p, "x not 16-byte aligned");
    p.x = nullptr;
    expect_error(p, "no x");
  }
  {
    kc::GemvFloatGroupParams p = fake_group(1, 16, 64, 1);
    p.outs[0].w.q += 8;
    expect_error(p, "weights not 16-byte aligned");
    p.outs[0].w.q = nullptr;
    expect_error(p, "no weights");
  }
  {
    kc::GemvFloatGroupParams p = fake_group(1, 16, 64, 1);
    p.outs[0].y = nullptr;
    expect_error(p, "no output");
  }
}

TEST(GemvFloatChecks, GeometryNotCompiledThrows) {
  const kc::GemvFloatGroupParams p1 = fake_group(1, 16, 64, 1);
  EXPECT_THROW(kc::gemv_float_group(p1, kc::GemvGeometry{3, 1, 2, 0, true}, nullptr), Error);
  EXPECT_THROW(kc::gemv_float_group(p1, kc::GemvGeometry{1, 4, 2, 0, true}, nullptr), Error);
  // The one-warp-per-row kernel of another batch, and any pipelined geometry above
  // kFloatGemvBestBatch.
  EXPECT_THROW(kc::gemv_float_group(p1, kc::gemv_float_rowwise_geometry(8), nullptr), Error);
  const kc::GemvFloatGroupParams p3 = fake_group(1, 16, 64, kc::kFloatGemvBestBatch + 1);
  for (const kc::GemvGeometry& g : kc::gemv_float_group_geometries(1)) {
    if (g.pipelined) {
      EXPECT_THROW(kc::gemv_float_group(p3, g, nullptr), Error) << kc::gemv_geometry_label(g);
    }
  }
}

TEST(GemvFloatChecks, StackedGroupLayout) {
  const kc::DeviceMatrix mats[3] = {
      kc::device_matrix(TensorType::kBF16, 10, 64, reinterpret_cast<const void*>(0x10000)),
      kc::device_matrix(TensorType::kBF16, 3, 64, reinterpret_cast<const void*>(0x20000)),
      kc::device_matrix(TensorType::kBF16, 5, 64, reinterpret_cast<const void*>(0x30000))};
  float* y = reinterpret_cast<float*>(0x40000);
  const float* x = reinterpret_cast<const float*>(0x50000);
  const kc::GemvFloatGroupParams p = kc::stacked_gemv_float_group(mats, 3, x, 2, y);
  EXPECT_EQ(p.n, 3);
  EXPECT_EQ(p.total_rows, 18);
  EXPECT_EQ(p.cols, 64);
  EXPECT_EQ(p.m, 2);
  EXPECT_EQ(p.x, x);
  EXPECT_EQ(p.outs[0].y, y);
  EXPECT_EQ(p.outs[1].y, y + 2 * 10);  // [m, rows] per matrix
  EXPECT_EQ(p.outs[2].y, y + 2 * 13);
  EXPECT_THROW(kc::stacked_gemv_float_group(mats, 0, x, 1, y), Error);
  EXPECT_THROW(kc::stacked_gemv_float_group(mats, kc::kMaxGemvGroup + 1, x, 1, y), Error);
}

}  // namespace
}  // namespace tpnode::test
