// Device-side readers of the split layout (quant_layout.h), one policy per weight type:
//   dot_part: one GEMV work item (a slice of a block) against 8-bit activations, with
//             integer dot products (dp4a);
//   dequant_chunk: 32 consecutive values of a block as floats (embedding, GEMM staging).
// Activations are quantized in chunks of 32: xq int8 values, xd the chunk's scale, xs the
// chunk's xd * sum(xq) (for the types with a min term).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>

#include "node/model/tensor_type.h"

namespace tpnode::cuda::quant {

__device__ __forceinline__ float ld_half(const uint8_t* p) {
  return __half2float(*reinterpret_cast<const __half*>(p));
}
__device__ __forceinline__ int ld_i32(const uint8_t* p) { return *reinterpret_cast<const int*>(p); }
__device__ __forceinline__ int4 ld_i128(const void* p) { return *reinterpret_cast<const int4*>(p); }
__device__ __forceinline__ int nib_lo(int w) { return w & 0x0F0F0F0F; }
__device__ __forceinline__ int nib_hi(int w) { return (w >> 4) & 0x0F0F0F0F; }
// Bits 0..3 of b moved to bit 4 of bytes 0..3.
__device__ __forceinline__ int expand4(int b) {
  return ((b & 1) << 4) | ((b & 2) << 11) | ((b & 4) << 18) | ((b & 8) << 25);
}

// dp4a of four unsigned weight bytes (up to 255) with four signed activation bytes.
__device__ __forceinline__ int dp4a_us(int w, int x, int acc) {
  int d;
  asm("dp4a.u32.s32 %0, %1, %2, %3;" : "=r"(d) : "r"(w), "r"(x), "r"(acc));
  return d;
}

// The activation chunk(s) a work item needs, relative to the start of its block.
struct ActView {
  const int8_t* q;   // xq of the block's first value
  const float* d;    // xd of the block's first chunk
  const float* s;    // xs of the block's first chunk
};

__device__ __forceinline__ void scale_min_k4(int j, const uint8_t* q, int& sc, int& m) {
  if (j < 4) {
    sc = q[j] & 63;
    m = q[j + 4] & 63;
  } else {
    sc = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
    m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
  }
}

template <TensorType T>
struct Policy;

// ---- 32-element blocks: one work item per block --------------------------------------
template <>
struct Policy<TensorType::kQ4_0> {
  static constexpr int kBlock = 32, kQBytes = 16, kSBytes = 2, kParts = 1;
  __device__ static float dot_part(const uint8_t* qb, const uint8_t* sb, int, ActView a) {
    const int4 w = ld_i128(qb);
    const int4 a0 = ld_i128(a.q), a1 = ld_i128(a.q + 16);
    int s = 0;
    s = __dp4a(nib_lo(w.x), a0.x, s); s = __dp4a(nib_hi(w.x), a1.x, s);
    s = __dp4a(nib_lo(w.y), a0.y, s); s = __dp4a(nib_hi(w.y), a1.y, s);
    s = __dp4a(nib_lo(w.z), a0.z, s); s = __dp4a(nib_hi(w.z), a1.z, s);
    s = __dp4a(nib_lo(w.w), a0.w, s); s = __dp4a(nib_hi(w.w), a1.w, s);
    return ld_half(sb) * (a.d[0] * s - 8.0f * a.s[0]);
  }
  __device__ static void dequant_chunk(const uint8_t* qb, const uint8_t* sb, int, float* out) {
    const float d = ld_half(sb);
    for (int i = 0; i < 16; ++i) {
      out[i] = d * ((qb[i] & 0xF) - 8);
      out[i + 16] = d * ((qb[i] >> 4) - 8);
    }
  }
};

template <>
struct Policy<TensorType::kQ4_1> {
  static constexpr int kBlock = 32, kQBytes = 16, kSBytes = 4, kParts = 1;
  __device__ static float dot_part(const uint8_t* qb, const uint8_t* sb, int, ActView a) {
    const int4 w = ld_i128(qb);
    const int4 a0 = ld_i128(a.q), a1 = ld_i128(a.q + 16);
    int s = 0;
    s = __dp4a(nib_lo(w.x), a0.x, s); s = __dp4a(nib_hi(w.x), a1.x, s);
    s = __dp4a(nib_lo(w.y), a0.y, s); s = __dp4a(nib_hi(w.y), a1.y, s);
    s = __dp4a(nib_lo(w.z), a0.z, s); s = __dp4a(nib_hi(w.z), a1.z, s);
    s = __dp4a(nib_lo(w.w), a0.w, s); s = __dp4a(nib_hi(w.w), a1.w, s);
    return ld_half(sb) * a.d[0] * s + ld_half(sb + 2) * a.s[0];
  }
  __device__ static void dequant_chunk(const uint8_t* qb, const uint8_t* sb, int, float* out) {
    const float d = ld_half(sb), m = ld_half(sb + 2);
    for (int i = 0; i < 16; ++i) {
      out[i] = d * (qb[i] & 0xF) + m;
      out[i + 16] = d * (qb[i] >> 4) + m;
    }
  }
};

// Q5_0 / Q5_1: quant region is qh[4] then qs[16]; 4-byte aligned.
template <bool kHasMin>
struct Q5Common {
  __device__ static int dot_ints(const uint8_t* qb, ActView a) {
    const int qh = ld_i32(qb);
    int s = 0;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int w = ld_i32(qb + 4 + 4 * i);
      const int lo = nib_lo(w) | expand4(qh >> (4 * i));
      const int hi = nib_hi(w) | expand4(qh >> (4 * i + 16));
      s = __dp4a(lo, ld_i32(reinterpret_cast<const uint8_t*>(a.q) + 4 * i), s);
      s = __dp4a(hi, ld_i32(reinterpret_cast<const uint8_t*>(a.q) + 16 + 4 * i), s);
    }
    return s;
  }
  __device__ static void values(const uint8_t* qb, int* out) {
    const uint32_t qh = static_cast<uint32_t>(ld_i32(qb));
    for (int i = 0; i < 16; ++i) {
      out[i] = (qb[4 + i] & 0xF) | (((qh >> i) & 1) << 4);
      out[i + 16] = (qb[4 + i] >> 4) | (((qh >> (i + 16)) & 1) << 4);
    }
  }
};

template <>
struct Policy<TensorType::kQ5_0> {
  static constexpr int kBlock = 32, kQBytes = 20, kSBytes = 2, kParts = 1;
  __device__ static float dot_part(const uint8_t* qb, const uint8_t* sb, int, ActView a) {
    const int s = Q5Common<false>::dot_ints(qb, a);
    return ld_half(sb) * (a.d[0] * s - 16.0f * a.s[0]);
  }
  __device__ static void dequant_chunk(const uint8_t* qb, const uint8_t* sb, int, float* out) {
    int v[32];
    Q5Common<false>::values(qb, v);
    const float d = ld_half(sb);
    for (int i = 0; i < 32; ++i) out[i] = d * (v[i] - 16);
  }
};

template <>
struct Policy<TensorType::kQ5_1> {
  static constexpr int kBlock = 32, kQBytes = 20, kSBytes = 4, kParts = 1;
  __device__ static float dot_part(const uint8_t* qb, const uint8_t* sb, int, ActView a) {
    const int s = Q5Common<true>::dot_ints(qb, a);
    return ld_half(sb) * a.d[0] * s + ld_half(sb + 2) * a.s[0];
  }
  __device__ static void dequant_chunk(const uint8_t* qb, const uint8_t* sb, int, float* out) {
    int v[32];
    Q5Common<true>::values(qb, v);
    const float d = ld_half(sb), m = ld_half(sb + 2);
    for (int i = 0; i < 32; ++i) out[i] = d * v[i] + m;
  }
};

template <>
struct Policy<TensorType::kQ8_0> {
  static constexpr int kBlock = 32, kQBytes = 32, kSBytes = 2, kParts = 1;
  __device__ static float dot_part(const uint8_t* qb, const uint8_t* sb, int, ActView a) {
    const int4 w0 = ld_i128(qb), w1 = ld_i128(qb + 16);
    const int4 a0 = ld_i128(a.q), a1 = ld_i128(a.q + 16);
    int s = 0;
    s = __dp4a(w0.x, a0.x, s); s = __dp4a(w0.y, a0.y, s);
    s = __dp4a(w0.z, a0.z, s); s = __dp4a(w0.w, a0.w, s);
    s = __dp4a(w1.x, a1.x, s); s = __dp4a(w1.y, a1.y, s);
    s = __dp4a(w1.z, a1.z, s); s = __dp4a(w1.w, a1.w, s);
    return ld_half(sb) * a.d[0] * s;
  }
  __device__ static void dequant_chunk(const uint8_t* qb, const uint8_t* sb, int, float* out) {
    const float d = ld_half(sb);
    for (int i = 0; i < 32; ++i) out[i] = d * static_cast<int8_t>(qb[i]);
  }
};

// Scales and mins of sub-blocks 2p and 2p+1 of a Q4_K / Q5_K block from its header words
// (h.y, h.z, h.w = scale bytes 0..11), without byte loads or branches.
struct KScales {
  int sc0, sc1, m0, m1;
};
__device__ __forceinline__ KScales k_scales(const int4& h, int p) {
  const unsigned s0 = static_cast<unsigned>(h.y), s1 = static_cast<unsigned>(h.z),
                 s2 = static_cast<unsigned>(h.w);
  // Sub-blocks 0..3: low 6 bits of bytes 0..3 (scales) and 4..7 (mins); 4..7: low/high
  // nibbles of bytes 8..11 plus the top two bits of bytes 0..3 / 4..7.
  const unsigned sc = p < 2 ? (s0 & 0x3F3F3F3Fu) : ((s2 & 0x0F0F0F0Fu) | ((s0 >> 2) & 0x30303030u));
  const unsigned mn = p < 2 ? (s1 & 0x3F3F3F3Fu) : (((s2 >> 4) & 0x0F0F0F0Fu) | ((s1 >> 2) & 0x30303030u));
  // Bytes 2(p & 1) and 2(p & 1) + 1, zero-extended: one byte permute each.
  const unsigned sel = 0x4440u + 2u * static_cast<unsigned>(p & 1);
  return {static_cast<int>(__byte_perm(sc, 0, sel)), static_cast<int>(__byte_perm(sc, 0, sel + 1)),
          static_cast<int>(__byte_perm(mn, 0, sel)), static_cast<int>(__byte_perm(mn, 0, sel + 1))};
}

// ---- K-quants: 256-element blocks, four work items of 64 values each ------------------
// Q4_K block: d, dmin (halves), scales[12], qs[128]. Item p covers sub-blocks 2p (low
// nibbles of qs[32p..32p+32)) and 2p+1 (high nibbles).
template <>
struct Policy<TensorType::kQ4_K> {
  static constexpr int kBlock = 256, kQBytes = 144, kSBytes = 0, kParts = 4;
  // An item's weight bytes in registers (the header and 32 bytes of quants), so that a
  // GEMV can load several items before computing any.
  struct Raw {
    int4 h, q0, q1;
  };
  __device__ static Raw load(const uint8_t* qb, const uint8_t*, int p) {
    return {ld_i128(qb), ld_i128(qb + 16 + 32 * p), ld_i128(qb + 16 + 32 * p + 16)};
  }
  __device__ static float dot(const Raw& r, int p, ActView a) {
    const int8_t* x0 = a.q + 64 * p;
    const int4 a00 = ld_i128(x0), a01 = ld_i128(x0 + 16);
    const int4 a10 = ld_i128(x0 + 32), a11 = ld_i128(x0 + 48);
    // The high nibbles stay in place (16 times their value; unsigned bytes against signed
    // activations) and the 1/16 moves into the float scale: one mask per word, no shift.
    constexpr int kLo = 0x0F0F0F0F, kHi = static_cast<int>(0xF0F0F0F0u);
    const int w[8] = {r.q0.x, r.q0.y, r.q0.z, r.q0.w, r.q1.x, r.q1.y, r.q1.z, r.q1.w};
    const int x0w[8] = {a00.x, a00.y, a00.z, a00.w, a01.x, a01.y, a01.z, a01.w};
    const int x1w[8] = {a10.x, a10.y, a10.z, a10.w, a11.x, a11.y, a11.z, a11.w};
    int s0 = 0, s1 = 0;
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      s0 = __dp4a(w[i] & kLo, x0w[i], s0);
      s1 = dp4a_us(w[i] & kHi, x1w[i], s1);
    }
    // The 16-byte header: d, dmin, then the 6-bit scales and mins of the eight sub-blocks
    // packed as in ggml. Integer products of scale and sum need one conversion each.
    const KScales ks = k_scales(r.h, p);
    const int c = 2 * p;
    const float2 xd = *reinterpret_cast<const float2*>(a.d + c);
    const float2 xs = *reinterpret_cast<const float2*>(a.s + c);
    const float2 dm = __half22float2(*reinterpret_cast<const __half2*>(&r.h.x));
    const float v = static_cast<float>(ks.sc0 * s0) * xd.x +
                    static_cast<float>(ks.sc1 * s1) * (xd.y * 0.0625f);
    return dm.x * v - dm.y * (ks.m0 * xs.x + ks.m1 * xs.y);
  }
  __device__ static float dot_part(const uint8_t* qb, const uint8_t* sb, int p, ActView a) {
    return dot(load(qb, sb, p), p, a);
  }
  __device__ static void dequant_chunk(const uint8_t* qb, const uint8_t*, int c, float* out) {
    int sc, m;
    scale_min_k4(c, qb + 4, sc, m);
    const float d = ld_half(qb) * sc, mn = ld_half(qb + 2) * m;
    const uint8_t* q = qb + 16 + 32 * (c / 2);
    const int shift = (c & 1) * 4;
    for (int i = 0; i < 32; ++i) out[i] = d * ((q[i] >> shift) & 0xF) - mn;
  }
};

// Q5_K block: d, dmin, scales[12], qh[32], qs[128]; bit c of qh[l] is the fifth bit of
// value l of sub-block c.
template <>
struct Policy<TensorType::kQ5_K> {
  static constexpr int kBlock = 256, kQBytes = 176, kSBytes = 0, kParts = 4;
  __device__ static float dot_part(const uint8_t* qb, const uint8_t*, int p, ActView a) {
    const int4 q0 = ld_i128(qb + 48 + 32 * p), q1 = ld_i128(qb + 48 + 32 * p + 16);
    const int4 h0 = ld_i128(qb + 16), h1 = ld_i128(qb + 32);
    const int w[8] = {q0.x, q0.y, q0.z, q0.w, q1.x, q1.y, q1.z, q1.w};
    const int h[8] = {h0.x, h0.y, h0.z, h0.w, h1.x, h1.y, h1.z, h1.w};
    const int8_t* x0 = a.q + 64 * p;
    int s0 = 0, s1 = 0;
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      const int lo = nib_lo(w[i]) | (((h[i] >> (2 * p)) & 0x01010101) << 4);
      const int hi = nib_hi(w[i]) | (((h[i] >> (2 * p + 1)) & 0x01010101) << 4);
      s0 = __dp4a(lo, *reinterpret_cast<const int*>(x0 + 4 * i), s0);
      s1 = __dp4a(hi, *reinterpret_cast<const int*>(x0 + 32 + 4 * i), s1);
    }
    const int4 hd = ld_i128(qb);
    const KScales ks = k_scales(hd, p);
    const int c = 2 * p;
    const float2 xd = *reinterpret_cast<const float2*>(a.d + c);
    const float2 xs = *reinterpret_cast<const float2*>(a.s + c);
    const float2 dm = __half22float2(*reinterpret_cast<const __half2*>(&hd.x));
    return dm.x * (ks.sc0 * xd.x * s0 + ks.sc1 * xd.y * s1) - dm.y * (ks.m0 * xs.x + ks.m1 * xs.y);
  }
  __device__ static void dequant_chunk(const uint8_t* qb, const uint8_t*, int c, float* out) {
    int sc, m;
    scale_min_k4(c, qb + 4, sc, m);
    const float d = ld_half(qb) * sc, mn = ld_half(qb + 2) * m;
    const uint8_t* qh = qb + 16;
    const uint8_t* q = qb + 48 + 32 * (c / 2);
    const int shift = (c & 1) * 4;
    for (int i = 0; i < 32; ++i) {
      out[i] = d * (((q[i] >> shift) & 0xF) | (((qh[i] >> c) & 1) << 4)) - mn;
    }
  }
};

// Q6_K (quant region: ql[128], qh[64], int8 scales[16]; d in the scale region). Item p:
// half n = p/2 (128 values), l in [16j, 16j+16) for j = p%2, the four groups g of 32.
template <>
struct Policy<TensorType::kQ6_K> {
  static constexpr int kBlock = 256, kQBytes = 208, kSBytes = 2, kParts = 4;
  struct Raw {
    int4 la, lb, hv;
    int2 sc;  // the half's 8 scale bytes
    float d;
  };
  __device__ static Raw load(const uint8_t* qb, const uint8_t* sb, int p) {
    const int n = p >> 1, j = p & 1;
    return {ld_i128(qb + 64 * n + 16 * j), ld_i128(qb + 64 * n + 32 + 16 * j),
            ld_i128(qb + 128 + 32 * n + 16 * j),
            *reinterpret_cast<const int2*>(qb + 192 + 8 * n), ld_half(sb)};
  }
  __device__ static float dot(const Raw& r, int p, ActView a) {
    const int n = p >> 1, j = p & 1;
    const int qla[4] = {r.la.x, r.la.y, r.la.z, r.la.w};
    const int qlb[4] = {r.lb.x, r.lb.y, r.lb.z, r.lb.w};
    // The two high bits h of a value v = l + 16h, with bit 1 flipped, read as a signed 2-bit
    // number are h - 2; placed in bits 6-7 of a byte above l in bits 2-5, the byte read as
    // int8 is 4(v - 32). One dp4a per word and no offset arithmetic; the 4 goes to the scale.
    int qhx[4] = {r.hv.x, r.hv.y, r.hv.z, r.hv.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) qhx[i] ^= static_cast<int>(0xAAAAAAAAu);
    // Scale of group g: byte j + 2g of the half's 8 scale bytes.
    const int w0 = r.sc.x, w1 = r.sc.y;
    float acc = 0.0f;
#pragma unroll
    for (int g = 0; g < 4; ++g) {
      const int4 av = ld_i128(a.q + 128 * n + 32 * g + 16 * j);
      const int x[4] = {av.x, av.y, av.z, av.w};
      int s = 0;
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const unsigned ql = static_cast<unsigned>((g & 1) ? qlb[i] : qla[i]);
        const unsigned lo = (g & 2) ? (ql >> 2) : (ql << 2);  // l into bits 2-5
        const unsigned hi = (static_cast<unsigned>(qhx[i]) << (6 - 2 * g)) & 0xC0C0C0C0u;
        s = __dp4a(static_cast<int>((lo & 0x3C3C3C3Cu) | hi), x[i], s);
      }
      const int bi = j + 2 * g;  // 0..7 within the half's 8 bytes
      const int word = bi < 4 ? w0 : w1;
      const int sc = static_cast<int8_t>((word >> (8 * (bi & 3))) & 0xFF);
      acc += a.d[4 * n + g] * static_cast<float>(sc * s);
    }
    return 0.25f * r.d * acc;
  }
  __device__ static float dot_part(const uint8_t* qb, const uint8_t* sb, int p, ActView a) {
    return dot(load(qb, sb, p), p, a);
  }
  __device__ static void dequant_chunk(const uint8_t* qb, const uint8_t* sb, int c, float* out) {
    const int n = c / 4, g = c % 4;
    const float d = ld_half(sb);
    const uint8_t* ql = qb + 64 * n + ((g & 1) ? 32 : 0);
    const uint8_t* qh = qb + 128 + 32 * n;
    const int8_t* sc = reinterpret_cast<const int8_t*>(qb + 192) + 8 * n;
    for (int l = 0; l < 32; ++l) {
      const int lo4 = (g & 2) ? (ql[l] >> 4) : (ql[l] & 0xF);
      const int v = (lo4 | (((qh[l] >> (2 * g)) & 3) << 4)) - 32;
      out[l] = d * sc[l / 16 + 2 * g] * v;
    }
  }
};

// A GEMV's view of an item: load() its weight bytes, then dot() them. Types with a Raw
// register form load before computing; the others keep their pointers and load in dot().
template <TensorType T, typename = void>
struct Staged {
  struct Raw {
    const uint8_t* qb;
    const uint8_t* sb;
  };
  __device__ static Raw load(const uint8_t* qb, const uint8_t* sb, int) { return {qb, sb}; }
  __device__ static float dot(const Raw& r, int p, ActView a) {
    return Policy<T>::dot_part(r.qb, r.sb, p, a);
  }
};
template <TensorType T>
struct Staged<T, std::void_t<typename Policy<T>::Raw>> {
  using Raw = typename Policy<T>::Raw;
  __device__ static Raw load(const uint8_t* qb, const uint8_t* sb, int p) {
    return Policy<T>::load(qb, sb, p);
  }
  __device__ static float dot(const Raw& r, int p, ActView a) { return Policy<T>::dot(r, p, a); }
};

}  // namespace tpnode::cuda::quant
