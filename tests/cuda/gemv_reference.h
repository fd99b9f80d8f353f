// The independent reference of the batch-1 quantized GEMV tests: GGUF-format random rows
// uploaded to the GPU, and the product of their host-dequantized values with the very 8-bit
// activations the GPU made, in double precision.
#pragma once

#include <fmt/format.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "kernels/cpu/dequantize.h"
#include "kernels/cuda/gemv.h"
#include "tests/cuda/cuda_test_support.h"

namespace tpnode::test {

struct QuantMatrix {
  std::vector<uint8_t> gguf;  // GGUF rows, kept for the host reference
  size_t stride = 0;
  Weight gpu;
};

inline QuantMatrix make_quant_matrix(Backend& cuda, TensorType type, int64_t rows, int64_t cols,
                                     uint32_t seed) {
  QuantMatrix m;
  m.gguf = random_gguf_rows(type, rows, cols, seed);
  m.stride = m.gguf.size() / rows;
  m.gpu = cuda.upload_weight(HostMatrix{type, m.gguf.data(), rows, cols, m.stride});
  return m;
}

// y of the matrices' rows, one after the other, from the device activations `xq` (cols
// values), and per output the sum of |w x| that bounds its rounding.
struct ProductReference {
  std::vector<double> y;
  std::vector<double> mag;
};

inline ProductReference dequantized_product(Backend& cuda, const std::vector<QuantMatrix>& mats,
                                            int64_t cols, const ::tpnode::cuda::QuantActs& xq) {
  const int64_t chunks = cols / 32;
  std::vector<int8_t> q(cols);
  std::vector<float> d(chunks);
  cuda.copy_to_host(q.data(), xq.q, cols);
  cuda.copy_to_host(d.data(), xq.d, chunks * sizeof(float));
  ProductReference ref;
  std::vector<float> w(cols);
  for (const QuantMatrix& m : mats) {
    for (int64_t r = 0; r < m.gpu.rows; ++r) {
      cpu::dequantize_row(m.gpu.type, m.gguf.data() + r * m.stride, w.data(), cols);
      double acc = 0.0, mag = 0.0;
      for (int64_t c = 0; c < chunks; ++c) {
        double s = 0.0, a = 0.0;
        for (int64_t i = 32 * c; i < 32 * c + 32; ++i) {
          const double v = static_cast<double>(w[i]) * q[i];
          s += v;
          a += std::fabs(v);
        }
        acc += s * d[c];
        mag += a * std::fabs(d[c]);
      }
      ref.y.push_back(acc);
      ref.mag.push_back(mag);
    }
  }
  return ref;
}

// How close a product must be: each output within `of_sum` times its sum |w x| plus `floor`
// (one wrong row shows itself), and the whole vector within NMSE `nmse`. The default is the
// quantized GEMVs' (8-bit activations).
struct ProductTolerance {
  double of_sum = 1e-4;
  double floor = 1e-12;
  double nmse = 1e-5;
};

inline void expect_product(const ProductReference& ref, const std::vector<float>& got,
                           const std::string& what, const ProductTolerance& tol = {}) {
  ASSERT_EQ(got.size(), ref.y.size()) << what;
  int bad = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    const double err = std::fabs(got[i] - ref.y[i]);
    if (!(err <= tol.of_sum * ref.mag[i] + tol.floor) && bad++ < 5) {
      ADD_FAILURE() << what << fmt::format(": y[{}] = {} want {} (sum |w x| = {})", i, got[i],
                                           ref.y[i], ref.mag[i]);
    }
  }
  EXPECT_EQ(bad, 0) << what;
  const std::vector<float> y(ref.y.begin(), ref.y.end());
  EXPECT_LT(nmse(got, y), tol.nmse) << what << ": against the double-precision reference";
}

inline void expect_dequantized_product(Backend& cuda, const std::vector<QuantMatrix>& mats,
                                       int64_t cols, const ::tpnode::cuda::QuantActs& xq,
                                       const std::vector<float>& got, const std::string& what) {
  expect_product(dequantized_product(cuda, mats, cols, xq), got, what);
}

}  // namespace tpnode::test
