// The x86 SIMD kernel bodies, shared by the files that build them for one ISA each
// (vec_dot_avx2.cpp: AVX2/FMA; vec_dot_vnni_avx2.cpp: the same plus AVX512-VNNI/VL). The
// including file defines, before including this,
//   __m256i dot_u8_i8(__m256i u, __m256i s)  // Σ of 4 adjacent u8·i8 products, 8 int32 lanes
// and gets x86_gemm_rows(). Same integer sums per block as the scalar kernels; blocks are
// summed in 8 float lanes, so results differ from the scalar path only by float rounding.
// Everything here has internal linkage, and no standard-library function is called, so no
// inline library code is emitted with these ISA flags for the linker to share elsewhere.
// Include only from *_avx2.cpp files.
#pragma once

#include <immintrin.h>

#include <cstddef>
#include <cstring>

#include "kernels/cpu/gemm_tile.h"
#include "kernels/cpu/quants.h"
#include "kernels/cpu/vec_dot.h"

namespace tpnode::cpu {
namespace {

inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

inline float f16(f16_t h) { return _cvtsh_ss(h); }

inline __m256i load256(const void* p) { return _mm256_loadu_si256(static_cast<const __m256i*>(p)); }

// 16 bytes of nibbles -> 32 bytes: bytes 0..15 the low nibbles, 16..31 the high ones
// (the element order of the 32-block types).
inline __m256i unpack_nibbles(const uint8_t* p) {
  const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  const __m256i both = _mm256_set_m128i(_mm_srli_epi16(raw, 4), raw);
  return _mm256_and_si256(both, _mm256_set1_epi8(0x0F));
}

// 32 bits -> 32 bytes, 0xFF where the bit is set.
inline __m256i bits_to_bytes(const uint8_t* p) {
  uint32_t bits;
  std::memcpy(&bits, p, sizeof bits);
  const __m256i shuffle = _mm256_set_epi64x(0x0303030303030303, 0x0202020202020202,
                                            0x0101010101010101, 0x0000000000000000);
  __m256i bytes = _mm256_shuffle_epi8(_mm256_set1_epi32(static_cast<int>(bits)), shuffle);
  bytes = _mm256_or_si256(bytes, _mm256_set1_epi64x(0x7FBFDFEFF7FBFDFE));
  return _mm256_cmpeq_epi8(bytes, _mm256_set1_epi64x(-1));
}

// ---------------------------------------------------------------------------------------
// 32-block weights against BlockQ8A. Load gives the block's 32 values as bytes: unsigned
// (0..31) when kSigned is false, signed otherwise.

struct LoadQ4_0 {
  static __m256i load(const BlockQ4_0& b) { return _mm256_sub_epi8(unpack_nibbles(b.qs), _mm256_set1_epi8(8)); }
};
struct LoadQ4_1 {
  static __m256i load(const BlockQ4_1& b) { return unpack_nibbles(b.qs); }
};
struct LoadQ5_0 {
  // q - 16 as a signed byte: the nibble where the fifth bit is set, nibble | 0xF0 where not.
  static __m256i load(const BlockQ5_0& b) {
    const __m256i high = _mm256_andnot_si256(bits_to_bytes(b.qh), _mm256_set1_epi8(static_cast<char>(0xF0)));
    return _mm256_or_si256(unpack_nibbles(b.qs), high);
  }
};
struct LoadQ5_1 {
  static __m256i load(const BlockQ5_1& b) {
    const __m256i high = _mm256_and_si256(bits_to_bytes(b.qh), _mm256_set1_epi8(0x10));
    return _mm256_or_si256(unpack_nibbles(b.qs), high);
  }
};
struct LoadQ8_0 {
  static __m256i load(const BlockQ8_0& b) { return load256(b.qs); }
};

template <class Block, bool kSigned, bool kHasMin, class Load>
struct Dot32 {
  static_assert(offsetof(BlockQ8A, s) == offsetof(BlockQ8A, d) + sizeof(float));

  template <int NX>
  static void run(int64_t k, const uint8_t* w_row, const uint8_t* const* x_rows, float* out) {
    const auto* w = reinterpret_cast<const Block*>(w_row);
    const BlockQ8A* x[NX];
    __m256 acc[NX];
    __m128 summ[NX];
    for (int r = 0; r < NX; ++r) {
      x[r] = reinterpret_cast<const BlockQ8A*>(x_rows[r]);
      acc[r] = _mm256_setzero_ps();
      summ[r] = _mm_setzero_ps();
    }
    for (int64_t b = 0; b < k / kQK; ++b) {
      const __m256i qw = Load::load(w[b]);
      // Signed weights: |w| as the unsigned operand, the sign moved onto x.
      const __m256i uw = kSigned ? _mm256_sign_epi8(qw, qw) : qw;
      // Lanes [d_w, m_w] from the block's first 4 bytes (lane 1 is meaningless without a min).
      uint32_t head;
      std::memcpy(&head, &w[b], sizeof head);
      const __m128 dm = _mm_cvtph_ps(_mm_cvtsi32_si128(static_cast<int>(head)));
      for (int r = 0; r < NX; ++r) {
        const __m256i qx = load256(x[r][b].qs);
        const __m256i p = dot_u8_i8(uw, kSigned ? _mm256_sign_epi8(qx, qw) : qx);
        // [d_w·d_x, m_w·s_x] in one multiply.
        const __m128 ds = _mm_castpd_ps(_mm_load_sd(reinterpret_cast<const double*>(&x[r][b].d)));
        const __m128 prod = _mm_mul_ps(dm, ds);
        acc[r] = _mm256_fmadd_ps(_mm256_broadcastss_ps(prod), _mm256_cvtepi32_ps(p), acc[r]);
        if constexpr (kHasMin) summ[r] = _mm_add_ps(summ[r], prod);
      }
    }
    for (int r = 0; r < NX; ++r) {
      out[r] = hsum(acc[r]);
      if constexpr (kHasMin) out[r] += _mm_cvtss_f32(_mm_movehdup_ps(summ[r]));
    }
  }
};

using DotQ4_0 = Dot32<BlockQ4_0, true, false, LoadQ4_0>;
using DotQ4_1 = Dot32<BlockQ4_1, false, true, LoadQ4_1>;
using DotQ5_0 = Dot32<BlockQ5_0, true, false, LoadQ5_0>;
using DotQ5_1 = Dot32<BlockQ5_1, false, true, LoadQ5_1>;
using DotQ8_0 = Dot32<BlockQ8_0, true, false, LoadQ8_0>;

// ---------------------------------------------------------------------------------------
// K-quants against BlockQ8K.

template <int NX>
void k_act_rows(const uint8_t* const* x_rows, const BlockQ8K** x) {
  for (int r = 0; r < NX; ++r) x[r] = reinterpret_cast<const BlockQ8K*>(x_rows[r]);
}

// Q4_K / Q5_K: Σ_j sc_j Σ q·q_x in int32 lanes, the min term from the activation bsums.
template <class Block, bool kFive>
struct DotK45 {
  template <int NX>
  static void run(int64_t k, const uint8_t* w_row, const uint8_t* const* x_rows, float* out) {
    const auto* w = reinterpret_cast<const Block*>(w_row);
    const BlockQ8K* x[NX];
    k_act_rows<NX>(x_rows, x);
    __m256 acc[NX];
    float summ[NX];
    for (int r = 0; r < NX; ++r) {
      acc[r] = _mm256_setzero_ps();
      summ[r] = 0.0f;
    }
    const __m256i m4 = _mm256_set1_epi8(0x0F);
    for (int64_t b = 0; b < k / kQKK; ++b) {
      const Block& wb = w[b];
      uint8_t sc[8], mn[8];
      for (int s = 0; s < 8; ++s) unpack_scale_min_k4(wb.scales, s, &sc[s], &mn[s]);
      __m256i sumi[NX];
      for (int r = 0; r < NX; ++r) sumi[r] = _mm256_setzero_si256();
      __m256i hbits = _mm256_setzero_si256();
      if constexpr (kFive) hbits = load256(wb.qh);
      for (int c = 0; c < 4; ++c) {
        const __m256i raw = load256(wb.qs + 32 * c);
        __m256i lo = _mm256_and_si256(raw, m4);
        __m256i hi = _mm256_and_si256(_mm256_srli_epi16(raw, 4), m4);
        if constexpr (kFive) {
          const __m256i bit_lo = _mm256_set1_epi8(static_cast<char>(1 << (2 * c)));
          const __m256i bit_hi = _mm256_set1_epi8(static_cast<char>(1 << (2 * c + 1)));
          const __m256i sixteen = _mm256_set1_epi8(0x10);
          lo = _mm256_or_si256(lo, _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(hbits, bit_lo), bit_lo), sixteen));
          hi = _mm256_or_si256(hi, _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(hbits, bit_hi), bit_hi), sixteen));
        }
        const __m256i s_lo = _mm256_set1_epi16(sc[2 * c]);
        const __m256i s_hi = _mm256_set1_epi16(sc[2 * c + 1]);
        for (int r = 0; r < NX; ++r) {
          const int8_t* xq = x[r][b].qs + 64 * c;
          const __m256i p_lo = _mm256_madd_epi16(_mm256_maddubs_epi16(lo, load256(xq)), s_lo);
          const __m256i p_hi = _mm256_madd_epi16(_mm256_maddubs_epi16(hi, load256(xq + 32)), s_hi);
          sumi[r] = _mm256_add_epi32(sumi[r], _mm256_add_epi32(p_lo, p_hi));
        }
      }
      const float d = f16(wb.d);
      const float dmin = f16(wb.dmin);
      for (int r = 0; r < NX; ++r) {
        const BlockQ8K& xb = x[r][b];
        int mins = 0;
        for (int s = 0; s < 8; ++s) mins += mn[s] * (xb.bsums[2 * s] + xb.bsums[2 * s + 1]);
        acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(d * xb.d), _mm256_cvtepi32_ps(sumi[r]), acc[r]);
        summ[r] += dmin * xb.d * static_cast<float>(mins);
      }
    }
    for (int r = 0; r < NX; ++r) out[r] = hsum(acc[r]) - summ[r];
  }
};

using DotQ4_K = DotK45<BlockQ4_K, false>;
using DotQ5_K = DotK45<BlockQ5_K, true>;

// Q6_K: q in 0..63 dotted unsigned, then 32·Σ scale_j·bsum_j taken off in the same lanes.
struct DotQ6_K {
  template <int NX>
  static void run(int64_t k, const uint8_t* w_row, const uint8_t* const* x_rows, float* out) {
    const auto* w = reinterpret_cast<const BlockQ6_K*>(w_row);
    const BlockQ8K* x[NX];
    k_act_rows<NX>(x_rows, x);
    __m256 acc[NX];
    for (int r = 0; r < NX; ++r) acc[r] = _mm256_setzero_ps();
    const __m256i m4 = _mm256_set1_epi8(0x0F);
    const __m256i m2 = _mm256_set1_epi8(0x30);
    for (int64_t b = 0; b < k / kQKK; ++b) {
      const BlockQ6_K& wb = w[b];
      // int16 scales, one per 16 elements.
      const __m256i scales16 = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(wb.scales)));
      __m256i sumi[NX];
      for (int r = 0; r < NX; ++r) {
        // 32·Σ_j scale_j·bsum_j, in the lanes the products below land in (summed at the end).
        const __m256i bsums = load256(x[r][b].bsums);
        sumi[r] = _mm256_sub_epi32(_mm256_setzero_si256(),
                                   _mm256_slli_epi32(_mm256_madd_epi16(bsums, scales16), 5));
      }
      for (int h = 0; h < 2; ++h) {
        const __m256i ql0 = load256(wb.ql + 64 * h);
        const __m256i ql1 = load256(wb.ql + 64 * h + 32);
        const __m256i qh = load256(wb.qh + 32 * h);
        __m256i q[4];
        q[0] = _mm256_or_si256(_mm256_and_si256(ql0, m4), _mm256_and_si256(_mm256_slli_epi16(qh, 4), m2));
        q[1] = _mm256_or_si256(_mm256_and_si256(ql1, m4), _mm256_and_si256(_mm256_slli_epi16(qh, 2), m2));
        q[2] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql0, 4), m4), _mm256_and_si256(qh, m2));
        q[3] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql1, 4), m4),
                               _mm256_and_si256(_mm256_srli_epi16(qh, 2), m2));
        for (int s = 0; s < 4; ++s) {
          // Elements 0..15 of the sub-block use scale 8h+2s (low lanes), 16..31 the next.
          const int j = 8 * h + 2 * s;
          const __m256i sc = _mm256_set_m128i(_mm_set1_epi16(wb.scales[j + 1]), _mm_set1_epi16(wb.scales[j]));
          for (int r = 0; r < NX; ++r) {
            const __m256i p = _mm256_maddubs_epi16(q[s], load256(x[r][b].qs + 128 * h + 32 * s));
            sumi[r] = _mm256_add_epi32(sumi[r], _mm256_madd_epi16(p, sc));
          }
        }
      }
      const float d = f16(wb.d);
      for (int r = 0; r < NX; ++r) {
        acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(d * x[r][b].d), _mm256_cvtepi32_ps(sumi[r]), acc[r]);
      }
    }
    for (int r = 0; r < NX; ++r) out[r] = hsum(acc[r]);
  }
};

// ---------------------------------------------------------------------------------------
// Float weights against float x: two 8-lane accumulators per x row, a scalar tail.

struct LoadF32 {
  static __m256 load8(const uint8_t* p, int64_t i) { return _mm256_loadu_ps(reinterpret_cast<const float*>(p) + i); }
  static float load1(const uint8_t* p, int64_t i) {
    float v;
    std::memcpy(&v, p + 4 * i, sizeof v);
    return v;
  }
};
struct LoadF16 {
  static __m256 load8(const uint8_t* p, int64_t i) {
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 2 * i)));
  }
  static float load1(const uint8_t* p, int64_t i) { return f16(load_f16(p + 2 * i)); }
};
struct LoadBF16 {
  static __m256 load8(const uint8_t* p, int64_t i) {
    const __m256i wide = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 2 * i)));
    return _mm256_castsi256_ps(_mm256_slli_epi32(wide, 16));
  }
  static float load1(const uint8_t* p, int64_t i) { return bf16_to_fp32(load_f16(p + 2 * i)); }
};

template <class L>
struct DotFloat {
  template <int NX>
  static void run(int64_t k, const uint8_t* w, const uint8_t* const* x_rows, float* out) {
    const float* x[NX];
    __m256 acc0[NX], acc1[NX];
    for (int r = 0; r < NX; ++r) {
      x[r] = reinterpret_cast<const float*>(x_rows[r]);
      acc0[r] = _mm256_setzero_ps();
      acc1[r] = _mm256_setzero_ps();
    }
    int64_t i = 0;
    for (; i + 16 <= k; i += 16) {
      const __m256 w0 = L::load8(w, i);
      const __m256 w1 = L::load8(w, i + 8);
      for (int r = 0; r < NX; ++r) {
        acc0[r] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(x[r] + i), acc0[r]);
        acc1[r] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(x[r] + i + 8), acc1[r]);
      }
    }
    if (i + 8 <= k) {
      const __m256 w0 = L::load8(w, i);
      for (int r = 0; r < NX; ++r) acc0[r] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(x[r] + i), acc0[r]);
      i += 8;
    }
    float tail[NX] = {};
    for (; i < k; ++i) {
      const float wv = L::load1(w, i);
      for (int r = 0; r < NX; ++r) tail[r] += wv * x[r][i];
    }
    for (int r = 0; r < NX; ++r) out[r] = hsum(_mm256_add_ps(acc0[r], acc1[r])) + tail[r];
  }
};

GemmRowsFn x86_gemm_rows(TensorType w_type) {
  switch (w_type) {
    case TensorType::kF32: return gemm_rows<DotFloat<LoadF32>>;
    case TensorType::kF16: return gemm_rows<DotFloat<LoadF16>>;
    case TensorType::kBF16: return gemm_rows<DotFloat<LoadBF16>>;
    case TensorType::kQ4_0: return gemm_rows<DotQ4_0>;
    case TensorType::kQ4_1: return gemm_rows<DotQ4_1>;
    case TensorType::kQ5_0: return gemm_rows<DotQ5_0>;
    case TensorType::kQ5_1: return gemm_rows<DotQ5_1>;
    case TensorType::kQ8_0: return gemm_rows<DotQ8_0>;
    case TensorType::kQ4_K: return gemm_rows<DotQ4_K>;
    case TensorType::kQ5_K: return gemm_rows<DotQ5_K>;
    case TensorType::kQ6_K: return gemm_rows<DotQ6_K>;
    default: return nullptr;
  }
}

}  // namespace
}  // namespace tpnode::cpu
