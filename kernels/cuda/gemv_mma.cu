// Quantized matrix products for batches m = 2..kGemvMmaMaxBatch on int8 tensor cores (see
// gemv_mma.h).
#include "kernels/cuda/gemv_mma.h"

#include <cooperative_groups.h>
#include <cuda_fp16.h>

#include <algorithm>

#include "kernels/cuda/cp_async.cuh"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/dispatch.cuh"
#include "kernels/cuda/gemv.h"
#include "kernels/cuda/quant_blocks.cuh"

namespace tpnode::cuda {
namespace {

// ---- the work split ---------------------------------------------------------------------
// A CTA of kWarps warps owns kWarps * RT 16-row tiles of W (RT per warp) and one k range
// (its rank's share when the k axis is split over a cluster). It walks the range in tiles of
// staged activations: all m columns of x for kTileK values, copied to shared memory once
// (cp.async) and read by every warp from there. Per 32-value chunk a warp runs
// mma.m16n8k32 (s8 x s8 -> s32): A = 16 weight rows, B = 8 batch columns, so each weight byte
// is loaded once (straight into registers) for all columns.
//
// Fragments (g = lane / 4, t = lane % 4): a0 = A[g][4t..], a1 = A[g+8][4t..],
// a2 = A[g][16+4t..], a3 = A[g+8][16+4t..]; b0 = B[4t..][g], b1 = B[16+4t..][g];
// c0 = C[g][2t], c1 = C[g][2t+1], c2 = C[g+8][2t], c3 = C[g+8][2t+1]. The k order inside a
// chunk is free as long as A and B agree, so lane t takes chunk values 8t..8t+7 of both
// (a0/b0 = values 8t..8t+3, a2/b1 = values 8t+4..8t+7): one 8-byte load per row and column.
constexpr int kWarps = 4;
constexpr int kThreads = kWarps * 32;
constexpr int kMaxSplits = 8;  // the portable cluster size

__device__ __forceinline__ void mma_s8(int (&d)[4], int a0, int a1, int a2, int a3, int b0,
                                       int b1) {
  d[0] = d[1] = d[2] = d[3] = 0;
  asm volatile(
      "mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
      "{%8,%9}, {%0,%1,%2,%3};\n"
      : "+r"(d[0]), "+r"(d[1]), "+r"(d[2]), "+r"(d[3])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

// Q6_K's chunk in its two 16-value halves, each with its own scale: lanes t < 2 hold values
// 0..15 (frag's order), t >= 2 values 16..31, so each MMA zeroes the other half's lanes.
__device__ __forceinline__ void mma_s8_halves(int (&lo)[4], int (&hi)[4], int2 a0, int2 a1,
                                              int2 b, int t) {
  const bool first = t < 2;
  mma_s8(lo, first ? a0.x : 0, first ? a1.x : 0, first ? a0.y : 0, first ? a1.y : 0, b.x, b.y);
  mma_s8(hi, first ? 0 : a0.x, first ? 0 : a1.x, first ? 0 : a0.y, first ? 0 : a1.y, b.x, b.y);
}

// d = A(16x8, f16) * B(8x8, f16) in f32: a0 = {A[g][2t], A[g][2t+1]}, a1 = rows g + 8,
// b = {B[2t][g], B[2t+1][g]}; d as mma_s8's.
__device__ __forceinline__ void mma_f16_k8(float (&d)[4], unsigned a0, unsigned a1, unsigned b) {
  asm volatile(
      "mma.sync.aligned.m16n8k8.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5}, {%6}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a0), "r"(a1), "r"(b));
}

// Two chunks' integer activation sums (s / d of staged {d, s} pairs) as f16: exact up to
// 2048 in magnitude, within one of the sum up to the 32 * 127 a chunk can reach.
__device__ __forceinline__ unsigned sum_pair(float2 c0, float2 c1) {
  // s = d * sum rounded once: the quotient is within 1e-6 of the integer, so a fast
  // division rounds back to it exactly.
  const float s0 = c0.x > 0.0f ? rintf(__fdividef(c0.y, c0.x)) : 0.0f;
  const float s1 = c1.x > 0.0f ? rintf(__fdividef(c1.y, c1.x)) : 0.0f;
  const __half2 h = __floats2half2_rn(s0, s1);
  return *reinterpret_cast<const unsigned*>(&h);
}

__device__ __forceinline__ int2 ld_i64(const uint8_t* p) { return *reinterpret_cast<const int2*>(p); }
__device__ __forceinline__ float half_lo(int w) {
  return __half2float(__ushort_as_half(static_cast<unsigned short>(w & 0xFFFF)));
}
__device__ __forceinline__ float half_hi(int w) {
  return __half2float(__ushort_as_half(static_cast<unsigned short>((w >> 16) & 0xFFFF)));
}
__device__ __forceinline__ int nib(int w, int shift) { return (w >> shift) & 0x0F0F0F0F; }
__device__ __forceinline__ int sub4(int w, unsigned v) {
  return static_cast<int>(__vsub4(static_cast<unsigned>(w), v));
}
// Byte i (compile-time after unrolling) of four packed words.
__device__ __forceinline__ int byte_of(const int4& w, int i) {
  const int word = i < 4 ? w.x : i < 8 ? w.y : i < 12 ? w.z : w.w;
  return (word >> (8 * (i % 4))) & 0xFF;
}

// ---- per weight type ----------------------------------------------------------------------
// A group is one block of one row: what a lane loads per row and step (load); kChunks
// 32-value chunks per group. frag(r, c, t): signed values 8t..8t+7 of chunk c. scale(r, c):
// (d, m) with the chunk's dot = d * xd * sum(w_q * x_q) + m * xs. Q6_K's chunks hold two
// 16-value groups with int8 scales of their own (kHalves = 2: one MMA each, sc(r, c, half)).
template <TensorType T>
struct Mma;

template <>
struct Mma<TensorType::kQ4_0> {
  static constexpr int kChunks = 1, kHalves = 1;
  static constexpr bool kHasMin = false;
  struct Regs { int2 q; float d; };
  __device__ static Regs load(const uint8_t* q, const uint8_t* s, int g, int t) {
    return {ld_i64(q + g * 16 + 8 * (t & 1)), quant::ld_half(s + g * 2)};
  }
  __device__ static int2 frag(const Regs& r, int, int t) {
    const int sh = (t & 2) * 2;
    return {sub4(nib(r.q.x, sh), 0x08080808u), sub4(nib(r.q.y, sh), 0x08080808u)};
  }
  __device__ static float2 scale(const Regs& r, int) { return {r.d, 0.0f}; }
};

template <>
struct Mma<TensorType::kQ4_1> {
  static constexpr int kChunks = 1, kHalves = 1;
  static constexpr bool kHasMin = true;
  struct Regs { int2 q; int dm; };
  __device__ static Regs load(const uint8_t* q, const uint8_t* s, int g, int t) {
    return {ld_i64(q + g * 16 + 8 * (t & 1)), quant::ld_i32(s + g * 4)};
  }
  __device__ static int2 frag(const Regs& r, int, int t) {
    const int sh = (t & 2) * 2;
    return {nib(r.q.x, sh), nib(r.q.y, sh)};
  }
  __device__ static float2 scale(const Regs& r, int) { return {half_lo(r.dm), half_hi(r.dm)}; }
};

// Q5_0 / Q5_1 quant region: qh[4] then qs[16], 4-byte aligned.
template <bool kMin>
struct MmaQ5 {
  static constexpr int kChunks = 1, kHalves = 1;
  static constexpr bool kHasMin = kMin;
  struct Regs { int qh, q0, q1, s; };
  __device__ static Regs load(const uint8_t* q, const uint8_t* s, int g, int t) {
    const uint8_t* b = q + g * 20;
    return {quant::ld_i32(b), quant::ld_i32(b + 4 + 8 * (t & 1)), quant::ld_i32(b + 8 + 8 * (t & 1)),
            kMin ? quant::ld_i32(s + g * 4) : static_cast<int>(*reinterpret_cast<const uint16_t*>(s + g * 2))};
  }
  __device__ static int2 frag(const Regs& r, int, int t) {
    const int sh = (t & 2) * 2;
    int lo = nib(r.q0, sh) | quant::expand4(r.qh >> (8 * t));
    int hi = nib(r.q1, sh) | quant::expand4(r.qh >> (8 * t + 4));
    if (!kMin) {
      lo = sub4(lo, 0x10101010u);
      hi = sub4(hi, 0x10101010u);
    }
    return {lo, hi};
  }
  __device__ static float2 scale(const Regs& r, int) {
    return {half_lo(r.s), kMin ? half_hi(r.s) : 0.0f};
  }
};
template <>
struct Mma<TensorType::kQ5_0> : MmaQ5<false> {};
template <>
struct Mma<TensorType::kQ5_1> : MmaQ5<true> {};

template <>
struct Mma<TensorType::kQ8_0> {
  static constexpr int kChunks = 1, kHalves = 1;
  static constexpr bool kHasMin = false;
  struct Regs { int2 q; float d; };
  __device__ static Regs load(const uint8_t* q, const uint8_t* s, int g, int t) {
    return {ld_i64(q + g * 32 + 8 * t), quant::ld_half(s + g * 2)};
  }
  __device__ static int2 frag(const Regs& r, int, int) { return r.q; }
  __device__ static float2 scale(const Regs& r, int) { return {r.d, 0.0f}; }
};

// Q4_K / Q5_K: 16-byte header (d, dmin, 12 bytes of 6-bit scales and mins), then (Q5_K)
// qh[32] and qs[128]; chunk c is the low (c even) or high nibbles of qs[32(c/2)..+32).
template <bool kQ5>
struct MmaK {
  static constexpr int kChunks = 8, kHalves = 1;
  static constexpr bool kHasMin = true;
  static constexpr int kBlockBytes = kQ5 ? 176 : 144, kQsOff = kQ5 ? 48 : 16;
  struct Regs { int4 hdr; int2 q[4]; int2 qh; };
  __device__ static Regs load(const uint8_t* q, const uint8_t*, int g, int t) {
    const uint8_t* b = q + static_cast<int64_t>(g) * kBlockBytes;
    Regs r;
    r.hdr = quant::ld_i128(b);
#pragma unroll
    for (int j = 0; j < 4; ++j) r.q[j] = ld_i64(b + kQsOff + 32 * j + 8 * t);
    r.qh = kQ5 ? ld_i64(b + 16 + 8 * t) : int2{0, 0};
    return r;
  }
  __device__ static int2 frag(const Regs& r, int c, int) {
    const int sh = (c & 1) * 4;
    int2 v{nib(r.q[c / 2].x, sh), nib(r.q[c / 2].y, sh)};
    if (kQ5) {
      v.x |= ((r.qh.x >> c) & 0x01010101) << 4;
      v.y |= ((r.qh.y >> c) & 0x01010101) << 4;
    }
    return v;
  }
  // The 6-bit scale and min of chunk c (header bytes 4..15).
  __device__ static int2 sc_mn(const Regs& r, int c) {
    const quant::KScales k = quant::k_scales(r.hdr, c / 2);
    return (c & 1) ? int2{k.sc1, k.m1} : int2{k.sc0, k.m0};
  }
  __device__ static float2 scale(const Regs& r, int c) {
    const int2 sm = sc_mn(r, c);
    return {half_lo(r.hdr.x) * sm.x, -half_hi(r.hdr.x) * sm.y};
  }
  // Block accumulation: the block's d and dmin, chunk c's integer scale, and the 6-bit
  // mins of chunks c and c + 1 (c even, at run time) as an f16 pair.
  __device__ static float block_d(const Regs& r) { return half_lo(r.hdr.x); }
  __device__ static float block_dmin(const Regs& r) { return half_hi(r.hdr.x); }
  __device__ static int int_scale(const Regs& r, int c) { return sc_mn(r, c).x; }
  __device__ static unsigned mins_pair(const Regs& r, int c) {
    const quant::KScales k = quant::k_scales(r.hdr, c / 2);  // chunks c, c + 1 of item c / 2
    const __half2 h = __floats2half2_rn(static_cast<float>(k.m0), static_cast<float>(k.m1));
    return *reinterpret_cast<const unsigned*>(&h);
  }
};
template <>
struct Mma<TensorType::kQ4_K> : MmaK<false> {};
template <>
struct Mma<TensorType::kQ5_K> : MmaK<true> {};

// Q6_K quant region: ql[128], qh[64], int8 scales[16]; d in the scale region. Chunk c:
// half n = c/4, group g4 = c%4: low 4 bits from ql[64n + 32(g4&1) + l] (high nibble when
// g4 >= 2), 2 high bits from qh[32n + l] >> 2*g4, minus 32; values l < 16 and l >= 16 have
// scales[8n + 2*g4] and [8n + 2*g4 + 1].
template <>
struct Mma<TensorType::kQ6_K> {
  static constexpr int kChunks = 8, kHalves = 2;
  struct Regs { int2 ql[4]; int2 qh[2]; int4 sc; float d; };
  __device__ static Regs load(const uint8_t* q, const uint8_t* s, int g, int t) {
    const uint8_t* b = q + static_cast<int64_t>(g) * 208;
    Regs r;
#pragma unroll
    for (int j = 0; j < 4; ++j) r.ql[j] = ld_i64(b + 64 * (j / 2) + 32 * (j % 2) + 8 * t);
#pragma unroll
    for (int n = 0; n < 2; ++n) r.qh[n] = ld_i64(b + 128 + 32 * n + 8 * t);
    r.sc = quant::ld_i128(b + 192);
    r.d = quant::ld_half(s + g * 2);
    return r;
  }
  __device__ static int2 frag(const Regs& r, int c, int) {
    const int n = c / 4, g4 = c % 4;
    const int2 l = r.ql[2 * n + (g4 & 1)];
    const int2 h = r.qh[n];
    const int sh = (g4 >> 1) * 4;
    const int x = nib(l.x, sh) | (((h.x >> (2 * g4)) & 0x03030303) << 4);
    const int y = nib(l.y, sh) | (((h.y >> (2 * g4)) & 0x03030303) << 4);
    return {sub4(x, 0x20202020u), sub4(y, 0x20202020u)};
  }
  __device__ static int sc(const Regs& r, int c, int half) {
    return static_cast<int8_t>(byte_of(r.sc, 8 * (c / 4) + 2 * (c % 4) + half));
  }
  __device__ static float block_d(const Regs& r) { return r.d; }
};

// Groups loaded per warp and step: enough bytes in flight without spilling.
template <TensorType T, int RT>
constexpr int kGroupsInFlight = Mma<T>::kChunks >= 8 ? (RT == 1 ? 2 : 1) : (RT == 1 ? 8 : 4);

// ---- staged activations --------------------------------------------------------------------
// q [kCols][kStride] int8 (a row per batch column), then {xd, xs} [kK / 32][kCols] float2.
// kStride = kK + 32 bytes: the 8-byte B loads of a half-warp (4 columns x 32 bytes) hit 32
// distinct banks; the scale pair of columns 2t, 2t+1 is one 16-byte load.
template <int NB>
struct ActTile {
  static constexpr int kCols = NB * 8;
  static constexpr int kK = NB <= 2 ? 2048 : NB <= 4 ? 1024 : 512;
  static constexpr int kStride = kK + 32;
  static constexpr int kChunks = kK / 32;
  static constexpr int kQBytes = kCols * kStride;
  static constexpr int kBytes = kQBytes + kChunks * kCols * static_cast<int>(sizeof(float2));
  static_assert(kK % 256 == 0 && kStride % 128 == 32 && kQBytes % 16 == 0);
};

// The CTA's partial sums for the cluster reduction: [kCols][kRows + 4] floats (the pad
// spreads the fragment stores of a warp over the banks).
template <int NB, int RT>
struct RedTile {
  static constexpr int kRows = kWarps * RT * 16;
  static constexpr int kStride = kRows + 4;
  static constexpr int kBytes = NB * 8 * kStride * static_cast<int>(sizeof(float));
};

template <int NB, int RT>
constexpr int kSmemBytes = std::max(ActTile<NB>::kBytes, RedTile<NB, RT>::kBytes);

struct MmaArgs {
  GemvParams p;
  int n_groups = 0;  // blocks per weight row
  int splits = 1;    // CTAs along k per cluster
};

// Starts the copy of x[0..m)[k0, k0 + n) (n a multiple of 32, at most kK) into the tile.
template <int NB>
__device__ void stage_acts(const MmaArgs& a, int64_t k0, int n, uint8_t* smem) {
  using Tile = ActTile<NB>;
  const int m = static_cast<int>(a.p.m);
  const int64_t k = a.p.w.cols, kc = k / 32;
  const int pieces = n / 16;
  for (int i = threadIdx.x; i < m * pieces; i += kThreads) {
    const int col = i / pieces, pc = i % pieces;
    cp_async16(smem + col * Tile::kStride + pc * 16, a.p.xq.q + col * k + k0 + pc * 16);
  }
  auto* xs = reinterpret_cast<float2*>(smem + Tile::kQBytes);
  const int chunks = n / 32;
  const int64_t c0 = k0 / 32;
  for (int i = threadIdx.x; i < Tile::kCols * chunks; i += kThreads) {
    const int col = i / chunks, ch = i % chunks;  // consecutive threads: consecutive chunks
    float2* dst = xs + ch * Tile::kCols + col;
    if (col < m) {
      cp_async4(&dst->x, a.p.xq.d + col * kc + c0 + ch);
      cp_async4(&dst->y, a.p.xq.s + col * kc + c0 + ch);
    } else {
      *dst = make_float2(0.0f, 0.0f);  // padding columns contribute nothing
    }
  }
}

// minBlocks = 1: without it ptxas caps some variants near 128 registers and spills.
// kBlockAcc (K-quants, activations in 256-value groups): a block's chunks add their integer
// dot products times the chunk's integer scale, and the sum is converted once per block (the
// Q4_K/Q5_K min term: one f16 MMA per block). The per-chunk path converts and scales every
// chunk's MMA result, and I2F runs at a quarter of the FMA rate.
template <TensorType T, int NB, int RT, bool kBlockAcc>
__global__ void __launch_bounds__(kThreads, 1) gemv_mma_kernel(MmaArgs a) {
  using P = Mma<T>;
  using Tile = ActTile<NB>;
  using Red = RedTile<NB, RT>;
  constexpr int kBlock = P::kChunks * 32;  // values per group
  constexpr int kTileGroups = Tile::kK / kBlock;
  constexpr int U = kGroupsInFlight<T, RT>;
  extern __shared__ __align__(16) uint8_t smem[];
  const int8_t* xq_s = reinterpret_cast<const int8_t*>(smem);
  const float4* xs_s = reinterpret_cast<const float4*>(smem + Tile::kQBytes);

  const GemvParams& p = a.p;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int gid = lane / 4, t = lane % 4;
  const int split = static_cast<int>(blockIdx.x) % a.splits;
  const int64_t row_base = static_cast<int64_t>(blockIdx.x / a.splits) * Red::kRows;
  const int64_t rows = p.w.rows;
  const int g_begin = static_cast<int>(static_cast<int64_t>(a.n_groups) * split / a.splits);
  const int g_end = static_cast<int>(static_cast<int64_t>(a.n_groups) * (split + 1) / a.splits);

  // Rows g and g + 8 of each of the warp's tiles; rows past the end read the last row and
  // are not stored.
  const uint8_t* qrow[RT][2];
  const uint8_t* srow[RT][2];
#pragma unroll
  for (int rt = 0; rt < RT; ++rt) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int64_t row = row_base + (warp * RT + rt) * 16 + gid + 8 * h;
      const int64_t lr = row < rows ? row : rows - 1;
      qrow[rt][h] = p.w.q + lr * p.w.q_row_bytes;
      srow[rt][h] = p.w.s ? p.w.s + lr * p.w.s_row_bytes : nullptr;
    }
  }

  float acc[RT][NB][4];
#pragma unroll
  for (int rt = 0; rt < RT; ++rt) {
#pragma unroll
    for (int nt = 0; nt < NB; ++nt) {
#pragma unroll
      for (int i = 0; i < 4; ++i) acc[rt][nt][i] = 0.0f;
    }
  }

  for (int tg0 = g_begin; tg0 < g_end; tg0 += kTileGroups) {
    const int tg1 = min(tg0 + kTileGroups, g_end);
    stage_acts<NB>(a, static_cast<int64_t>(tg0) * kBlock, (tg1 - tg0) * kBlock, smem);
    for (int g0 = tg0; g0 < tg1; g0 += U) {
      typename P::Regs r[U][RT][2];
#pragma unroll
      for (int u = 0; u < U; ++u) {
        const int g = min(g0 + u, tg1 - 1);  // a repeated group is loaded, not used
#pragma unroll
        for (int rt = 0; rt < RT; ++rt) {
#pragma unroll
          for (int h = 0; h < 2; ++h) r[u][rt][h] = P::load(qrow[rt][h], srow[rt][h], g, t);
        }
      }
      // The tile's first weights are in flight while its activations land.
      if (g0 == tg0) {
        cp_async_commit();
        cp_async_wait<0>();
        __syncthreads();
      }
#pragma unroll
      for (int u = 0; u < U; ++u) {
        if (g0 + u >= tg1) break;
        // The block's integer sums (block accumulation only).
        int tot[RT][kBlockAcc ? NB : 1][4];
        if constexpr (kBlockAcc) {
#pragma unroll
          for (int rt = 0; rt < RT; ++rt) {
#pragma unroll
            for (int nt = 0; nt < NB; ++nt) {
#pragma unroll
              for (int i = 0; i < 4; ++i) tot[rt][nt][i] = 0;
            }
          }
        }
#pragma unroll
        for (int c = 0; c < P::kChunks; ++c) {
          const int chunk = (g0 + u - tg0) * P::kChunks + c;  // within the tile
          int2 af[RT][2];
          // Block accumulation: chunk c's integer scales of rows g and g + 8 (two per row for
          // Q6_K's halves), shared by every column tile.
          int isc[RT][2][2];
#pragma unroll
          for (int rt = 0; rt < RT; ++rt) {
#pragma unroll
            for (int h = 0; h < 2; ++h) {
              af[rt][h] = P::frag(r[u][rt][h], c, t);
              if constexpr (kBlockAcc && P::kHalves == 1) {
                isc[rt][h][0] = P::int_scale(r[u][rt][h], c);
              } else if constexpr (kBlockAcc) {
                isc[rt][h][0] = P::sc(r[u][rt][h], c, 0);
                isc[rt][h][1] = P::sc(r[u][rt][h], c, 1);
              }
            }
          }
          const int8_t* bq = xq_s + gid * Tile::kStride + chunk * 32 + 8 * t;
          const float4* bs = xs_s + (chunk * Tile::kCols + 2 * t) / 2;
#pragma unroll
          for (int nt = 0; nt < NB; ++nt) {
            const int2 b = *reinterpret_cast<const int2*>(bq + nt * 8 * Tile::kStride);
            const float4 xs = bs[nt * 4];  // {xd, xs} of columns 8nt + 2t and 8nt + 2t + 1
#pragma unroll
            for (int rt = 0; rt < RT; ++rt) {
              float* o = acc[rt][nt];
              const int2 a0 = af[rt][0], a1 = af[rt][1];
              if constexpr (kBlockAcc) {
                int* s = tot[rt][nt];
                if constexpr (P::kHalves == 1) {
                  int d[4];
                  mma_s8(d, a0.x, a1.x, a0.y, a1.y, b.x, b.y);
                  s[0] += d[0] * isc[rt][0][0];
                  s[1] += d[1] * isc[rt][0][0];
                  s[2] += d[2] * isc[rt][1][0];
                  s[3] += d[3] * isc[rt][1][0];
                } else {
                  int lo[4], hi[4];
                  mma_s8_halves(lo, hi, a0, a1, b, t);
                  s[0] += lo[0] * isc[rt][0][0] + hi[0] * isc[rt][0][1];
                  s[1] += lo[1] * isc[rt][0][0] + hi[1] * isc[rt][0][1];
                  s[2] += lo[2] * isc[rt][1][0] + hi[2] * isc[rt][1][1];
                  s[3] += lo[3] * isc[rt][1][0] + hi[3] * isc[rt][1][1];
                }
              } else if constexpr (P::kHalves == 1) {
                int d[4];
                mma_s8(d, a0.x, a1.x, a0.y, a1.y, b.x, b.y);
                const float2 w0 = P::scale(r[u][rt][0], c), w1 = P::scale(r[u][rt][1], c);
                o[0] += (w0.x * xs.x) * static_cast<float>(d[0]);
                o[1] += (w0.x * xs.z) * static_cast<float>(d[1]);
                o[2] += (w1.x * xs.x) * static_cast<float>(d[2]);
                o[3] += (w1.x * xs.z) * static_cast<float>(d[3]);
                if constexpr (P::kHasMin) {
                  o[0] += w0.y * xs.y;
                  o[1] += w0.y * xs.w;
                  o[2] += w1.y * xs.y;
                  o[3] += w1.y * xs.w;
                }
              } else {
                // One MMA per half, combined in integers before the one conversion.
                int lo[4], hi[4];
                mma_s8_halves(lo, hi, a0, a1, b, t);
                const typename P::Regs& r0 = r[u][rt][0];
                const typename P::Regs& r1 = r[u][rt][1];
                const int s0l = P::sc(r0, c, 0), s0h = P::sc(r0, c, 1);
                const int s1l = P::sc(r1, c, 0), s1h = P::sc(r1, c, 1);
                o[0] += (r0.d * xs.x) * static_cast<float>(lo[0] * s0l + hi[0] * s0h);
                o[1] += (r0.d * xs.z) * static_cast<float>(lo[1] * s0l + hi[1] * s0h);
                o[2] += (r1.d * xs.x) * static_cast<float>(lo[2] * s1l + hi[2] * s1h);
                o[3] += (r1.d * xs.z) * static_cast<float>(lo[3] * s1l + hi[3] * s1h);
              }
            }
          }
        }
        if constexpr (kBlockAcc) {
          // Every chunk of the block has the same activation scale xd: the first chunk's.
          // y += xd * (d * sum + min term), the min term -dmin * sum_c mn_c * sum(q_x in c)
          // as one f16 MMA over the block's 8 chunks (A = the 6-bit mins, B = the chunks'
          // integer activation sums: exact products, sums far below 2^24).
          const int chunk0 = (g0 + u - tg0) * P::kChunks;
          const float4* bs = xs_s + (chunk0 * Tile::kCols + 2 * t) / 2;
          const float2* bm = reinterpret_cast<const float2*>(xs_s) + (chunk0 + 2 * t) * Tile::kCols + gid;
#pragma unroll
          for (int rt = 0; rt < RT; ++rt) {
            const float d0 = P::block_d(r[u][rt][0]), d1 = P::block_d(r[u][rt][1]);
            unsigned am0 = 0, am1 = 0;
            float dm0 = 0.0f, dm1 = 0.0f;
            if constexpr (P::kHalves == 1) {
              am0 = P::mins_pair(r[u][rt][0], 2 * t);
              am1 = P::mins_pair(r[u][rt][1], 2 * t);
              dm0 = P::block_dmin(r[u][rt][0]);
              dm1 = P::block_dmin(r[u][rt][1]);
            }
#pragma unroll
            for (int nt = 0; nt < NB; ++nt) {
              const float4 xs = bs[nt * 4];
              float* o = acc[rt][nt];
              const int* s = tot[rt][nt];
              float mt[4] = {0.0f, 0.0f, 0.0f, 0.0f};
              if constexpr (P::kHalves == 1) {
                const float2 c0 = bm[nt * 8], c1 = bm[nt * 8 + Tile::kCols];
                mma_f16_k8(mt, am0, am1, sum_pair(c0, c1));
              }
              o[0] += xs.x * (d0 * static_cast<float>(s[0]) - dm0 * mt[0]);
              o[1] += xs.z * (d0 * static_cast<float>(s[1]) - dm0 * mt[1]);
              o[2] += xs.x * (d1 * static_cast<float>(s[2]) - dm1 * mt[2]);
              o[3] += xs.z * (d1 * static_cast<float>(s[3]) - dm1 * mt[3]);
            }
          }
        }
      }
    }
    __syncthreads();  // every warp is done with this tile before the next one lands
  }

  const int m = static_cast<int>(p.m);
  if (a.splits == 1) {
#pragma unroll
    for (int rt = 0; rt < RT; ++rt) {
#pragma unroll
      for (int nt = 0; nt < NB; ++nt) {
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          const int64_t row = row_base + (warp * RT + rt) * 16 + gid + (i < 2 ? 0 : 8);
          const int col = nt * 8 + 2 * t + (i & 1);
          if (row < rows && col < m) p.y[col * rows + row] = acc[rt][nt][i];
        }
      }
    }
    return;
  }
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  // Split k: each CTA leaves its partial tile in shared memory; CTA `split` of the cluster
  // adds rows [split, split + 1) * kRows / splits of all tiles in rank order (deterministic)
  // and writes them.
  namespace cg = cooperative_groups;
  cg::cluster_group cluster = cg::this_cluster();
  float* red = reinterpret_cast<float*>(smem);
#pragma unroll
  for (int rt = 0; rt < RT; ++rt) {
#pragma unroll
    for (int nt = 0; nt < NB; ++nt) {
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int row = (warp * RT + rt) * 16 + gid + (i < 2 ? 0 : 8);
        const int col = nt * 8 + 2 * t + (i & 1);
        red[col * Red::kStride + row] = acc[rt][nt][i];
      }
    }
  }
  cluster.sync();  // release/acquire: the partial tiles are visible cluster-wide
  const int r0 = Red::kRows * split / a.splits, r1 = Red::kRows * (split + 1) / a.splits;
  const int nr = r1 - r0;
  for (int i = threadIdx.x; i < nr * m; i += kThreads) {
    const int col = i / nr, row = r0 + i % nr;
    float v = 0.0f;
    for (int s = 0; s < a.splits; ++s) v += cluster.map_shared_rank(red, s)[col * Red::kStride + row];
    const int64_t grow = row_base + row;
    if (grow < rows) p.y[col * rows + grow] = v;
  }
  cluster.sync();  // no CTA leaves while another still reads its shared memory
#else
  __trap();  // the host plans k splits only on devices with clusters
#endif
}

struct DeviceFacts {
  int sms = 0;
  bool clusters = false;
};

DeviceFacts device_facts() {
  int dev = 0, sms = 0, major = 0;
  TPNODE_CUDA_CHECK(cudaGetDevice(&dev));
  TPNODE_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
  TPNODE_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev));
  return {sms, major >= 9};
}

template <TensorType T, int NB, int RT, bool kBlockAcc>
void launch(const MmaArgs& a, int64_t row_ctas, cudaStream_t stream) {
  constexpr int smem = kSmemBytes<NB, RT>;
  static_assert(smem <= 48 * 1024, "no opt-in shared memory needed");
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = dim3(static_cast<unsigned>(row_ctas * a.splits));
  cfg.blockDim = dim3(kThreads);
  cfg.dynamicSmemBytes = smem;
  cfg.stream = stream;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeClusterDimension;
  attr[0].val.clusterDim.x = static_cast<unsigned>(a.splits);
  attr[0].val.clusterDim.y = 1;
  attr[0].val.clusterDim.z = 1;
  cfg.attrs = attr;
  cfg.numAttrs = a.splits > 1 ? 1 : 0;
  TPNODE_CUDA_CHECK(cudaLaunchKernelEx(&cfg, gemv_mma_kernel<T, NB, RT, kBlockAcc>, a));
}

// Column tiles of 8: NB = ceil(m / 8), each a compile-time constant.
#define TPNODE_DISPATCH_MMA_TILES(nb, NB, ...)                                      \
  switch (nb) {                                                                     \
    case 1: { constexpr int NB = 1; __VA_ARGS__ } break;                            \
    case 2: { constexpr int NB = 2; __VA_ARGS__ } break;                            \
    case 3: { constexpr int NB = 3; __VA_ARGS__ } break;                            \
    case 4: { constexpr int NB = 4; __VA_ARGS__ } break;                            \
    case 5: { constexpr int NB = 5; __VA_ARGS__ } break;                            \
    case 6: { constexpr int NB = 6; __VA_ARGS__ } break;                            \
    case 7: { constexpr int NB = 7; __VA_ARGS__ } break;                            \
    case 8: { constexpr int NB = 8; __VA_ARGS__ } break;                            \
    default: TPNODE_THROW(ErrorKind::kUnsupported, "gemv_mma: {} column tiles", (nb)); \
  }

}  // namespace

bool gemv_mma_block_accumulates(const GemvParams& p) {
  return p.xq.group == 256 && gemv_mma_block_type(p.w.type);
}

GemvMmaPlan gemv_mma_plan(const GemvParams& p) {
  const DeviceFacts dev = device_facts();
  const int64_t block = split_layout(p.w.type).block_size;
  const int64_t n_groups = p.w.cols / block;
  // Several CTAs per SM, so that one CTA's activation staging overlaps another's loads.
  const int64_t want = 3 * static_cast<int64_t>(dev.sms);
  GemvMmaPlan plan;
  const int64_t big_ctas = (p.w.rows + 127) / 128;
  plan.row_tiles_per_warp = 2 * big_ctas >= dev.sms ? 2 : 1;
  // Block accumulation keeps a second set of accumulators (the block's integer sums): two
  // row tiles of more than four column tiles would not fit the registers.
  if (gemv_mma_block_accumulates(p) && p.m > 32) plan.row_tiles_per_warp = 1;
  const int64_t row_ctas = (p.w.rows + 64 * plan.row_tiles_per_warp - 1) / (64 * plan.row_tiles_per_warp);
  // Split k over the CTAs of a cluster while the row tiles alone leave SMs idle (small
  // matrices, batches 2-16): the partial tiles add up through distributed shared memory.
  if (dev.clusters) {
    while (plan.k_splits < kMaxSplits && row_ctas * plan.k_splits < want &&
           2 * plan.k_splits <= n_groups) {
      plan.k_splits *= 2;
    }
  }
  return plan;
}

void gemv_mma(const GemvParams& p, cudaStream_t stream) { gemv_mma(p, gemv_mma_plan(p), stream); }

void gemv_mma(const GemvParams& p, const GemvMmaPlan& plan, cudaStream_t stream) {
  TPNODE_CHECK(is_quantized(p.w.type), "gemv_mma: {} weights are not quantized",
               weight_type_label(p.w.type));
  TPNODE_CHECK(p.m >= 2 && p.m <= kGemvMmaMaxBatch, "gemv_mma: batch {} outside 2..{}", p.m,
               kGemvMmaMaxBatch);
  TPNODE_CHECK(p.w.rows > 0 && p.w.cols > 0, "gemv_mma: empty {}x{} matrix", p.w.rows, p.w.cols);
  TPNODE_CHECK(reinterpret_cast<uintptr_t>(p.xq.q) % 16 == 0,
               "gemv_mma: quantized activations not 16-byte aligned");
  TPNODE_CHECK(plan.row_tiles_per_warp == 1 || plan.row_tiles_per_warp == 2,
               "gemv_mma: {} row tiles per warp (1 or 2)", plan.row_tiles_per_warp);
  const int64_t n_groups = p.w.cols / split_layout(p.w.type).block_size;
  TPNODE_CHECK(plan.k_splits == 1 || plan.k_splits == 2 || plan.k_splits == 4 ||
                   plan.k_splits == kMaxSplits,
               "gemv_mma: {} k splits (1, 2, 4 or 8)", plan.k_splits);
  TPNODE_CHECK(plan.k_splits <= n_groups, "gemv_mma: {} k splits for {} blocks per row",
               plan.k_splits, n_groups);
  TPNODE_CHECK(plan.k_splits == 1 || device_facts().clusters,
               "gemv_mma: k splits need thread-block clusters (compute capability 9.0)");
  MmaArgs a;
  a.p = p;
  a.n_groups = static_cast<int>(n_groups);
  a.splits = plan.k_splits;
  const int64_t rows_per_cta = 64 * plan.row_tiles_per_warp;
  const int64_t row_ctas = (p.w.rows + rows_per_cta - 1) / rows_per_cta;
  const int nb = static_cast<int>((p.m + 7) / 8);
  const bool block_acc = gemv_mma_block_accumulates(p);
  TPNODE_DISPATCH_QUANT_TYPE(p.w.type, T, {
    TPNODE_DISPATCH_MMA_TILES(nb, NB, {
      if constexpr (gemv_mma_block_type(T)) {
        if (block_acc) {
          if (plan.row_tiles_per_warp == 1) {
            launch<T, NB, 1, true>(a, row_ctas, stream);
          } else {
            launch<T, NB, 2, true>(a, row_ctas, stream);
          }
          return;
        }
      }
      if (plan.row_tiles_per_warp == 1) {
        launch<T, NB, 1, false>(a, row_ctas, stream);
      } else {
        launch<T, NB, 2, false>(a, row_ctas, stream);
      }
    })
  })
}

}  // namespace tpnode::cuda
