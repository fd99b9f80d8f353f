// AVX2/FMA kernels: built with -mavx2 -mfma -mf16c, called only after a run-time CPU check.
#include <immintrin.h>

#include "kernels/cpu/quants.h"
#include "kernels/cpu/vec_dot.h"

namespace tpnode::cpu {
namespace {

// Unsigned bytes u times signed bytes s, summed in fours: 8 int32 (the int16 pair sums of
// maddubs cannot saturate for our operands: |u| ≤ 128 against |s| ≤ 127, or u ≤ 63).
inline __m256i dot_u8_i8(__m256i u, __m256i s) {
  return _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1));
}

}  // namespace
}  // namespace tpnode::cpu

#include "kernels/cpu/vec_dot_x86.h"

namespace tpnode::cpu {
namespace {

inline int hsum_i32(__m256i v) {
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  s = _mm_add_epi32(s, _mm_unpackhi_epi64(s, s));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 1));
  return _mm_cvtsi128_si32(s);
}

// Quantizes n (a multiple of 32) values the way quantize.cpp does, bit for bit: the same
// scale, round-to-nearest-even of x·(1/d) (cvtps2dq in the default rounding mode), the same
// clamp. Writes q and the int32 sum of every 16 values to sums16.
float quantize_block(const float* x, int8_t* q, int n, int* sums16) {
  const __m256 sign = _mm256_set1_ps(-0.0f);
  __m256 vmax = _mm256_setzero_ps();
  for (int i = 0; i < n; i += 8) vmax = _mm256_max_ps(vmax, _mm256_andnot_ps(sign, _mm256_loadu_ps(x + i)));
  __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(vmax), _mm256_extractf128_ps(vmax, 1));
  m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
  m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
  const float amax = _mm_cvtss_f32(m4);
  const float d = amax / 127.0f;
  const __m256 id = _mm256_set1_ps(d != 0.0f ? 1.0f / d : 0.0f);
  const __m256i lo = _mm256_set1_epi32(-127), hi = _mm256_set1_epi32(127);
  const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
  for (int i = 0; i < n; i += 32) {
    __m256i r[4];
    for (int j = 0; j < 4; ++j) {
      const __m256i v = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + i + 8 * j), id));
      r[j] = _mm256_max_epi32(_mm256_min_epi32(v, hi), lo);
    }
    sums16[i / 16] = hsum_i32(_mm256_add_epi32(r[0], r[1]));
    sums16[i / 16 + 1] = hsum_i32(_mm256_add_epi32(r[2], r[3]));
    // packs interleave 128-bit halves; the permute restores element order.
    const __m256i q16a = _mm256_packs_epi32(r[0], r[1]);
    const __m256i q16b = _mm256_packs_epi32(r[2], r[3]);
    const __m256i q8 = _mm256_permutevar8x32_epi32(_mm256_packs_epi16(q16a, q16b), order);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(q + i), q8);
  }
  return d;
}

}  // namespace

GemmRowsFn avx2_gemm_rows(TensorType w_type) { return x86_gemm_rows(w_type); }

void avx2_quantize_act_row(ActFormat format, const float* x, void* dst, int64_t k) {
  int sums[kQKK / 16];
  switch (format) {
    case ActFormat::kF32:
      quantize_act_row(format, x, dst, k);
      return;
    case ActFormat::kQ8A: {
      auto* y = static_cast<BlockQ8A*>(dst);
      for (int64_t b = 0; b < k / kQK; ++b, x += kQK) {
        y[b].d = quantize_block(x, y[b].qs, kQK, sums);
        y[b].s = y[b].d * static_cast<float>(sums[0] + sums[1]);
      }
      return;
    }
    case ActFormat::kQ8K: {
      auto* y = static_cast<BlockQ8K*>(dst);
      for (int64_t b = 0; b < k / kQKK; ++b, x += kQKK) {
        y[b].d = quantize_block(x, y[b].qs, kQKK, sums);
        for (int j = 0; j < kQKK / 16; ++j) y[b].bsums[j] = static_cast<int16_t>(sums[j]);
      }
      return;
    }
  }
}

}  // namespace tpnode::cpu
