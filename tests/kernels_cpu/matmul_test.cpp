// cpu::matmul for every weight type against a double-precision reference built from
// dequantize_row(W) (itself checked bit-exact against gguf-py in tests/model).
//
// Tolerance. For quantized W, x is rounded per block to d_b·q with d_b = max_b|x|/127 and
// |x_i − d_b·q_i| ≤ d_b/2, so the activation rounding moves y by at most
//   E_q = Σ_b (d_b/2)·Σ_{i∈b} |w_i|.
// The block sums are exact integers; what remains is float rounding of ≤ nb + 4 terms per
// output (scale products, the min term, accumulation), bounded by
//   E_f = 4·(nb + 4)·2⁻²⁴·S,  S = Σ_i (|w_i| + |m_b|)·|x_i|
// where m_b is the block minimum of Q4_1/Q5_1 (its term is summed apart from d·q) and nb
// the number of terms summed (k for float W). The checks:
//   exact x:      |y − Σ w·x| ≤ E_q + E_f
//   quantized x:  |y − Σ w·x̂| ≤ E_f   (x̂ = dequantized activations: tests the integer path
//                                      tightly, independent of the rounding slack)
#include "kernels/cpu/matmul.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "kernels/cpu/matmul_path.h"
#include "kernels/cpu/quants.h"
#include "kernels/cpu/vec_dot.h"
#include "node/common/error.h"
#include "node/model/tensor_type.h"

namespace tpnode::cpu {
namespace {

const TensorType kAllTypes[] = {TensorType::kF32,  TensorType::kF16,  TensorType::kBF16,
                                TensorType::kQ8_0, TensorType::kQ4_0, TensorType::kQ4_1,
                                TensorType::kQ5_0, TensorType::kQ5_1, TensorType::kQ4_K,
                                TensorType::kQ5_K, TensorType::kQ6_K};

// A half with a random mantissa and exponent in [2^lo, 2^hi), random sign.
uint16_t random_f16(std::mt19937_64& rng, int lo, int hi) {
  const int e = std::uniform_int_distribution<int>(lo, hi - 1)(rng) + 15;
  const auto mant = static_cast<uint16_t>(rng() & 0x3FF);
  const auto sign = static_cast<uint16_t>((rng() & 1) << 15);
  return static_cast<uint16_t>(sign | (e << 10) | mant);
}

// Offsets of the F16 scale fields in a block (scales of the K-quants stay random bytes).
std::vector<size_t> scale_offsets(TensorType t) {
  switch (t) {
    case TensorType::kQ4_1:
    case TensorType::kQ5_1:
    case TensorType::kQ4_K:
    case TensorType::kQ5_K: return {0, 2};
    case TensorType::kQ6_K: return {208};
    default: return {0};
  }
}

// W [n, k] of random bits with moderate scales, rows `stride` bytes apart.
std::vector<uint8_t> random_weights(TensorType t, int64_t n, int64_t k, size_t stride,
                                    uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<uint8_t> w(stride * static_cast<size_t>(n));
  for (auto& b : w) b = static_cast<uint8_t>(rng());
  const TypeTraits& tr = type_traits(t);
  for (int64_t r = 0; r < n; ++r) {
    uint8_t* row = w.data() + r * stride;
    if (t == TensorType::kF32) {
      std::normal_distribution<float> nd(0.0f, 1.0f);
      for (int64_t i = 0; i < k; ++i) {
        const float v = nd(rng);
        std::memcpy(row + 4 * i, &v, 4);
      }
    } else if (t == TensorType::kF16) {
      for (int64_t i = 0; i < k; ++i) {
        const uint16_t h = random_f16(rng, -6, 2);
        std::memcpy(row + 2 * i, &h, 2);
      }
    } else if (t == TensorType::kBF16) {
      std::normal_distribution<float> nd(0.0f, 1.0f);
      for (int64_t i = 0; i < k; ++i) {
        const float v = nd(rng);
        uint32_t bits;
        std::memcpy(&bits, &v, 4);
        const auto h = static_cast<uint16_t>(bits >> 16);
        std::memcpy(row + 2 * i, &h, 2);
      }
    } else {
      for (int64_t b = 0; b < k / tr.block_size; ++b) {
        for (size_t off : scale_offsets(t)) {
          const uint16_t h = random_f16(rng, -8, -3);
          std::memcpy(row + b * tr.block_bytes + off, &h, 2);
        }
      }
    }
  }
  return w;
}

std::vector<float> random_x(int64_t m, int64_t k, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::vector<float> x(static_cast<size_t>(m * k));
  for (auto& v : x) v = nd(rng);
  // Outliers, as real activations have: they set the block scales.
  for (size_t i = 0; i < x.size(); i += 97) x[i] *= 20.0f;
  return x;
}

// x̂: x as the kernels see it after activation quantization.
std::vector<float> dequantized_act(TensorType t, const std::vector<float>& x, int64_t m, int64_t k) {
  const ActFormat f = act_format(t);
  std::vector<float> out(x.size());
  std::vector<uint8_t> buf(act_row_bytes(f, k));
  for (int64_t i = 0; i < m; ++i) {
    quantize_act_row(f, x.data() + i * k, buf.data(), k);
    float* o = out.data() + i * k;
    if (f == ActFormat::kF32) {
      std::memcpy(o, buf.data(), sizeof(float) * k);
    } else if (f == ActFormat::kQ8A) {
      const auto* b = reinterpret_cast<const BlockQ8A*>(buf.data());
      for (int64_t j = 0; j < k; ++j) o[j] = b[j / kQK].d * b[j / kQK].qs[j % kQK];
    } else {
      const auto* b = reinterpret_cast<const BlockQ8K*>(buf.data());
      for (int64_t j = 0; j < k; ++j) o[j] = b[j / kQKK].d * b[j / kQKK].qs[j % kQKK];
    }
  }
  return out;
}

// The |min| of each weight's block for Q4_1/Q5_1, 0 otherwise.
double block_min_abs(TensorType t, const uint8_t* row, int64_t i) {
  if (t != TensorType::kQ4_1 && t != TensorType::kQ5_1) return 0.0;
  const size_t bytes = type_traits(t).block_bytes;
  uint16_t h;
  std::memcpy(&h, row + (i / kQK) * bytes + 2, 2);
  return std::fabs(fp16_to_fp32(h));
}

struct Problem {
  TensorType type;
  int64_t m, n, k;
  size_t stride;
  std::vector<uint8_t> w;
  std::vector<float> x;
  std::vector<float> w_deq;  // [n, k]

  Problem(TensorType t, int64_t m_, int64_t n_, int64_t k_, uint64_t seed, size_t pad = 0)
      : type(t), m(m_), n(n_), k(k_), stride(row_bytes(t, k_) + pad),
        w(random_weights(t, n_, k_, stride, seed)), x(random_x(m_, k_, seed + 1)),
        w_deq(static_cast<size_t>(n_ * k_)) {
    for (int64_t r = 0; r < n; ++r) dequantize_row(t, w.data() + r * stride, w_deq.data() + r * k, k);
  }

  std::vector<float> run(ThreadPool& pool, MatmulPath path) const {
    std::vector<float> y(static_cast<size_t>(m * n), std::nanf(""));
    MatmulArgs a;
    a.w_type = type;
    a.w = w.data();
    a.w_row_stride = stride;
    a.n = n;
    a.k = k;
    a.x = x.data();
    a.m = m;
    a.y = y.data();
    matmul(a, pool, path);
    return y;
  }

  // Checks y against both references; returns the number of failures reported.
  int check(const std::vector<float>& y, const std::string& what) const {
    const std::vector<float> xq = dequantized_act(type, x, m, k);
    const TypeTraits& tr = type_traits(type);
    const bool quantized = act_format(type) != ActFormat::kF32;
    const int64_t bs = quantized ? (act_format(type) == ActFormat::kQ8A ? kQK : kQKK) : 1;
    const double terms = quantized ? static_cast<double>(k / tr.block_size) : static_cast<double>(k);
    const double gamma = 4.0 * (terms + 4.0) * std::ldexp(1.0, -24);
    int failures = 0;
    for (int64_t i = 0; i < m; ++i) {
      const float* xi = x.data() + i * k;
      const float* xqi = xq.data() + i * k;
      for (int64_t j = 0; j < n; ++j) {
        const float* wj = w_deq.data() + j * k;
        const uint8_t* raw = w.data() + j * stride;
        double exact = 0, with_xq = 0, s = 0, e_q = 0;
        for (int64_t b = 0; b < k; b += bs) {
          double amax = 0, wsum = 0;
          for (int64_t l = b; l < b + bs; ++l) {
            amax = std::max(amax, std::fabs(static_cast<double>(xi[l])));
            wsum += std::fabs(static_cast<double>(wj[l]));
          }
          if (quantized) e_q += 1.001 * (amax / 127.0 / 2.0) * wsum;
        }
        for (int64_t l = 0; l < k; ++l) {
          exact += static_cast<double>(wj[l]) * xi[l];
          with_xq += static_cast<double>(wj[l]) * xqi[l];
          s += (std::fabs(static_cast<double>(wj[l])) + block_min_abs(type, raw, l)) *
               std::max(std::fabs(static_cast<double>(xi[l])), std::fabs(static_cast<double>(xqi[l])));
        }
        const double got = y[static_cast<size_t>(i * n + j)];
        const double e_f = gamma * s + 1e-30;
        const bool ok_exact = std::fabs(got - exact) <= e_q + e_f;
        const bool ok_q = std::fabs(got - with_xq) <= e_f;
        if ((!ok_exact || !ok_q) && failures++ < 5) {
          ADD_FAILURE() << what << " " << type_name(type) << " m=" << m << " n=" << n << " k=" << k
                        << " y[" << i << "," << j << "]=" << got << " exact=" << exact
                        << " (tol " << e_q + e_f << ") with quantized x=" << with_xq << " (tol "
                        << e_f << ")";
        }
      }
    }
    return failures;
  }
};

std::vector<MatmulPath> paths() {
  std::vector<MatmulPath> p = {MatmulPath::kScalar};
  if (cpu_has_avx2()) p.push_back(MatmulPath::kAvx2);
  if (cpu_has_avx512_vnni()) p.push_back(MatmulPath::kAvx512Vnni);
  return p;
}

const char* path_name(MatmulPath p) {
  switch (p) {
    case MatmulPath::kScalar: return "scalar";
    case MatmulPath::kAvx2: return "avx2";
    case MatmulPath::kAvx512Vnni: return "avx512vnni";
    default: return "auto";
  }
}

class MatmulTypes : public ::testing::TestWithParam<TensorType> {};

TEST_P(MatmulTypes, MatchesReferenceOnOddShapes) {
  const TensorType t = GetParam();
  const int64_t bs = type_traits(t).block_size;
  std::vector<int64_t> ks = {bs, 3 * bs};
  if (bs == 1) ks.insert(ks.end(), {8, 16, 37, 300});
  if (bs == kQK) ks.push_back(18 * bs);  // the default model's hidden size
  ThreadPool pool(3);
  uint64_t seed = 100;
  for (int64_t m : {1, 3, 7, 33}) {
    for (int64_t n : {1, 5, 67}) {
      for (int64_t k : ks) {
        const Problem p(t, m, n, k, ++seed);
        for (MatmulPath path : paths()) {
          ASSERT_EQ(p.check(p.run(pool, path), path_name(path)), 0);
        }
      }
    }
  }
}

TEST_P(MatmulTypes, PaddedRowStride) {
  const TensorType t = GetParam();
  const Problem p(t, 5, 19, 2 * type_traits(t).block_size, 7, /*pad=*/6);
  ThreadPool pool(2);
  for (MatmulPath path : paths()) EXPECT_EQ(p.check(p.run(pool, path), path_name(path)), 0);
}

TEST_P(MatmulTypes, ScalarAndAvx2Agree) {
  if (!cpu_has_avx2()) GTEST_SKIP() << "CPU has no AVX2/FMA/F16C: only the scalar path exists";
  const TensorType t = GetParam();
  const int64_t bs = type_traits(t).block_size;
  const Problem p(t, 9, 53, bs == 1 ? 203 : 4 * bs, 11);
  ThreadPool pool(2);
  const std::vector<float> ys = p.run(pool, MatmulPath::kScalar);
  const std::vector<float> ya = p.run(pool, MatmulPath::kAvx2);
  // Both are within E_f of Σ w·x̂ (checked above), so of each other within 2·E_f; here a
  // relative bound of the same order keeps the message simple.
  double max_rel = 0;
  for (size_t i = 0; i < ys.size(); ++i) {
    const double scale = std::max(1e-6, std::fabs(static_cast<double>(ys[i])));
    max_rel = std::max(max_rel, std::fabs(static_cast<double>(ys[i]) - ya[i]) / scale);
  }
  EXPECT_EQ(p.check(ys, "scalar"), 0);
  EXPECT_EQ(p.check(ya, "avx2"), 0);
  EXPECT_LT(max_rel, 1e-3) << type_name(t);
}

TEST_P(MatmulTypes, ThreadCountsGiveIdenticalBits) {
  const TensorType t = GetParam();
  const Problem p(t, 6, 133, 2 * type_traits(t).block_size, 21);
  for (MatmulPath path : paths()) {
    ThreadPool p1(1), p2(2), p3(3);
    const std::vector<float> y1 = p.run(p1, path);
    const std::vector<float> y2 = p.run(p2, path);
    const std::vector<float> y3 = p.run(p3, path);
    EXPECT_EQ(std::memcmp(y1.data(), y2.data(), y1.size() * 4), 0) << path_name(path);
    EXPECT_EQ(std::memcmp(y1.data(), y3.data(), y1.size() * 4), 0) << path_name(path);
    EXPECT_EQ(std::memcmp(y1.data(), p.run(p3, path).data(), y1.size() * 4), 0) << "repeat";
  }
}

TEST_P(MatmulTypes, RowsDoNotDependOnBatch) {
  // A row of x gives the same bits alone as inside a batch of 7 (kernels take x rows in
  // groups of 4, and the group position must not matter).
  const TensorType t = GetParam();
  const Problem p(t, 7, 23, 2 * type_traits(t).block_size, 31);
  ThreadPool pool(2);
  for (MatmulPath path : paths()) {
    const std::vector<float> batch = p.run(pool, path);
    for (int64_t i = 0; i < p.m; ++i) {
      std::vector<float> y(static_cast<size_t>(p.n));
      MatmulArgs a;
      a.w_type = t;
      a.w = p.w.data();
      a.w_row_stride = p.stride;
      a.n = p.n;
      a.k = p.k;
      a.x = p.x.data() + i * p.k;
      a.m = 1;
      a.y = y.data();
      matmul(a, pool, path);
      EXPECT_EQ(std::memcmp(y.data(), batch.data() + i * p.n, y.size() * 4), 0)
          << path_name(path) << " row " << i;
    }
  }
}

TEST_P(MatmulTypes, VnniMatchesAvx2Bitwise) {
  if (!cpu_has_avx512_vnni()) GTEST_SKIP() << "CPU has no AVX512-VNNI/VL: that path is not built in";
  // Both sum the same exact int32 products in the same order.
  const TensorType t = GetParam();
  const Problem p(t, 9, 37, 3 * type_traits(t).block_size, 41);
  ThreadPool pool(2);
  const std::vector<float> ya = p.run(pool, MatmulPath::kAvx2);
  const std::vector<float> yv = p.run(pool, MatmulPath::kAvx512Vnni);
  EXPECT_EQ(std::memcmp(ya.data(), yv.data(), ya.size() * 4), 0) << type_name(t);
}

TEST(Matmul, AutoPathIsTheBestAvailable) {
  const Problem p(TensorType::kQ4_1, 3, 17, 64, 3);
  ThreadPool pool(1);
  const MatmulPath best = cpu_has_avx512_vnni() ? MatmulPath::kAvx512Vnni
                          : cpu_has_avx2()      ? MatmulPath::kAvx2
                                                : MatmulPath::kScalar;
  const std::vector<float> y_auto = p.run(pool, MatmulPath::kAuto);
  const std::vector<float> y_best = p.run(pool, best);
  EXPECT_EQ(std::memcmp(y_auto.data(), y_best.data(), y_auto.size() * 4), 0) << cpu_matmul_isa();
}

INSTANTIATE_TEST_SUITE_P(AllTypes, MatmulTypes, ::testing::ValuesIn(kAllTypes),
                         [](const auto& info) { return std::string(type_name(info.param)); });

TEST(Matmul, CalledFromInsidePoolChunks) {
  // Each chunk runs a whole matmul on its own thread (nested calls run inline there) and
  // must get the same bits as a plain call.
  const Problem p(TensorType::kQ4_1, 5, 40, 96, 13);
  ThreadPool pool(3);
  const std::vector<float> want = p.run(pool, MatmulPath::kAuto);
  std::vector<std::vector<float>> got(6);
  pool.parallel_for(6, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) got[static_cast<size_t>(i)] = p.run(pool, MatmulPath::kAuto);
  });
  for (const auto& y : got) EXPECT_EQ(std::memcmp(y.data(), want.data(), want.size() * 4), 0);
}

TEST(Matmul, RejectsBadArguments) {
  ThreadPool pool(1);
  std::vector<uint8_t> w(4096);
  std::vector<float> x(256), y(64);
  MatmulArgs a;
  a.w_type = TensorType::kQ4_1;
  a.w = w.data();
  a.w_row_stride = row_bytes(TensorType::kQ4_1, 64);
  a.n = 2;
  a.k = 64;
  a.x = x.data();
  a.m = 1;
  a.y = y.data();
  EXPECT_NO_THROW(matmul(a, pool));
  MatmulArgs bad = a;
  bad.k = 48;  // not a multiple of 32
  EXPECT_THROW(matmul(bad, pool), Error);
  bad = a;
  bad.w_row_stride = 10;  // smaller than a row
  EXPECT_THROW(matmul(bad, pool), Error);
  bad = a;
  bad.w_type = TensorType::kQ8_K;  // activation-only type
  EXPECT_THROW(matmul(bad, pool), Error);
  bad = a;
  bad.x = nullptr;
  EXPECT_THROW(matmul(bad, pool), Error);
  bad = a;
  bad.m = 0;  // empty: nothing to do, no pointer needed
  bad.x = nullptr;
  EXPECT_NO_THROW(matmul(bad, pool));
}

TEST(ActQuant, Avx2QuantizerIsBitIdentical) {
  if (!cpu_has_avx2()) GTEST_SKIP() << "CPU has no AVX2/FMA/F16C";
  const int64_t k = 1024;
  std::vector<float> x = random_x(1, k, 9);
  // Ties (x·(1/d) = n + 0.5 exactly when max|x| = 127), zeros and a zero block.
  for (int64_t i = 0; i < 32; ++i) x[static_cast<size_t>(i)] = static_cast<float>(i) - 15.5f;
  x[0] = 127.0f;
  for (int64_t i = 256; i < 288; ++i) x[static_cast<size_t>(i)] = 0.0f;
  for (ActFormat f : {ActFormat::kQ8A, ActFormat::kQ8K}) {
    std::vector<uint8_t> a(act_row_bytes(f, k)), b(act_row_bytes(f, k));
    quantize_act_row(f, x.data(), a.data(), k);
    avx2_quantize_act_row(f, x.data(), b.data(), k);
    EXPECT_EQ(std::memcmp(a.data(), b.data(), a.size()), 0);
  }
}

TEST(ActQuant, RoundingErrorWithinHalfStep) {
  const int64_t k = 512;
  const std::vector<float> x = random_x(1, k, 5);
  for (TensorType t : {TensorType::kQ8_0, TensorType::kQ6_K}) {
    const ActFormat f = act_format(t);
    const int64_t bs = f == ActFormat::kQ8A ? kQK : kQKK;
    const std::vector<float> xq = dequantized_act(t, x, 1, k);
    std::vector<uint8_t> buf(act_row_bytes(f, k));
    quantize_act_row(f, x.data(), buf.data(), k);
    for (int64_t b = 0; b < k; b += bs) {
      float amax = 0;
      for (int64_t i = b; i < b + bs; ++i) amax = std::max(amax, std::fabs(x[i]));
      const float d = amax / 127.0f;
      for (int64_t i = b; i < b + bs; ++i) {
        ASSERT_LE(std::fabs(x[i] - xq[i]), 0.5001f * d) << "element " << i;
      }
      if (f == ActFormat::kQ8A) {
        const auto& blk = reinterpret_cast<const BlockQ8A*>(buf.data())[b / bs];
        int sum = 0;
        for (int i = 0; i < kQK; ++i) sum += blk.qs[i];
        EXPECT_EQ(blk.s, blk.d * static_cast<float>(sum));
      } else {
        const auto& blk = reinterpret_cast<const BlockQ8K*>(buf.data())[b / bs];
        for (int j = 0; j < 16; ++j) {
          int sum = 0;
          for (int i = 0; i < 16; ++i) sum += blk.qs[16 * j + i];
          EXPECT_EQ(blk.bsums[j], sum);
        }
      }
    }
  }
  // An all-zero block quantizes to zeros with a zero scale (no division by zero).
  std::vector<float> zeros(kQK, 0.0f);
  BlockQ8A blk;
  quantize_act_row(ActFormat::kQ8A, zeros.data(), &blk, kQK);
  EXPECT_EQ(blk.d, 0.0f);
  EXPECT_EQ(blk.s, 0.0f);
  for (int i = 0; i < kQK; ++i) EXPECT_EQ(blk.qs[i], 0);
}

}  // namespace
}  // namespace tpnode::cpu
