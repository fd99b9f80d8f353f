// The CPU backend's pointwise and row ops (rmsnorm, swiglu, add, add_bias, gather_rows) and
// its half-precision conversions, against references computed here in double.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "kernels/cpu/elementwise.h"
#include "node/backend/cpu/cpu_backend.h"
#include "node/common/error.h"
#include "tests/backend_cpu/test_support.h"

namespace tpnode {
namespace {

TEST(CpuOps, RmsNormMatchesDouble) {
  CpuBackend backend(CpuBackendOptions{.n_threads = 3});
  for (int64_t n : {67, 576, 1}) {
    const int64_t rows = 5;
    auto x = test::random_floats(static_cast<size_t>(rows * n), 1, 3.0f);
    x[0] = 50.0f;  // one large value: the mean must not lose the small ones
    const auto w = test::random_floats(static_cast<size_t>(n), 2, 2.0f);
    std::vector<float> y(x.size());
    const float eps = 1e-5f;
    backend.rmsnorm(x.data(), w.data(), y.data(), rows, n, eps);
    for (int64_t r = 0; r < rows; ++r) {
      double ss = 0.0;
      for (int64_t i = 0; i < n; ++i) ss += static_cast<double>(x[r * n + i]) * x[r * n + i];
      const double inv = 1.0 / std::sqrt(ss / n + eps);
      for (int64_t i = 0; i < n; ++i) {
        const double want = static_cast<double>(w[i]) * x[r * n + i] * inv;
        EXPECT_NEAR(y[r * n + i], want, 1e-6 + 2e-6 * std::abs(want)) << "n " << n << " r " << r;
      }
    }
    // In place gives the same result.
    std::vector<float> z = x;
    backend.rmsnorm(z.data(), w.data(), z.data(), rows, n, eps);
    EXPECT_EQ(z, y);
  }
}

TEST(CpuOps, SwigluMatchesDouble) {
  CpuBackend backend(CpuBackendOptions{.n_threads = 2});
  const int64_t n = 40000;  // spans several parallel chunks
  auto g = test::random_floats(n, 3, 12.0f);
  const auto u = test::random_floats(n, 4, 3.0f);
  g[0] = -100.0f;  // exp(-x) overflows to inf: silu must be -0, not nan
  g[1] = 100.0f;
  std::vector<float> out(n);
  backend.swiglu(g.data(), u.data(), out.data(), n);
  for (int64_t i = 0; i < n; ++i) {
    const double x = g[i];
    const double want = x / (1.0 + std::exp(-x)) * u[i];
    ASSERT_NEAR(out[i], want, 1e-6 + 1e-6 * std::abs(want)) << i;
  }
}

TEST(CpuOps, AddAndBias) {
  CpuBackend backend(CpuBackendOptions{.n_threads = 3});
  const int64_t m = 7, n = 67;
  auto x = test::random_floats(m * n, 5);
  const auto y = test::random_floats(m * n, 6);
  const auto b = test::random_floats(n, 7);
  const auto x0 = x;
  std::vector<float> sum(static_cast<size_t>(m * n));
  backend.add(x.data(), y.data(), sum.data(), m * n);
  ASSERT_EQ(x, x0);
  for (int64_t i = 0; i < m * n; ++i) ASSERT_EQ(sum[i], x0[i] + y[i]);
  backend.add(x.data(), y.data(), x.data(), m * n);
  ASSERT_EQ(x, sum);
  backend.add_bias(x.data(), b.data(), m, n);
  for (int64_t r = 0; r < m; ++r) {
    for (int64_t c = 0; c < n; ++c) ASSERT_EQ(x[r * n + c], (x0[r * n + c] + y[r * n + c]) + b[c]);
  }
}

TEST(CpuOps, GatherRowsFollowsLogitRows) {
  CpuBackend backend(CpuBackendOptions{.n_threads = 1});
  // Three sequences of 3, 1, 4 new tokens: the last token of each feeds the LM head.
  backend.begin_step(test::make_batch({{0, 3}, {5, 1}, {2, 4}}, {{}, {}, {}}));
  const int64_t row = 67;
  const auto x = test::random_floats(8 * row, 8);
  std::vector<float> out(3 * row);
  backend.gather_rows(x.data(), out.data(), row);
  const int rows[3] = {2, 3, 7};
  for (int j = 0; j < 3; ++j) {
    EXPECT_EQ(0, std::memcmp(out.data() + j * row, x.data() + rows[j] * row, row * sizeof(float)));
  }
}

TEST(CpuOps, AllocIsAlignedAndDistinct) {
  CpuBackend backend(CpuBackendOptions{.n_threads = 1});
  void* a = backend.alloc(1);
  void* b = backend.alloc(0);
  void* c = backend.alloc(1000);
  for (void* p : {a, b, c}) EXPECT_EQ(reinterpret_cast<uintptr_t>(p) % 64, 0u);
  EXPECT_NE(a, b);
  EXPECT_NE(b, c);
  std::vector<char> src(1000, 'x'), dst(1000);
  backend.copy_to_device(c, src.data(), 1000);
  backend.copy_to_host(dst.data(), c, 1000);
  EXPECT_EQ(src, dst);
  try {
    backend.alloc(std::numeric_limits<size_t>::max() / 2);
    FAIL() << "a huge allocation succeeded";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kOutOfMemory);
  }
}

TEST(CpuOps, RejectsUnsupportedKvType) {
  EXPECT_THROW(CpuBackend(CpuBackendOptions{.kv_type = TensorType::kQ8_0}), Error);
  EXPECT_EQ(make_cpu_backend({.n_threads = 1})->name(), "cpu");
}

TEST(HalfFloat, EveryHalfRoundTripsAndMatchesCompiler) {
  for (uint32_t bits = 0; bits < 0x10000; ++bits) {
    const auto h = static_cast<uint16_t>(bits);
    _Float16 ref;
    std::memcpy(&ref, &h, 2);
    const float want = static_cast<float>(ref);
    const float got = cpu::fp16_to_f32(h);
    if (std::isnan(want)) {
      ASSERT_TRUE(std::isnan(got)) << bits;
      continue;
    }
    ASSERT_EQ(std::memcmp(&got, &want, 4), 0) << "half bits " << bits;
    ASSERT_EQ(cpu::f32_to_fp16(got), h) << "half bits " << bits;
  }
}

TEST(HalfFloat, RoundsToNearestEvenLikeCompiler) {
  std::vector<float> xs = test::random_floats(200000, 9, 70000.0f);
  const auto small = test::random_floats(200000, 10, 1e-4f);  // subnormal halves
  xs.insert(xs.end(), small.begin(), small.end());
  // Exact ties between halves, both parities, normal and subnormal.
  for (float base : {1.0f, 1.0009765625f, 6.103515625e-05f, 5.9604644775390625e-08f}) {
    xs.push_back(std::nextafter(base, 2.0f * base));
    xs.push_back(base * (1.0f + 1.0f / 2048.0f));
    xs.push_back(base * (1.0f + 3.0f / 2048.0f));
  }
  xs.push_back(65519.0f);
  xs.push_back(65520.0f);                  // ties up to infinity
  xs.push_back(2.98023223876953125e-08f);  // half the smallest subnormal: ties to zero
  for (float x : xs) {
    const _Float16 ref = static_cast<_Float16>(x);
    uint16_t want;
    std::memcpy(&want, &ref, 2);
    ASSERT_EQ(cpu::f32_to_fp16(x), want) << x;
  }
}

TEST(HalfFloat, BFloat16IsTopHalf) {
  EXPECT_EQ(cpu::bf16_to_f32(0x3f80), 1.0f);
  EXPECT_EQ(cpu::bf16_to_f32(0xc040), -3.0f);
  EXPECT_EQ(cpu::bf16_to_f32(0x3e20), 0.15625f);
}

}  // namespace
}  // namespace tpnode
