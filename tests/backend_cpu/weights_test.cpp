// Weights on the CPU backend: uploads (strided slices, 16-bit vectors), synthesised weights
// of every type, embedding lookup of a hand-built Q8_0 table, and matmul through the backend.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <vector>

#include "node/backend/cpu/cpu_backend.h"
#include "node/common/error.h"
#include "tests/backend_cpu/test_support.h"

namespace tpnode {
namespace {

uint16_t half_bits(float x) {
  const _Float16 h = static_cast<_Float16>(x);
  uint16_t b;
  std::memcpy(&b, &h, 2);
  return b;
}

// A Q8_0 table built by hand: block = f16 scale + 32 int8, value = d * q.
struct Q8Table {
  std::vector<uint8_t> bytes;
  std::vector<float> values;  // [rows, cols] the exact dequantized values
  int64_t rows, cols;
  size_t stride;
};

Q8Table make_q8_table(int64_t rows, int64_t cols, uint32_t seed) {
  Q8Table t{.bytes = {},
            .values = {},
            .rows = rows,
            .cols = cols,
            .stride = static_cast<size_t>(cols / 32 * 34)};
  t.bytes.resize(t.stride * rows);
  std::mt19937 rng(seed);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t b = 0; b < cols / 32; ++b) {
      uint8_t* blk = t.bytes.data() + r * t.stride + b * 34;
      const float d = test::round_f16(0.001f + 0.01f * static_cast<float>(rng() % 100) / 100.0f);
      const uint16_t hb = half_bits(d);
      std::memcpy(blk, &hb, 2);
      for (int i = 0; i < 32; ++i) {
        const auto q = static_cast<int8_t>(static_cast<int>(rng() % 256) - 128);
        blk[2 + i] = static_cast<uint8_t>(q);
        t.values.push_back(d * static_cast<float>(q));
      }
    }
  }
  return t;
}

TEST(CpuWeights, EmbedDequantizesBatchTokens) {
  CpuBackend backend(CpuBackendOptions{.n_threads = 2});
  const Q8Table t = make_q8_table(97, 96, 1);  // make_batch uses token ids below 97
  const Weight w = backend.upload_weight(HostMatrix{.type = TensorType::kQ8_0,
                                                    .data = t.bytes.data(),
                                                    .rows = t.rows,
                                                    .cols = t.cols,
                                                    .row_stride = t.stride});
  const BatchMeta batch = test::make_batch({{0, 4}, {3, 1}, {0, 2}}, {{}, {}, {}});
  backend.begin_step(batch);
  std::vector<float> x(batch.n_tokens() * t.cols);
  backend.embed(w, x.data());
  for (int64_t tok = 0; tok < batch.n_tokens(); ++tok) {
    for (int64_t c = 0; c < t.cols; ++c) {
      ASSERT_EQ(x[tok * t.cols + c], t.values[batch.tokens[tok] * t.cols + c]) << tok << "," << c;
    }
  }
  // A token id outside the table is refused.
  BatchMeta bad = batch;
  bad.tokens[1] = 97;
  backend.begin_step(bad);
  EXPECT_THROW(backend.embed(w, x.data()), Error);
}

TEST(CpuWeights, UploadWeightPacksAStridedSlice) {
  CpuBackend backend(CpuBackendOptions{.n_threads = 2});
  // Rows 3..7, columns 32..95 of an F32 [10, 128] matrix.
  const auto full = test::random_floats(10 * 128, 2);
  const Weight w = backend.upload_weight(
      HostMatrix{.type = TensorType::kF32,
                 .data = reinterpret_cast<const uint8_t*>(full.data() + 3 * 128 + 32),
                 .rows = 5,
                 .cols = 64,
                 .row_stride = 128 * sizeof(float)});
  EXPECT_EQ(w.row_stride, 64 * sizeof(float));
  EXPECT_EQ(reinterpret_cast<uintptr_t>(w.data) % 64, 0u);
  const auto* got = static_cast<const float*>(w.data);
  for (int64_t r = 0; r < 5; ++r) {
    for (int64_t c = 0; c < 64; ++c) ASSERT_EQ(got[r * 64 + c], full[(3 + r) * 128 + 32 + c]);
  }
  // Quantized rows must hold whole blocks.
  EXPECT_THROW(
      backend.upload_weight(HostMatrix{.type = TensorType::kQ8_0,
                                       .data = reinterpret_cast<const uint8_t*>(full.data()),
                                       .rows = 1,
                                       .cols = 40,
                                       .row_stride = 68}),
      Error);
}

TEST(CpuWeights, UploadVectorConvertsToF32) {
  CpuBackend backend(CpuBackendOptions{.n_threads = 1});
  const std::vector<float> want = {1.0f, -2.5f, 0.099975586f, 65504.0f, 6.1035156e-05f};
  std::vector<uint16_t> f16, bf16;
  for (float x : want) {
    f16.push_back(half_bits(x));
    uint32_t u;
    std::memcpy(&u, &x, 4);
    bf16.push_back(static_cast<uint16_t>(u >> 16));
  }
  const float* a = backend.upload_vector(TensorType::kF32, want.data(), 5);
  const float* b = backend.upload_vector(TensorType::kF16, f16.data(), 5);
  const float* c = backend.upload_vector(TensorType::kBF16, bf16.data(), 5);
  for (int i = 0; i < 5; ++i) {
    EXPECT_EQ(a[i], want[i]);
    EXPECT_EQ(b[i], test::round_f16(want[i]));
    uint32_t u = static_cast<uint32_t>(bf16[i]) << 16;
    float trunc;
    std::memcpy(&trunc, &u, 4);
    EXPECT_EQ(c[i], trunc);
  }
  EXPECT_THROW(backend.upload_vector(TensorType::kQ4_0, f16.data(), 32), Error);
  const float* ones = backend.synth_vector(67, 1.0f);
  for (int i = 0; i < 67; ++i) EXPECT_EQ(ones[i], 1.0f);
}

class SynthWeight : public ::testing::TestWithParam<TensorType> {};

TEST_P(SynthWeight, DequantizesToFiniteValuesOfTheExpectedScale) {
  const TensorType type = GetParam();
  CpuBackend backend(CpuBackendOptions{.n_threads = 3});
  for (int64_t cols : {256, 1536}) {
    const int64_t rows = 48;
    const Weight w = backend.synth_weight(type, rows, cols, /*seed=*/7);
    ASSERT_EQ(w.row_stride, row_bytes(type, cols));
    const double sigma = 1.0 / std::sqrt(static_cast<double>(cols));
    std::vector<float> row(cols);
    double sum = 0.0, sum_sq = 0.0;
    double row_min_std = 1e9, row_max_std = 0.0;
    for (int64_t r = 0; r < rows; ++r) {
      dequantize_row(type, static_cast<const uint8_t*>(w.data) + r * w.row_stride, row.data(),
                     cols);
      double rs = 0.0, rss = 0.0;
      for (float x : row) {
        ASSERT_TRUE(std::isfinite(x)) << type_name(type);
        rs += x;
        rss += static_cast<double>(x) * x;
      }
      sum += rs;
      sum_sq += rss;
      const double rstd = std::sqrt(rss / cols - (rs / cols) * (rs / cols));
      row_min_std = std::min(row_min_std, rstd);
      row_max_std = std::max(row_max_std, rstd);
    }
    const double n = static_cast<double>(rows * cols);
    const double mean = sum / n;
    const double std = std::sqrt(sum_sq / n - mean * mean);
    EXPECT_NEAR(std / sigma, 1.0, 0.25) << type_name(type) << " cols " << cols;
    EXPECT_LT(std::abs(mean), 0.1 * sigma) << type_name(type) << " cols " << cols;
    EXPECT_GT(row_min_std, 0.5 * sigma) << type_name(type);  // no dead rows
    EXPECT_LT(row_max_std, 2.0 * sigma) << type_name(type);
  }
  // Same seed, same bytes; another seed, other bytes.
  const Weight a = backend.synth_weight(type, 4, 256, 1);
  const Weight b = backend.synth_weight(type, 4, 256, 1);
  const Weight c = backend.synth_weight(type, 4, 256, 2);
  EXPECT_EQ(0, std::memcmp(a.data, b.data, 4 * a.row_stride));
  EXPECT_NE(0, std::memcmp(a.data, c.data, 4 * a.row_stride));
  // Deterministic across thread counts.
  CpuBackend one(CpuBackendOptions{.n_threads = 1});
  const Weight d = one.synth_weight(type, 4, 256, 1);
  EXPECT_EQ(0, std::memcmp(a.data, d.data, 4 * a.row_stride));
}

INSTANTIATE_TEST_SUITE_P(AllTypes, SynthWeight,
                         ::testing::Values(TensorType::kF32, TensorType::kF16, TensorType::kBF16,
                                           TensorType::kQ4_0, TensorType::kQ4_1, TensorType::kQ5_0,
                                           TensorType::kQ5_1, TensorType::kQ8_0, TensorType::kQ4_K,
                                           TensorType::kQ5_K, TensorType::kQ6_K),
                         [](const auto& info) { return std::string(type_name(info.param)); });

// matmul through the backend: F32 exactly (to float rounding), Q8_0 to quantization noise.
TEST(CpuWeights, MatmulMatchesDouble) {
  CpuBackend backend(CpuBackendOptions{.n_threads = 3});
  const int64_t m = 5, n = 37, k = 96;
  const auto x = test::random_floats(m * k, 3);
  const auto wf = test::random_floats(n * k, 4, 0.2f);
  const Weight w32 =
      backend.upload_weight(HostMatrix{.type = TensorType::kF32,
                                       .data = reinterpret_cast<const uint8_t*>(wf.data()),
                                       .rows = n,
                                       .cols = k,
                                       .row_stride = k * sizeof(float)});
  std::vector<float> y(m * n);
  backend.matmul(w32, x.data(), y.data(), m);
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t j = 0; j < n; ++j) {
      double want = 0.0;
      for (int64_t c = 0; c < k; ++c) want += static_cast<double>(x[i * k + c]) * wf[j * k + c];
      EXPECT_NEAR(y[i * n + j], want, 1e-5 + 1e-5 * std::abs(want));
    }
  }

  const Q8Table t = make_q8_table(n, k, 5);
  const Weight wq = backend.upload_weight(HostMatrix{.type = TensorType::kQ8_0,
                                                     .data = t.bytes.data(),
                                                     .rows = n,
                                                     .cols = k,
                                                     .row_stride = t.stride});
  backend.matmul(wq, x.data(), y.data(), m);
  double err = 0.0, norm = 0.0;
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t j = 0; j < n; ++j) {
      double want = 0.0;
      for (int64_t c = 0; c < k; ++c)
        want += static_cast<double>(x[i * k + c]) * t.values[j * k + c];
      err += (y[i * n + j] - want) * (y[i * n + j] - want);
      norm += want * want;
    }
  }
  EXPECT_LT(err / norm, 1e-4);  // activations quantized to 8 bits
}

}  // namespace
}  // namespace tpnode
