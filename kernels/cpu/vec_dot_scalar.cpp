// Portable kernels for every weight type: integer dot products per block (as ggml's
// reference ggml_vec_dot_*), one float accumulator per x row, blocks in order.
#include <cstring>

#include "kernels/cpu/gemm_tile.h"
#include "kernels/cpu/quants.h"
#include "kernels/cpu/vec_dot.h"
#include "node/common/error.h"

namespace tpnode::cpu {
namespace {

template <int NX>
void act_rows(const uint8_t* const* x, const BlockQ8A** out) {
  for (int q = 0; q < NX; ++q) out[q] = reinterpret_cast<const BlockQ8A*>(x[q]);
}

template <int NX>
void act_rows(const uint8_t* const* x, const BlockQ8K** out) {
  for (int q = 0; q < NX; ++q) out[q] = reinterpret_cast<const BlockQ8K*>(x[q]);
}

inline uint32_t load_u32(const uint8_t* p) {
  uint32_t v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

// Unpacks the 32 quant values of a 32-block into q[0..31], offset already applied.
inline void unpack_q4_0(const BlockQ4_0& b, int8_t* q) {
  for (int j = 0; j < kQK / 2; ++j) {
    q[j] = static_cast<int8_t>((b.qs[j] & 0x0F) - 8);
    q[j + kQK / 2] = static_cast<int8_t>((b.qs[j] >> 4) - 8);
  }
}
inline void unpack_q4_1(const BlockQ4_1& b, int8_t* q) {
  for (int j = 0; j < kQK / 2; ++j) {
    q[j] = static_cast<int8_t>(b.qs[j] & 0x0F);
    q[j + kQK / 2] = static_cast<int8_t>(b.qs[j] >> 4);
  }
}
inline void unpack_q5(const uint8_t* qs, const uint8_t* qh_bytes, int offset, int8_t* q) {
  const uint32_t qh = load_u32(qh_bytes);
  for (int j = 0; j < kQK / 2; ++j) {
    q[j] = static_cast<int8_t>(((qs[j] & 0x0F) | (((qh >> j) & 1u) << 4)) - offset);
    q[j + kQK / 2] = static_cast<int8_t>(((qs[j] >> 4) | (((qh >> (j + 16)) & 1u) << 4)) - offset);
  }
}

inline int dot32(const int8_t* a, const int8_t* b) {
  int s = 0;
  for (int i = 0; i < kQK; ++i) s += a[i] * b[i];
  return s;
}

// The 32-block types: y = Σ_b d_w·d_x·Σ q_w q_x (+ m_w·s_x for the types with a min).
template <class Block, bool kHasMin, void (*Unpack)(const Block&, int8_t*)>
struct Dot32 {
  template <int NX>
  static void run(int64_t k, const uint8_t* w_row, const uint8_t* const* x_rows, float* out) {
    const auto* w = reinterpret_cast<const Block*>(w_row);
    const BlockQ8A* x[NX];
    act_rows<NX>(x_rows, x);
    float acc[NX] = {};
    int8_t q[kQK];
    for (int64_t b = 0; b < k / kQK; ++b) {
      Unpack(w[b], q);
      const float dw = fp16_to_fp32(w[b].d);
      for (int r = 0; r < NX; ++r) {
        const int isum = dot32(q, x[r][b].qs);
        acc[r] += dw * x[r][b].d * static_cast<float>(isum);
        if constexpr (kHasMin) acc[r] += fp16_to_fp32(w[b].m) * x[r][b].s;
      }
    }
    for (int r = 0; r < NX; ++r) out[r] = acc[r];
  }
};

inline void unpack_q5_0(const BlockQ5_0& b, int8_t* q) { unpack_q5(b.qs, b.qh, 16, q); }
inline void unpack_q5_1(const BlockQ5_1& b, int8_t* q) { unpack_q5(b.qs, b.qh, 0, q); }
inline void unpack_q8_0(const BlockQ8_0& b, int8_t* q) { std::memcpy(q, b.qs, kQK); }

using DotQ4_0 = Dot32<BlockQ4_0, false, unpack_q4_0>;
using DotQ4_1 = Dot32<BlockQ4_1, true, unpack_q4_1>;
using DotQ5_0 = Dot32<BlockQ5_0, false, unpack_q5_0>;
using DotQ5_1 = Dot32<BlockQ5_1, true, unpack_q5_1>;
using DotQ8_0 = Dot32<BlockQ8_0, false, unpack_q8_0>;

// Q4_K / Q5_K: y = Σ_b d·d_x·Σ_j sc_j Σ q·q_x − dmin·d_x·Σ_j m_j·(bsum_2j + bsum_2j+1).
template <class Block, bool kFive>
struct DotK45 {
  template <int NX>
  static void run(int64_t k, const uint8_t* w_row, const uint8_t* const* x_rows, float* out) {
    const auto* w = reinterpret_cast<const Block*>(w_row);
    const BlockQ8K* x[NX];
    act_rows<NX>(x_rows, x);
    float acc[NX] = {};
    int8_t q[kQKK];
    for (int64_t b = 0; b < k / kQKK; ++b) {
      for (int s = 0; s < 8; ++s) {
        const uint8_t* ql = w[b].qs + 32 * (s / 2);
        const int shift = 4 * (s % 2);
        for (int l = 0; l < 32; ++l) {
          int v = (ql[l] >> shift) & 0x0F;
          if constexpr (kFive) v |= ((w[b].qh[l] >> s) & 1) << 4;
          q[32 * s + l] = static_cast<int8_t>(v);
        }
      }
      uint8_t sc[8], mn[8];
      for (int s = 0; s < 8; ++s) unpack_scale_min_k4(w[b].scales, s, &sc[s], &mn[s]);
      const float d = fp16_to_fp32(w[b].d);
      const float dmin = fp16_to_fp32(w[b].dmin);
      for (int r = 0; r < NX; ++r) {
        const BlockQ8K& xb = x[r][b];
        int sumi = 0, summ = 0;
        for (int s = 0; s < 8; ++s) {
          sumi += sc[s] * dot32(q + 32 * s, xb.qs + 32 * s);
          summ += mn[s] * (xb.bsums[2 * s] + xb.bsums[2 * s + 1]);
        }
        acc[r] += d * xb.d * static_cast<float>(sumi);
        acc[r] -= dmin * xb.d * static_cast<float>(summ);
      }
    }
    for (int r = 0; r < NX; ++r) out[r] = acc[r];
  }
};

using DotQ4_K = DotK45<BlockQ4_K, false>;
using DotQ5_K = DotK45<BlockQ5_K, true>;

// Q6_K: y = Σ_b d·d_x·Σ_j scale_j Σ_16 (q − 32)·q_x.
struct DotQ6_K {
  template <int NX>
  static void run(int64_t k, const uint8_t* w_row, const uint8_t* const* x_rows, float* out) {
    const auto* w = reinterpret_cast<const BlockQ6_K*>(w_row);
    const BlockQ8K* x[NX];
    act_rows<NX>(x_rows, x);
    float acc[NX] = {};
    int8_t q[kQKK];
    for (int64_t b = 0; b < k / kQKK; ++b) {
      for (int h = 0; h < 2; ++h) {
        const uint8_t* ql = w[b].ql + 64 * h;
        const uint8_t* qh = w[b].qh + 32 * h;
        for (int s = 0; s < 4; ++s) {
          const uint8_t* qls = ql + 32 * (s % 2);
          const int lshift = 4 * (s / 2);
          for (int l = 0; l < 32; ++l) {
            const int v = ((qls[l] >> lshift) & 0x0F) | (((qh[l] >> (2 * s)) & 3) << 4);
            q[128 * h + 32 * s + l] = static_cast<int8_t>(v - 32);
          }
        }
      }
      const float d = fp16_to_fp32(w[b].d);
      for (int r = 0; r < NX; ++r) {
        const BlockQ8K& xb = x[r][b];
        int sumi = 0;
        for (int j = 0; j < kQKK / 16; ++j) {
          int s16 = 0;
          for (int l = 0; l < 16; ++l) s16 += q[16 * j + l] * xb.qs[16 * j + l];
          sumi += w[b].scales[j] * s16;
        }
        acc[r] += d * xb.d * static_cast<float>(sumi);
      }
    }
    for (int r = 0; r < NX; ++r) out[r] = acc[r];
  }
};

// Float weights against float x.
template <float (*Load)(const uint8_t*, int64_t)>
struct DotFloat {
  template <int NX>
  static void run(int64_t k, const uint8_t* w_row, const uint8_t* const* x_rows, float* out) {
    const float* x[NX];
    for (int r = 0; r < NX; ++r) x[r] = reinterpret_cast<const float*>(x_rows[r]);
    float acc[NX] = {};
    for (int64_t i = 0; i < k; ++i) {
      const float wv = Load(w_row, i);
      for (int r = 0; r < NX; ++r) acc[r] += wv * x[r][i];
    }
    for (int r = 0; r < NX; ++r) out[r] = acc[r];
  }
};

inline float load_f32(const uint8_t* p, int64_t i) {
  float v;
  std::memcpy(&v, p + 4 * i, sizeof v);
  return v;
}
inline float load_f16_elem(const uint8_t* p, int64_t i) { return fp16_to_fp32(load_f16(p + 2 * i)); }
inline float load_bf16_elem(const uint8_t* p, int64_t i) { return bf16_to_fp32(load_f16(p + 2 * i)); }

}  // namespace

GemmRowsFn scalar_gemm_rows(TensorType w_type) {
  switch (w_type) {
    case TensorType::kF32: return gemm_rows<DotFloat<load_f32>>;
    case TensorType::kF16: return gemm_rows<DotFloat<load_f16_elem>>;
    case TensorType::kBF16: return gemm_rows<DotFloat<load_bf16_elem>>;
    case TensorType::kQ4_0: return gemm_rows<DotQ4_0>;
    case TensorType::kQ4_1: return gemm_rows<DotQ4_1>;
    case TensorType::kQ5_0: return gemm_rows<DotQ5_0>;
    case TensorType::kQ5_1: return gemm_rows<DotQ5_1>;
    case TensorType::kQ8_0: return gemm_rows<DotQ8_0>;
    case TensorType::kQ4_K: return gemm_rows<DotQ4_K>;
    case TensorType::kQ5_K: return gemm_rows<DotQ5_K>;
    case TensorType::kQ6_K: return gemm_rows<DotQ6_K>;
    default: break;
  }
  TPNODE_THROW(ErrorKind::kUnsupported, "matmul: no CPU kernel for weight type {}",
               static_cast<uint32_t>(w_type));
}

}  // namespace tpnode::cpu
