// Dequantizing BF16 tensor-core GEMM (see gemm_dq.h).
#include "kernels/cuda/gemm_dq.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <array>
#include <atomic>

#include "kernels/cuda/bulk_copy.cuh"
#include "kernels/cuda/cp_async.cuh"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/device_query.h"
#include "kernels/cuda/gemm_tiles.h"
#include "kernels/cuda/dispatch.cuh"
#include "kernels/cuda/pdl.cuh"
#include "kernels/cuda/quant_blocks.cuh"
#include "kernels/cuda/gemm_epilogue.cuh"
#include "kernels/cuda/wgmma.cuh"

namespace tpnode::cuda {
namespace {

// ---- the work split ----------------------------------------------------------------------
// A CTA of 8 warps computes one tile of y: 128 weight rows x the tokens of one token tile
// (NB n-tiles of 8: 32 or 64 tokens), over a range of k stages of 256 values. Warp
// (wr, wk) = (warp % 4, warp / 4) owns rows 32wr..32wr+31 (two 16-row MMA tiles) and chunks
// 4wk..4wk+3 (32 values each) of every stage; the two k halves are added through shared
// memory at the end. Per stage the CTA copies (cp.async, kStages-deep ring) the weights of its
// 128 rows and x of its tokens into shared memory; each lane decodes the weight bytes of its
// own MMA fragments straight into registers (packed BF16 arithmetic, FP32 for Q8_0).
//
// Fragments of mma.m16n8k16 (g = lane / 4, t = lane % 4): a0 = A[g][2t..2t+1],
// a1 = A[g+8][2t..], a2 = A[g][2t+8..], a3 = A[g+8][2t+8..]; b0 = B[2t..2t+1][g],
// b1 = B[2t+8..][g]; c0/c1 = C[g][2t, 2t+1], c2/c3 = C[g+8][2t, 2t+1]. The k order inside a
// 32-value chunk is free as long as A and B agree, so lane t decodes values 8t..8t+7 of the
// chunk (eight adjacent quants): the first MMA gets values 8t..8t+3 (a0 = 8t, 8t+1; a2 =
// 8t+2, 8t+3), the second 8t+4..8t+7. x comes in the matching chunk order (gemm_dq.h), so
// the B operand of one MMA is two whole 16-byte pieces of it.
//
// With sm_90a the four warps of a k half are one warpgroup: per 16 values of k it issues one
// m64nNk16 wgmma per 16-row tile index rt (A = the same registers the warp-level MMA takes;
// warp wr supplies rows 32wr + 16rt..+16, B = x straight from shared memory through a
// descriptor), asynchronously, while it decodes the next chunk into the other half of a
// double-buffered register set. The accumulator layout is the warp-level one, n-tile by
// n-tile, so the epilogue is shared.
// Shapes with fewer tiles than SMs also split k over CTAs (the plan; see the epilogue).
constexpr int kRowWarps = 4, kKWarps = 2;
constexpr int kThreads = kRowWarps * kKWarps * 32;
constexpr int kRT = 2;                           // 16-row MMA tiles per warp
constexpr int kTileRows = kRowWarps * kRT * 16;  // 128
constexpr int kStageK = 256;                     // k values per stage
constexpr int kMaxNB = kGemmMaxNB;  // n-tiles per CTA: 64 tokens
constexpr int kXRowBytes = kStageK * 2;          // one token's BF16 values of a stage
constexpr int kXGroupBytes = 8 * kXRowBytes;     // a stage of one 8-token group: 4 KB
static_assert(kXGroupBytes == 16 * kThreads, "one 16-byte piece per thread and group");
constexpr int kSmemBudget = 225 * 1024;  // of the 227 KB an sm_90 CTA may opt into
static_assert(kTileRows == kGemmTileRows && kThreads == 256);

__device__ __forceinline__ unsigned smem_addr(const void* p) {
  return static_cast<unsigned>(__cvta_generic_to_shared(p));
}

#define TPNODE_GEMM_DQ_WGMMA TPNODE_WGMMA

#if !TPNODE_GEMM_DQ_WGMMA
__device__ __forceinline__ void mma_bf16(float (&d)[4], uint32_t a0, uint32_t a1, uint32_t a2,
                                         uint32_t a3, uint32_t b0, uint32_t b1) {
  asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
      "{%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}
#endif

__device__ __forceinline__ uint2 ld_u64(const uint8_t* p) {
  return *reinterpret_cast<const uint2*>(p);
}
__device__ __forceinline__ uint32_t ld_u32(const uint8_t* p) {
  return *reinterpret_cast<const uint32_t*>(p);
}
// ---- decoding -------------------------------------------------------------------------------
// A lane's eight values of one chunk and row: value 8t+i is the unsigned integer u in byte i of
// a uint2, and the weight is d * u + c (c folds the zero point or the min in), from the
// (d, c) pairs of the chunk's scales.
//
// Q8_0 (u < 256): fma(f, d, c) in FP32 with f = 32768 + u, exact by placing byte i under the
// exponent byte 0x47, and c also taking 32768 d off; every term is exact in FP32, so the one
// rounding is the final conversion to BF16, as in a BF16 copy of the weights.
__device__ __forceinline__ float wide_value(uint32_t u, int i, float2 dc) {
  return fmaf(__uint_as_float(__byte_perm(u, 0x47000000u, 0x7404u | (i << 4))), dc.x, dc.y);
}

__device__ __forceinline__ uint32_t bf16x2_bits(__nv_bfloat162 v) {
  return *reinterpret_cast<const uint32_t*>(&v);
}
__device__ __forceinline__ __nv_bfloat162 bf16x2_of(uint32_t bits) {
  return *reinterpret_cast<const __nv_bfloat162*>(&bits);
}
__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
  return bf16x2_bits(__floats2bfloat162_rn(lo, hi));
}

// The A registers of one row: value pairs (0,1), (2,3), (4,5), (6,7) of the lane's eight.
__device__ __forceinline__ void to_bf16_wide(uint2 u, float2 dc, uint32_t (&a)[4]) {
  a[0] = pack_bf16(wide_value(u.x, 0, dc), wide_value(u.x, 1, dc));
  a[1] = pack_bf16(wide_value(u.x, 2, dc), wide_value(u.x, 3, dc));
  a[2] = pack_bf16(wide_value(u.y, 0, dc), wide_value(u.y, 1, dc));
  a[3] = pack_bf16(wide_value(u.y, 2, dc), wide_value(u.y, 3, dc));
}

// Every other type (u < 128) decodes two values per bf16x2 register: 128 + u is exact as a
// BF16 with byte u under the exponent byte 0x43, 128 + z comes off exactly (z = kCenter, half
// the type's range, so u - z is small and signed), then one BF16 multiply-add with d and
// c' = c + (128 + z) d rounded to BF16 (three instructions per two weights where the FP32 way
// takes five; on an H200 decode steps of batches 9-32 ran 9% faster). Centring keeps both
// roundings small: |u - z| <= z multiplies the error of d, and c' is the sub-block's offset
// from its middle (zero for Q4_0, Q5_0, Q6_K) rather than its minimum, so the weights of
// Q4_1-type blocks land at an NMSE of ~6e-6 against the exact dequantization where rounding
// from u = 0 gave ~2e-5 (tests/cuda/gemm_dq_test.cpp bounds the result).
//
// packed_scales: (d, c) as the scales stage them (c includes -128 d) into the bits of (d, d) and
// (c + (128 + z) d, same), as the packed decode reads them.
template <int kCenter>
__device__ __forceinline__ float2 packed_scales(float2 dc) {
  const float c = fmaf(static_cast<float>(128 + kCenter), dc.x, dc.y);
  return make_float2(__uint_as_float(pack_bf16(dc.x, dc.x)), __uint_as_float(pack_bf16(c, c)));
}
template <int kCenter>
__device__ __forceinline__ uint32_t packed_pair(uint32_t u, uint32_t sel, __nv_bfloat162 d2,
                                                __nv_bfloat162 c2) {
  static_assert(kCenter >= 0 && kCenter < 128, "128 + z must be an integer BF16 holds exactly");
  const __nv_bfloat162 v = bf16x2_of(__byte_perm(u, 0x43u, sel));  // (128 + u_i, 128 + u_j)
  constexpr uint32_t kOff = 0x4300u + kCenter;                     // 128 + z as a BF16
  const __nv_bfloat162 off = bf16x2_of(kOff << 16 | kOff);
  return bf16x2_bits(__hfma2(__hsub2(v, off), d2, c2));
}
template <int kCenter>
__device__ __forceinline__ void to_bf16_packed(uint2 u, float2 dc2, uint32_t (&a)[4]) {
  const __nv_bfloat162 d2 = bf16x2_of(__float_as_uint(dc2.x));
  const __nv_bfloat162 c2 = bf16x2_of(__float_as_uint(dc2.y));
  a[0] = packed_pair<kCenter>(u.x, 0x4140u, d2, c2);
  a[1] = packed_pair<kCenter>(u.x, 0x4342u, d2, c2);
  a[2] = packed_pair<kCenter>(u.y, 0x4140u, d2, c2);
  a[3] = packed_pair<kCenter>(u.y, 0x4342u, d2, c2);
}

constexpr uint32_t kNib = 0x0F0F0F0Fu;

// Per weight type. A stage is 256 values of a row (one K-quant block, or eight 32-value
// blocks): kQBytes quant bytes and kSBytes scale bytes in shared memory. Warp (wr, wk) handles
// chunks 4wk + cl (cl = 0..3) of every stage:
//   scales(q, s, soff, wk, out): one row's (d, c) of those chunks, out[cl * kSubs + sub]
//     (kSubs = 2 for Q6_K, whose chunks hold two 16-value groups; lane t uses sub(t));
//   load(q, wk, pp, t): the bytes lane t needs of chunk pair pp of a row;
//   ints(raw, wk, pp, h, t): its eight integers of chunk cl = chunk(pp, h).
template <TensorType T>
struct Dq;

__device__ __forceinline__ float2 half2_at(const uint8_t* p) {
  return __half22float2(*reinterpret_cast<const __half2*>(p));
}

// 32-value blocks with a half scale d (Q4_0, Q5_0, Q8_0: value = d * (u - kZero)) or scale and
// min (Q4_1, Q5_1: value = d * u + m) per block.
template <int kZero, bool kMin>
__device__ __forceinline__ void block_scales(const uint8_t* s, int wk, float magic,
                                             float2 (&out)[4]) {
#pragma unroll
  for (int cl = 0; cl < 4; ++cl) {
    const int blk = 4 * wk + cl;
    if constexpr (kMin) {
      const float2 dm = half2_at(s + 4 * blk);
      out[cl] = make_float2(dm.x, dm.y - magic * dm.x);
    } else {
      const float d = __half2float(*reinterpret_cast<const __half*>(s + 2 * blk));
      out[cl] = make_float2(d, -(magic + kZero) * d);
    }
  }
}

// Q4_0 / Q4_1: qs[16] per block (value j < 16: low nibble of qs[j], else high nibble of
// qs[j - 16]), so lane t reads qs[8(t&1)..+8) and shifts by 4 * (t >> 1).
template <bool kMin>
struct DqQ4 {
  static constexpr int kQBytes = 8 * 16, kSBytes = kMin ? 32 : 16, kSubs = 1, kCenter = 8;
  static constexpr bool kWide = false;
  struct Raw {
    uint2 q[2];
  };
  __device__ static int chunk(int pp, int h) { return 2 * pp + h; }
  __device__ static int sub(int) { return 0; }
  __device__ static void scales(const uint8_t*, const uint8_t* s, int, int wk, float2 (&out)[4]) {
    block_scales<8, kMin>(s, wk, 128.0f, out);
  }
  __device__ static Raw load(const uint8_t* q, int wk, int pp, int t) {
    Raw r;
#pragma unroll
    for (int h = 0; h < 2; ++h) r.q[h] = ld_u64(q + 16 * (4 * wk + 2 * pp + h) + 8 * (t & 1));
    return r;
  }
  __device__ static uint2 ints(const Raw& r, int, int, int h, int t) {
    const int sh = 4 * (t >> 1);
    return make_uint2((r.q[h].x >> sh) & kNib, (r.q[h].y >> sh) & kNib);
  }
};
template <>
struct Dq<TensorType::kQ4_0> : DqQ4<false> {};
template <>
struct Dq<TensorType::kQ4_1> : DqQ4<true> {};

// Q5_0 / Q5_1: qh[4] (bit j: fifth bit of value j) then qs[16] as in Q4_0; 4-byte aligned.
template <bool kMin>
struct DqQ5 {
  static constexpr int kQBytes = 8 * 20, kSBytes = kMin ? 32 : 16, kSubs = 1, kCenter = 16;
  static constexpr bool kWide = false;
  struct Raw {
    uint32_t qh[2], q0[2], q1[2];
  };
  __device__ static int chunk(int pp, int h) { return 2 * pp + h; }
  __device__ static int sub(int) { return 0; }
  __device__ static void scales(const uint8_t*, const uint8_t* s, int, int wk, float2 (&out)[4]) {
    block_scales<16, kMin>(s, wk, 128.0f, out);
  }
  __device__ static Raw load(const uint8_t* q, int wk, int pp, int t) {
    Raw r;
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const uint8_t* b = q + 20 * (4 * wk + 2 * pp + h);
      r.qh[h] = ld_u32(b);
      r.q0[h] = ld_u32(b + 4 + 8 * (t & 1));
      r.q1[h] = ld_u32(b + 8 + 8 * (t & 1));
    }
    return r;
  }
  __device__ static uint2 ints(const Raw& r, int, int, int h, int t) {
    const int sh = 4 * (t >> 1);
    const int hb = static_cast<int>(r.qh[h] >> (8 * t));
    return make_uint2(((r.q0[h] >> sh) & kNib) | static_cast<uint32_t>(quant::expand4(hb)),
                      ((r.q1[h] >> sh) & kNib) | static_cast<uint32_t>(quant::expand4(hb >> 4)));
  }
};
template <>
struct Dq<TensorType::kQ5_0> : DqQ5<false> {};
template <>
struct Dq<TensorType::kQ5_1> : DqQ5<true> {};

// Q8_0: qs[32] signed bytes; flipping the sign bit gives u = q + 128.
template <>
struct Dq<TensorType::kQ8_0> {
  static constexpr int kQBytes = 8 * 32, kSBytes = 16, kSubs = 1, kCenter = 0;
  static constexpr bool kWide = true;
  struct Raw {
    uint2 q[2];
  };
  __device__ static int chunk(int pp, int h) { return 2 * pp + h; }
  __device__ static int sub(int) { return 0; }
  __device__ static void scales(const uint8_t*, const uint8_t* s, int, int wk, float2 (&out)[4]) {
    block_scales<128, false>(s, wk, 32768.0f, out);
  }
  __device__ static Raw load(const uint8_t* q, int wk, int pp, int t) {
    Raw r;
#pragma unroll
    for (int h = 0; h < 2; ++h) r.q[h] = ld_u64(q + 32 * (4 * wk + 2 * pp + h) + 8 * t);
    return r;
  }
  __device__ static uint2 ints(const Raw& r, int, int, int h, int) {
    return make_uint2(r.q[h].x ^ 0x80808080u, r.q[h].y ^ 0x80808080u);
  }
};

// Q4_K / Q5_K: header (d, dmin, 12 bytes of 6-bit scales and mins), then (Q5_K) qh[32] and
// qs[128]. Pair p = 2wk + pp holds sub-blocks 2p (low nibbles of qs[32p..+32)) and 2p+1 (high
// nibbles); bit j of qh[l] is the fifth bit of value l of sub-block j.
template <bool kQ5>
struct DqK {
  static constexpr int kQBytes = kQ5 ? 176 : 144, kSBytes = 0, kSubs = 1, kCenter = kQ5 ? 16 : 8;
  static constexpr int kQsOff = kQ5 ? 48 : 16;
  static constexpr bool kWide = false;
  struct Raw {
    uint2 qs, qh;
  };
  __device__ static int chunk(int pp, int h) { return 2 * pp + h; }
  __device__ static int sub(int) { return 0; }
  __device__ static void scales(const uint8_t* q, const uint8_t*, int, int wk, float2 (&out)[4]) {
    const int4 hdr = *reinterpret_cast<const int4*>(q);
    const float2 dm = __half22float2(*reinterpret_cast<const __half2*>(&hdr.x));
#pragma unroll
    for (int pp = 0; pp < 2; ++pp) {
      const quant::KScales ks = quant::k_scales(hdr, 2 * wk + pp);
      const float d0 = dm.x * static_cast<float>(ks.sc0), d1 = dm.x * static_cast<float>(ks.sc1);
      out[2 * pp] = make_float2(d0, -128.0f * d0 - dm.y * static_cast<float>(ks.m0));
      out[2 * pp + 1] = make_float2(d1, -128.0f * d1 - dm.y * static_cast<float>(ks.m1));
    }
  }
  __device__ static Raw load(const uint8_t* q, int wk, int pp, int t) {
    Raw r;
    r.qs = ld_u64(q + kQsOff + 32 * (2 * wk + pp) + 8 * t);
    r.qh = kQ5 ? ld_u64(q + 16 + 8 * t) : make_uint2(0, 0);
    return r;
  }
  __device__ static uint2 ints(const Raw& r, int wk, int pp, int h, int) {
    uint2 u = make_uint2((r.qs.x >> (4 * h)) & kNib, (r.qs.y >> (4 * h)) & kNib);
    if (kQ5) {
      const int j = 4 * wk + 2 * pp + h;
      u.x |= ((r.qh.x >> j) & 0x01010101u) << 4;
      u.y |= ((r.qh.y >> j) & 0x01010101u) << 4;
    }
    return u;
  }
};
template <>
struct Dq<TensorType::kQ4_K> : DqK<false> {};
template <>
struct Dq<TensorType::kQ5_K> : DqK<true> {};

// Q6_K: ql[128], qh[64], int8 scales[16]; d in the scale region (staged as the aligned 4-byte
// word around it; soff = its offset there). Warp wk takes half n = wk (128 values); its chunk
// g4 (0..3) has low bits from ql[64n + 32(g4&1) + l] (high nibble when g4 >= 2), two high bits
// from qh[32n + l] >> 2 g4, minus 32; values l < 16 and l >= 16 have scales[8n + 2 g4] and
// [8n + 2 g4 + 1] (lane t: l = 8t..8t+7, sub t >> 1). Pair pp = g4 & 1, h = g4 >> 1: both
// chunks of a pair share the ql bytes.
template <>
struct Dq<TensorType::kQ6_K> {
  static constexpr int kQBytes = 208, kSBytes = 4, kSubs = 2, kCenter = 32;
  static constexpr bool kWide = false;
  struct Raw {
    uint2 ql, qh;
  };
  __device__ static int chunk(int pp, int h) { return pp + 2 * h; }
  __device__ static int sub(int t) { return t >> 1; }
  __device__ static void scales(const uint8_t* q, const uint8_t* s, int soff, int wk,
                                float2 (&out)[8]) {
    const float d = __half2float(*reinterpret_cast<const __half*>(s + soff));
    const uint2 sc = ld_u64(q + 192 + 8 * wk);
#pragma unroll
    for (int k = 0; k < 8; ++k) {
      const uint32_t word = k < 4 ? sc.x : sc.y;
      const float v = d * static_cast<float>(static_cast<int8_t>((word >> (8 * (k % 4))) & 0xFF));
      out[k] = make_float2(v, -160.0f * v);
    }
  }
  __device__ static Raw load(const uint8_t* q, int wk, int pp, int t) {
    return {ld_u64(q + 64 * wk + 32 * pp + 8 * t), ld_u64(q + 128 + 32 * wk + 8 * t)};
  }
  __device__ static uint2 ints(const Raw& r, int, int pp, int h, int) {
    const int g4 = pp + 2 * h;
    return make_uint2(((r.ql.x >> (4 * h)) & kNib) | (((r.qh.x >> (2 * g4)) & 0x03030303u) << 4),
                      ((r.ql.y >> (4 * h)) & kNib) | (((r.qh.y >> (2 * g4)) & 0x03030303u) << 4));
  }
};

// ---- shared-memory layout ---------------------------------------------------------------
// A ring of kStages stages, each [128 rows][kQStride] quant bytes, [128 rows][kSBytes] scale
// bytes, and the stage's BF16 activations as [NB token groups][32 pieces][8 tokens][16 bytes]
// (piece = 8 values in chunk order: 8x8 core matrices, K-major, as wgmma reads them; the
// warp-level loads of 4 bytes per lane are conflict-free too) - exactly the bytes of one
// stage of the tile's groups in gemm_dq_acts' layout, so one bulk copy brings them; then per
// warp the (d, c) pairs of its chunks, [4 kSubs][32 rows] float2. kQStride pads rows to 32
// or 96 mod 128 bytes so that the 8-byte loads of a half-warp (4 rows x 32 bytes) hit
// distinct banks.
constexpr int padded_stride(int bytes) {
  int s = (bytes + 15) / 16 * 16;
  while (s % 128 != 32 && s % 128 != 96) s += 16;
  return s;
}

template <TensorType T, int NB>
struct Layout {
  using P = Dq<T>;
  static constexpr int kQStride = padded_stride(P::kQBytes);
  static constexpr int kSOff = kTileRows * kQStride;
  static constexpr int kXOff = kSOff + kTileRows * P::kSBytes;
  static constexpr int kStageBytes = kXOff + NB * 8 * kXRowBytes;
  static constexpr int kWarpScales = 4 * P::kSubs * 32;  // float2 per warp
  static constexpr int kScaleBytes = kRowWarps * kKWarps * kWarpScales * 8;
  static constexpr int kStages = std::min(4, (kSmemBudget - kScaleBytes) / kStageBytes);
  static constexpr int kScaleOff = kStages * kStageBytes;
  static constexpr int kSmemBytes = kScaleOff + kScaleBytes;
  // The k-half exchange reuses the ring: [8 warps][NB * 4 values][32 lanes] floats.
  static constexpr int kRedBytes = kRowWarps * kKWarps * NB * 4 * 32 * 4;
  // cp.async slots per thread and stage.
  static constexpr int kWChunks = P::kQBytes / 16, kWTotal = kTileRows * kWChunks;
  static constexpr int kWSlots = (kWTotal + kThreads - 1) / kThreads;
  static constexpr int kSChunks = P::kSBytes / 16, kSTotal = kTileRows * kSChunks;
  static_assert(kStages >= 3, "a stage does not fit three times");
  static_assert(kScaleOff >= kRedBytes);
  static_assert(kSOff % 16 == 0 && kXOff % 16 == 0 && kStageBytes % 16 == 0);
  static_assert(P::kQBytes % 16 == 0 && (P::kSBytes == 4 || P::kSBytes % 16 == 0));
  static_assert(kSTotal <= kThreads && (P::kSBytes != 4 || kTileRows <= kThreads));
};

struct KernelArgs {
  DeviceMatrix w;
  const __nv_bfloat16* x = nullptr;  // [m, cols]
  float* y = nullptr;                // [m, ldy]
  int64_t ldy = 0;
  GemmSplitArgs sp;
};

// What this thread copies each stage, worked out once: byte offsets of its 16-byte pieces
// (weights: relative to the matrix and the stage; rows past the end copy the last row, which
// is computed and never stored) and its activation row.
template <TensorType T, int NB>
struct CopyPlan {
  using L = Layout<T, NB>;
  uint32_t w_src[L::kWSlots], w_dst[L::kWSlots];
  uint32_t s_src = 0, s_dst = 0;  // scale piece (16 bytes, or Q6_K's 4-byte word)
  const __nv_bfloat16* x_src;     // stage 0 of the tile's first group
  int x_groups = 0;               // groups of the tile that hold tokens (<= NB)

  __device__ CopyPlan(const KernelArgs& a, int64_t row0, int tok0) {
    using P = Dq<T>;
    const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
    const int64_t last = a.w.rows - 1;
#pragma unroll
    for (int k = 0; k < L::kWSlots; ++k) {
      const int i = min(tid + k * kThreads, L::kWTotal - 1);
      const int r = i / L::kWChunks, j = i % L::kWChunks;
      w_src[k] = static_cast<uint32_t>(min(row0 + r, last) * static_cast<int64_t>(a.w.q_row_bytes) +
                                       16 * j);
      w_dst[k] = static_cast<uint32_t>(r * L::kQStride + 16 * j);
    }
    if constexpr (P::kSBytes == 4) {
      s_src = static_cast<uint32_t>(min(row0 + tid % kTileRows, last) *
                                    static_cast<int64_t>(a.w.s_row_bytes));
      s_dst = static_cast<uint32_t>(L::kSOff + 4 * (tid % kTileRows));
    } else if constexpr (P::kSBytes > 0) {
      const int i = tid % L::kSTotal, r = i / L::kSChunks, j = i % L::kSChunks;
      s_src = static_cast<uint32_t>(min(row0 + r, last) * static_cast<int64_t>(a.w.s_row_bytes) +
                                    16 * j);
      s_dst = static_cast<uint32_t>(L::kSOff + r * P::kSBytes + 16 * j);
    }
    x_src = a.x + static_cast<int64_t>(tok0 / 8) * kXGroupBytes / 2;
    x_groups = min(NB, a.sp.groups - tok0 / 8);
    (void)lane;
    (void)warp;
  }

  // Starts the copy of weight stage `st` into `buf` (16-byte cp.async pieces: as fast as the
  // kernel needs, where one bulk copy per 144-byte row was slower).
  __device__ void weights(const KernelArgs& a, int st, uint8_t* buf) const {
    using P = Dq<T>;
    const int tid = threadIdx.x;
    const uint8_t* q = a.w.q + static_cast<int64_t>(st) * P::kQBytes;
#pragma unroll
    for (int k = 0; k < L::kWSlots; ++k) {
      if (L::kWTotal % kThreads == 0 || tid + k * kThreads < L::kWTotal)
        cp_async16(buf + w_dst[k], q + w_src[k]);
    }
    if constexpr (P::kSBytes == 4) {
      // The scale region is 256-byte aligned, so the word never starts before it.
      if (tid < kTileRows) {
        const uintptr_t src = reinterpret_cast<uintptr_t>(a.w.s + s_src + 2 * st);
        cp_async4(buf + s_dst, reinterpret_cast<const void*>(src & ~uintptr_t{3}));
      }
    } else if constexpr (P::kSBytes > 0) {
      if (tid < L::kSTotal)
        cp_async16(buf + s_dst, a.w.s + static_cast<int64_t>(st) * P::kSBytes + s_src);
    }
  }

  // Starts the copy of stage `st` of x (the tile's groups that hold tokens; the slots of the
  // others keep stale values, which only reach y's columns that are not stored) into `buf`:
  // one bulk copy counted on the stage's mbarrier `bar` with sm_90a, else 16-byte pieces.
  __device__ void acts(const KernelArgs& a, int st, uint8_t* buf, uint32_t bar) const {
    const __nv_bfloat16* src = x_src + static_cast<int64_t>(st) * a.sp.groups * (kXGroupBytes / 2);
#if TPNODE_GEMM_DQ_WGMMA
    if (threadIdx.x == 0) {
      const uint32_t bytes = static_cast<uint32_t>(x_groups) * kXGroupBytes;
      mbar_arrive_expect_tx(bar, bytes);
      bulk_copy(smem_u32(buf + L::kXOff), src, bytes, bar);
    }
#else
    (void)bar;
    const int tid = threadIdx.x;
#pragma unroll
    for (int k = 0; k < NB; ++k) {
      if (k < x_groups) {
        cp_async16(buf + L::kXOff + k * kXGroupBytes + 16 * tid,
                   src + k * (kXGroupBytes / 2) + 8 * tid);
      }
    }
#endif
  }
};

// The lane's weight bytes of chunk pair pp for its four rows (two 16-row tiles, rows g, g + 8).
template <TensorType T, int NB>
__device__ __forceinline__ void load_pair(const uint8_t* buf, int wr, int wk, int pp,
                                          typename Dq<T>::Raw (&raw)[kRT][2]) {
  const int lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
#pragma unroll
  for (int rt = 0; rt < kRT; ++rt) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      raw[rt][h] =
          Dq<T>::load(buf + (wr * 32 + rt * 16 + g + 8 * h) * Layout<T, NB>::kQStride, wk, pp, t);
    }
  }
}

// The A registers of chunk (pp, hc) for both row tiles, from the bytes load_pair read and the
// warp's (d, c) pairs sc.
template <TensorType T>
__device__ __forceinline__ void decode_chunk(const typename Dq<T>::Raw (&raw)[kRT][2],
                                             const float2* sc, int wk, int pp, int hc,
                                             uint32_t (&af)[kRT][2][4]) {
  using P = Dq<T>;
  const int lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const float2* sc_lane = sc + P::sub(t) * 32 + g + P::chunk(pp, hc) * P::kSubs * 32;
#pragma unroll
  for (int rt = 0; rt < kRT; ++rt) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const uint2 u = P::ints(raw[rt][h], wk, pp, hc, t);
      if constexpr (P::kWide) {
        to_bf16_wide(u, sc_lane[rt * 16 + 8 * h], af[rt][h]);
      } else {
        to_bf16_packed<P::kCenter>(u, sc_lane[rt * 16 + 8 * h], af[rt][h]);
      }
    }
  }
}

// One stage of the warp's MMAs: rows 32wr..+32 of the tile, chunks 4wk..4wk+3, NB n-tiles.
// sc: the warp's (d, c) pairs for the stage.
template <TensorType T, int NB>
__device__ __forceinline__ void compute_stage(const uint8_t* buf, const float2* sc, int wr, int wk,
                                              float (&acc)[kRT][NB][4]) {
  using P = Dq<T>;
  using L = Layout<T, NB>;
  const int lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  // Word t of token g's row in a core matrix: B[k 2t..2t+1 of the piece][token 8nt + g].
  const uint8_t* xlane = buf + L::kXOff + 16 * g + 4 * t;
  constexpr int kPiece = 128, kGroup = kXGroupBytes;
#pragma unroll
  for (int pp = 0; pp < 2; ++pp) {
    typename P::Raw raw[kRT][2];
    load_pair<T, NB>(buf, wr, wk, pp, raw);
#pragma unroll
    for (int hc = 0; hc < 2; ++hc) {
      uint32_t af[kRT][2][4];
      decode_chunk<T>(raw, sc, wk, pp, hc, af);
      const int c = 4 * wk + P::chunk(pp, hc);  // chunk within the stage
      const uint8_t* xb = xlane + 4 * c * kPiece;
#pragma unroll
      for (int nt = 0; nt < NB; ++nt) {
        uint32_t b[4];
#pragma unroll
        for (int j = 0; j < 4; ++j) b[j] = ld_u32(xb + j * kPiece + nt * kGroup);
#pragma unroll
        for (int rt = 0; rt < kRT; ++rt) {
          mma_bf16(acc[rt][nt], af[rt][0][0], af[rt][1][0], af[rt][0][1], af[rt][1][1], b[0], b[1]);
          mma_bf16(acc[rt][nt], af[rt][0][2], af[rt][1][2], af[rt][0][3], af[rt][1][3], b[2], b[3]);
        }
      }
    }
  }
}

#if TPNODE_GEMM_DQ_WGMMA
// compute_stage on warpgroup MMAs. Every chunk's four wgmmas are one commit group, and each of
// the stage's four chunks decodes into its own registers: before chunk c's registers are
// decoded again (chunk c of the next stage), at most kWgInFlight groups are pending, so the
// one that last read them has finished while the three after it may still run (with one group
// in flight batch 64 on gemm_dq was 1% slower; docs/BENCHMARKS.md, ninth session).
constexpr int kWgInFlight = 3;
template <TensorType T, int NB>
__device__ __forceinline__ void compute_stage_wg(const uint8_t* buf, const float2* sc, int wr,
                                                 int wk, float (&acc)[kRT][NB][4]) {
  using P = Dq<T>;
  using L = Layout<T, NB>;
  // The B descriptors of the stage differ only in their start address (bits 0-13, in 16-byte
  // units, far from overflowing: shared memory is below 256 KB), by compile-time offsets: one
  // descriptor per stage, the others by adding a constant (warp-uniform, so no per-chunk
  // address arithmetic and register-to-uniform moves).
  const uint64_t desc0 = wg_desc(smem_addr(buf + L::kXOff) + 4 * 4 * wk * 128, 128, kXGroupBytes);
  uint32_t af[4][kRT][2][4];
  static_assert(kWgInFlight <= 3, "four chunks' registers: at most three groups pending");
#pragma unroll
  for (int pp = 0; pp < 2; ++pp) {
    typename P::Raw raw[kRT][2];
    load_pair<T, NB>(buf, wr, wk, pp, raw);
#pragma unroll
    for (int hc = 0; hc < 2; ++hc) {
      uint32_t(&a)[kRT][2][4] = af[2 * pp + hc];
      wg_wait<kWgInFlight>();  // the group that last read a
      decode_chunk<T>(raw, sc, wk, pp, hc, a);
      wg_fence();
#pragma unroll
      for (int u = 0; u < 2; ++u) {
        const uint64_t b = desc0 + ((4 * P::chunk(pp, hc) + 2 * u) * 128 >> 4);
#pragma unroll
        for (int rt = 0; rt < kRT; ++rt) {
          const uint32_t(&f)[2][4] = a[rt];
          WgmmaBf16<NB>::run(acc[rt], f[0][2 * u], f[1][2 * u], f[0][2 * u + 1], f[1][2 * u + 1], b);
        }
      }
      wg_commit();
    }
  }
}
#endif

// minBlocks = 1: one CTA per SM (the ring takes most of shared memory), so the accumulators and
// fragments may use up to 255 registers without spilling.
template <TensorType T, int NB>
__global__ void __launch_bounds__(kThreads, 1) gemm_dq_kernel(KernelArgs a) {
  using P = Dq<T>;
  using L = Layout<T, NB>;
  constexpr int S = L::kStages;
  extern __shared__ __align__(16) uint8_t smem[];
  __shared__ int s_last;
  // Per ring buffer (sm_90a): full, its activations' bulk copy landed (with the mbarrier ring
  // below, every thread's cp.async too); empty (ring), every warp is done reading it.
  __shared__ __align__(8) uint64_t s_bars[4];
  __shared__ __align__(8) uint64_t s_empty[4];

  // The warp index broadcast from lane 0: the compiler then knows it (and what derives from it,
  // like the MMA descriptors) is warp-uniform.
  const int lane = threadIdx.x % 32, warp = __shfl_sync(0xffffffffu, threadIdx.x / 32, 0);
  const int wr = warp % kRowWarps, wk = warp / kRowWarps;
  const int tt = static_cast<int>(blockIdx.x), split = static_cast<int>(blockIdx.z);
  const int64_t row0 = static_cast<int64_t>(blockIdx.y) * kTileRows;
  const int tok0 = tt * NB * 8;
  const int st0 = static_cast<int>(static_cast<int64_t>(a.sp.n_stages) * split / a.sp.splits);
  const int n_st =
      static_cast<int>(static_cast<int64_t>(a.sp.n_stages) * (split + 1) / a.sp.splits) - st0;
  // splits <= n_stages (gemm_dq_plan), so every split has a stage. Told so, ptxas stops
  // serialising the wgmmas of Q4_1 and Q5_1 (its warning C7515: the accumulators zeroed again
  // on the path that skips the loop); the other types run faster without it.
  if constexpr (T == TensorType::kQ4_1 || T == TensorType::kQ5_1) __builtin_assume(n_st >= 1);
  // Every CTA reads the same x: row tiles start at different stages of their range (and wrap
  // around) so that they do not all ask the same L2 lines for it at once.
  const int rot = static_cast<int>(static_cast<int64_t>(blockIdx.y) * n_st / gridDim.y);
  auto stage_at = [&](int i) {  // i < n_st and rot < n_st: one wrap at most, no division
    const int k = i + rot;
    return st0 + (k >= n_st ? k - n_st : k);
  };
  const CopyPlan<T, NB> copy(a, row0, tok0);
  float2* sc = reinterpret_cast<float2*>(smem + L::kScaleOff) + warp * L::kWarpScales;
  // The row whose scales this lane works out each stage, and (Q6_K) where its half sits in
  // the staged word (rows are 2-byte strided).
  const int sc_row = wr * 32 + lane;
  const int64_t sc_row_bytes =
      min(row0 + sc_row, a.w.rows - 1) * static_cast<int64_t>(a.w.s_row_bytes);

  static_assert(S <= 4, "one mbarrier per ring buffer");
  // Stages in flight beyond the one computed. With four buffers, S - 2: the refill at stage it
  // reuses the buffer of stage it - 2, whose last asynchronous MMAs finished while it - 1 was
  // computed. With three, S - 1, and each stage's MMAs finish before the next stage's copies
  // start.
  constexpr int kAhead = S >= 4 ? S - 2 : S - 1;
  // With four buffers (sm_90a) the ring runs on full/empty mbarriers instead of a barrier per
  // stage: full, the stage landed (every thread's cp.async and the activations' bulk copy);
  // empty, every warp released it (after computing the stage after it). So warps only wait for
  // each other when one falls a stage behind. With three buffers a refill would wait for the
  // release of the stage just before, which is a barrier per stage again.
#if TPNODE_GEMM_DQ_WGMMA
  constexpr bool kRing = S >= 4;
#else
  constexpr bool kRing = false;
#endif
  const uint32_t bars = smem_u32(s_bars), empties = smem_u32(s_empty);
#if TPNODE_GEMM_DQ_WGMMA
  if (threadIdx.x == 0) {
    for (int i = 0; i < S; ++i) {
      mbar_init(bars + 8 * i, kRing ? kThreads + 1 : 1);  // copies (ring) and the expect_tx
      if constexpr (kRing) mbar_init(empties + 8 * i, kThreads / 32);
    }
    mbar_fence_init();
  }
  __syncthreads();
#endif
  // The weights of the first stages are in flight before the previous kernel has finished;
  // x is its output.
#pragma unroll
  for (int s = 0; s < kAhead; ++s) {
    if (s < n_st) copy.weights(a, stage_at(s), smem + s * L::kStageBytes);
  }
  pdl_wait();
#pragma unroll
  for (int s = 0; s < kAhead; ++s) {
    if (s < n_st) copy.acts(a, stage_at(s), smem + s * L::kStageBytes, bars + 8 * s);
    // Ring: the full barrier counts this thread's copies once they landed; else they close
    // the stage's cp.async group.
    if constexpr (kRing) {
      if (s < n_st) cp_async_mbar_arrive(bars + 8 * s);
    } else {
      cp_async_commit();
    }
  }

  float acc[kRT][NB][4];
#pragma unroll
  for (int rt = 0; rt < kRT; ++rt) {
#pragma unroll
    for (int nt = 0; nt < NB; ++nt) {
#pragma unroll
      for (int i = 0; i < 4; ++i) acc[rt][nt][i] = 0.0f;
    }
  }

  for (int it = 0; it < n_st; ++it) {
    if constexpr (kRing) {
      mbar_wait(bars + 8 * (it % S), (it / S) & 1);  // stage `it` landed, every thread's part
    } else {
      cp_async_wait<kAhead - 1>();
#if TPNODE_GEMM_DQ_WGMMA
      mbar_wait(bars + 8 * (it % S), (it / S) & 1);
      if constexpr (kAhead == S - 1) wg_wait<0>();
#endif
      // Stage `it` landed for all threads; every warp is done with the buffer refilled below
      // (stage it - 2 with four buffers: each warpgroup waited for its MMAs while computing
      // it - 1; stage it - 1 with three).
      __syncthreads();
    }
    const int st = stage_at(it);
    const uint8_t* buf = smem + (it % S) * L::kStageBytes;
    // The scales' shared-memory reads go out first: the refill's address work below hides
    // their latency.
    float2 dc[4 * P::kSubs];
    P::scales(buf + sc_row * L::kQStride, buf + L::kSOff + sc_row * P::kSBytes,
              static_cast<int>((sc_row_bytes + 2 * st) & 2), wk, dc);
    const int nx = it + kAhead;
    if (nx < n_st) {
      const int nb = nx % S;
      uint8_t* nbuf = smem + nb * L::kStageBytes;
      // Ring: the buffer's previous stage (nx - S) was released by every warp; the k-th
      // release of buffer nb completes its empty barrier's phase k.
      if constexpr (kRing) {
        if (nx >= S) mbar_wait(empties + 8 * nb, ((nx - S) / S) & 1);
      }
      copy.weights(a, stage_at(nx), nbuf);
      copy.acts(a, stage_at(nx), nbuf, bars + 8 * nb);
      if constexpr (kRing) cp_async_mbar_arrive(bars + 8 * nb);
    }
    if constexpr (!kRing) cp_async_commit();
#pragma unroll
    for (int k = 0; k < 4 * P::kSubs; ++k)
      sc[k * 32 + lane] = P::kWide ? dc[k] : packed_scales<P::kCenter>(dc[k]);
    __syncwarp();
#if TPNODE_GEMM_DQ_WGMMA
    compute_stage_wg<T, NB>(buf, sc, wr, wk, acc);
    // The fourth chunk waited until at most three groups were pending, all of this stage: the
    // previous stage's MMAs are done, and this warp's reads of its shared memory long
    // finished. Stages up to n_st - 2 are released: only those are refilled.
    if constexpr (kRing) {
      if (it >= 1) {
        __syncwarp();
        if (lane == 0) mbar_arrive(empties + 8 * ((it - 1) % S));
      }
    }
#else
    compute_stage<T, NB>(buf, sc, wr, wk, acc);
#endif
  }
#if TPNODE_GEMM_DQ_WGMMA
  wg_wait<0>();
#endif
  cp_async_wait<0>();
  __syncthreads();  // the ring is free
  pdl_launch_dependents();

  // k halves: warp (wr, wk) finishes row tile rt = wk of its rows and hands its sums of the
  // other tile to warp (wr, 1 - wk). a + b == b + a, so both tiles are acc(wk 0) + acc(wk 1).
  static_assert(kRT == kKWarps);
  constexpr int kTileVals = NB * 4;  // one row tile's accumulators per lane
  float* red = reinterpret_cast<float*>(smem);
  {
    float* out = red + (wr * kKWarps + wk) * kTileVals * 32 + lane;
#pragma unroll
    for (int nt = 0; nt < NB; ++nt) {
#pragma unroll
      for (int i = 0; i < 4; ++i) out[(nt * 4 + i) * 32] = wk == 0 ? acc[1][nt][i] : acc[0][nt][i];
    }
  }
  __syncthreads();
  float mine[NB][4];
  {
    const float* in = red + (wr * kKWarps + 1 - wk) * kTileVals * 32 + lane;
#pragma unroll
    for (int nt = 0; nt < NB; ++nt) {
#pragma unroll
      for (int i = 0; i < 4; ++i)
        mine[nt][i] = (wk == 0 ? acc[0][nt][i] : acc[1][nt][i]) + in[(nt * 4 + i) * 32];
    }
  }
  const int64_t row_base = row0 + wr * 32 + wk * 16;
  if (a.sp.splits == 1) {
    store_tile<NB>({a.y, a.ldy, a.w.rows, a.sp.m}, mine, row_base, tok0);
    return;
  }

  // Split k: every CTA of the tile leaves its partial sums in the workspace in fragment order
  // ([tile][split][row warp][row tile][value][lane], coalesced); the last to arrive adds all
  // splits in split order (its own from registers, bitwise the same) and writes y.
  const int64_t tile = static_cast<int64_t>(blockIdx.y) * a.sp.token_tiles + tt;
  const int64_t split_floats = static_cast<int64_t>(kRowWarps) * kKWarps * kTileVals * 32;
  float* part =
      a.sp.partials + tile * a.sp.splits * split_floats + (wr * kKWarps + wk) * kTileVals * 32 + lane;
  float sum[NB][4];
  if (!sum_splits<NB>(mine, part, split_floats, split, a.sp.splits, a.sp.counters + tile, s_last, sum))
    return;
  store_tile<NB>({a.y, a.ldy, a.w.rows, a.sp.m}, sum, row_base, tok0);
  if (threadIdx.x == 0) a.sp.counters[tile] = 0;  // ready for the next launch
}

// One thread per 16-byte row of a core matrix of y ([stage][group][piece][token][8 values]):
// piece j of a stage holds values 2(j % 4) + {0, 1, 8, 9, 16, 17, 24, 25} of chunk j / 4
// (gemm_dq_chunk_source); tokens past m are zero.
__global__ void gemm_dq_acts_kernel(GemmDqActsParams p, int64_t n_rows, int groups) {
  const int64_t o = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  pdl_wait();
  if (o >= n_rows) return;
  const int t8 = static_cast<int>(o % 8), j = static_cast<int>(o / 8 % 32);
  const int64_t grp = o / 256 % groups, st = o / 256 / groups;
  const int64_t n = grp * 8 + t8;
  uint32_t out[4] = {0, 0, 0, 0};
  if (n < p.m) {
    const float* src = p.x + n * p.cols + st * kStageK + (j / 4) * kGemmDqChunk + 2 * (j % 4);
#pragma unroll
    for (int q = 0; q < 4; ++q) {
      const float2 v = *reinterpret_cast<const float2*>(src + 8 * q);
      out[q] = pack_bf16(v.x, v.y);
    }
  }
  reinterpret_cast<uint4*>(p.y)[o] = make_uint4(out[0], out[1], out[2], out[3]);
}

// ---- host side ------------------------------------------------------------------------------
constexpr TensorType kTypes[] = {TensorType::kQ4_0, TensorType::kQ4_1, TensorType::kQ5_0,
                                 TensorType::kQ5_1, TensorType::kQ8_0, TensorType::kQ4_K,
                                 TensorType::kQ5_K, TensorType::kQ6_K};

PerDeviceSetup g_setup("gemm_dq");  // shared-memory limits raised

bool workspace_fits(const GemmDqParams& p, int splits) {
  const GemmTokenTiling tk = gemm_token_tiling(p.m);
  const int64_t tiles = (p.w.rows + kTileRows - 1) / kTileRows * tk.tiles;
  return p.ws.partials != nullptr && p.ws.counters != nullptr && tiles <= p.ws.n_counters &&
         tiles * splits * gemm_tile_floats(tk.nb) <= p.ws.partial_floats;
}

}  // namespace

GemmDqWorkspaceSize gemm_dq_workspace_size() {
  // The default plan splits only while tiles * splits <= SMs, and a tile has at most
  // 128 x 64 floats.
  const int sms = current_device_sms("gemm_dq");
  return {static_cast<int64_t>(sms) * gemm_tile_floats(kMaxNB), sms};
}

bool gemm_dq_supports(const DeviceMatrix& w) {
  for (TensorType t : kTypes) {
    if (w.type == t) return w.cols > 0 && w.cols % kStageK == 0 && w.rows > 0;
  }
  return false;
}

GemmDqPlan gemm_dq_plan(const GemmDqParams& p) {
  GemmDqPlan plan;
  if (p.m < 1 || p.m > kGemmDqMaxBatch || p.w.rows < 1 || p.w.cols < kStageK) return plan;
  const GemmTokenTiling tk = gemm_token_tiling(p.m);
  const int64_t tiles = (p.w.rows + kTileRows - 1) / kTileRows * tk.tiles;
  const int64_t n_stages = p.w.cols / kStageK;
  // One resident CTA per SM; each split keeps at least two stages for the pipeline to overlap,
  // and the CTA that adds the partial sums reads less than 128 KB of them.
  int64_t s = std::min<int64_t>({kGemmDqMaxSplits, current_device_sms("gemm_dq") / tiles,
                                 n_stages / 2, std::max(1, 32 / tk.nb)});
  s = std::max<int64_t>(s, 1);
  while (s > 1 && !workspace_fits(p, static_cast<int>(s))) --s;
  plan.k_splits = static_cast<int>(s);
  return plan;
}

void gemm_dq_init() {
  for (TensorType type : kTypes) {
    TPNODE_DISPATCH_QUANT_TYPE(type, T, {
      for (int nb : {4, 8}) {
        TPNODE_DISPATCH_TOKEN_TILES("gemm_dq", nb, NB, {
          TPNODE_CUDA_CHECK(cudaFuncSetAttribute(gemm_dq_kernel<T, NB>,
                                                 cudaFuncAttributeMaxDynamicSharedMemorySize,
                                                 Layout<T, NB>::kSmemBytes));
        })
      }
    })
  }
  g_setup.mark_done();
}

void gemm_dq_acts(const GemmDqActsParams& p, cudaStream_t stream) {
  TPNODE_CHECK(p.m >= 0 && p.cols % kStageK == 0, "gemm_dq_acts: {} x {} (cols % {} != 0)", p.m,
               p.cols, kStageK);
  TPNODE_CHECK(p.x != nullptr && p.y != nullptr && reinterpret_cast<uintptr_t>(p.x) % 8 == 0 &&
                   reinterpret_cast<uintptr_t>(p.y) % 16 == 0,
               "gemm_dq_acts: x must be 8-byte and y 16-byte aligned device pointers");
  const int64_t n_rows = gemm_dq_acts_elems(p.m, p.cols) / 8;
  if (n_rows == 0) return;
  constexpr int kBlock = 256;
  launch_pdl(gemm_dq_acts_kernel, dim3(static_cast<unsigned>((n_rows + kBlock - 1) / kBlock)),
             dim3(kBlock), 0, stream, p, n_rows, static_cast<int>((p.m + 7) / 8));
}

void gemm_dq(const GemmDqParams& p, cudaStream_t stream) { gemm_dq(p, gemm_dq_plan(p), stream); }

void gemm_dq(const GemmDqParams& p, const GemmDqPlan& plan, cudaStream_t stream) {
  TPNODE_CHECK(gemm_dq_supports(p.w), "gemm_dq: no kernel for a {} {}x{} matrix (cols % {} != 0?)",
               weight_type_label(p.w.type), p.w.rows, p.w.cols, kStageK);
  TPNODE_CHECK(p.m >= 1 && p.m <= kGemmDqMaxBatch, "gemm_dq: batch {} outside 1..{}", p.m,
               kGemmDqMaxBatch);
  TPNODE_CHECK(p.x != nullptr && reinterpret_cast<uintptr_t>(p.x) % 16 == 0,
               "gemm_dq: x must be a 16-byte aligned device pointer");
  TPNODE_CHECK(reinterpret_cast<uintptr_t>(p.w.q) % 16 == 0 &&
                   (p.w.s == nullptr || reinterpret_cast<uintptr_t>(p.w.s) % 16 == 0),
               "gemm_dq: {} weights not 16-byte aligned", weight_type_label(p.w.type));
  const int64_t ldy = p.ldy == 0 ? p.w.rows : p.ldy;
  TPNODE_CHECK(p.y != nullptr && ldy >= p.w.rows, "gemm_dq: y row stride {} < rows {}", ldy,
               p.w.rows);
  const int64_t n_stages = p.w.cols / kStageK;
  TPNODE_CHECK(plan.k_splits >= 1 && plan.k_splits <= kGemmDqMaxSplits && plan.k_splits <= n_stages,
               "gemm_dq: {} k splits for {} stages (1..{})", plan.k_splits, n_stages,
               kGemmDqMaxSplits);
  TPNODE_CHECK(plan.k_splits == 1 || workspace_fits(p, plan.k_splits),
               "gemm_dq: the workspace is too small for {} k splits", plan.k_splits);

  if (g_setup.needed(stream)) gemm_dq_init();

  const GemmTokenTiling tk = gemm_token_tiling(p.m);
  KernelArgs a;
  a.w = p.w;
  a.x = p.x;
  a.y = p.y;
  a.ldy = ldy;
  a.sp = gemm_split_args(p.m, n_stages, plan.k_splits, tk.tiles, p.ws.partials, p.ws.counters);
  const int64_t row_tiles = (p.w.rows + kTileRows - 1) / kTileRows;
  TPNODE_CHECK(row_tiles <= 65535, "gemm_dq: {} rows: too many row tiles", p.w.rows);
  // The kernel keeps byte offsets within the quant and scale regions in 32 bits.
  TPNODE_CHECK(static_cast<uint64_t>(p.w.rows) * p.w.q_row_bytes <= UINT32_MAX &&
                   static_cast<uint64_t>(p.w.rows) * p.w.s_row_bytes <= UINT32_MAX,
               "gemm_dq: {}x{} matrix over 4 GiB", p.w.rows, p.w.cols);
  const dim3 grid(static_cast<unsigned>(tk.tiles), static_cast<unsigned>(row_tiles),
                  static_cast<unsigned>(plan.k_splits));
  // clang-format off
  TPNODE_DISPATCH_QUANT_TYPE(p.w.type, T, {
    TPNODE_DISPATCH_TOKEN_TILES("gemm_dq", tk.nb, NB, {
      launch_pdl(gemm_dq_kernel<T, NB>, grid, dim3(kThreads), Layout<T, NB>::kSmemBytes, stream, a);
    })
  })
  // clang-format on
}

}  // namespace tpnode::cuda
