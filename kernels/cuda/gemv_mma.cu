// Quantized GEMV for batches m = 2..kGemvMaxBatch on int8 tensor cores (see gemv.h).
#include "kernels/cuda/gemv.h"

#include <cuda_fp16.h>

#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/dispatch.cuh"
#include "kernels/cuda/quant_blocks.cuh"

namespace tpnode::cuda {
namespace {

// ---- quantized W, m = 2..16: int8 tensor cores ---------------------------------------
// One CTA per 16-row tile of W; its warps split the k axis and sum in a fixed order at the
// end. Per 32-value chunk a warp runs mma.m16n8k32 (s8 x s8 -> s32): A = 16 weight rows,
// B = 8 batch columns; each weight byte is read once for all columns, and the integer dot
// products cost one instruction per chunk instead of 8 dp4a per column.
//
// Fragments (g = lane / 4, t = lane % 4): a0 = A[g][4t..], a1 = A[g+8][4t..],
// a2 = A[g][16+4t..], a3 = A[g+8][16+4t..]; b0 = B[4t..][g], b1 = B[16+4t..][g];
// c0 = C[g][2t], c1 = C[g][2t+1], c2 = C[g+8][2t], c3 = C[g+8][2t+1]. The k order inside a
// chunk is free as long as A and B agree, so lane t takes chunk values 8t..8t+7 of both
// (a0/b0 = values 8t..8t+3, a2/b1 = values 8t+4..8t+7): one 8-byte load per row and column.
constexpr int kMmaWarps = 8;
constexpr int kMmaRows = 16;

__device__ __forceinline__ void mma_s8(int (&d)[4], int a0, int a1, int a2, int a3, int b0,
                                       int b1) {
  d[0] = d[1] = d[2] = d[3] = 0;
  asm volatile(
      "mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
      "{%8,%9}, {%0,%1,%2,%3};\n"
      : "+r"(d[0]), "+r"(d[1]), "+r"(d[2]), "+r"(d[3])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
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

// Per type: a group is what one lane loads of one row per step (one block); kChunks
// 32-value chunks per group. frag(r, c, t): signed values 8t..8t+7 of chunk c. scale(r, c):
// (d, m) with the chunk's dot = d * xd * sum(w_q * x_q) + m * xs. Q6_K's chunks hold two
// 16-value groups with their own scales (kHalves = 2: one MMA each, scale16 for each).
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
  __device__ static float2 scale(const Regs& r, int c) {
    // Scale bytes are header bytes 4..15.
    int sc, mn;
    if (c < 4) {
      sc = byte_of(r.hdr, 4 + c) & 63;
      mn = byte_of(r.hdr, 8 + c) & 63;
    } else {
      sc = (byte_of(r.hdr, 8 + c) & 0xF) | ((byte_of(r.hdr, c) >> 6) << 4);
      mn = (byte_of(r.hdr, 8 + c) >> 4) | ((byte_of(r.hdr, 4 + c) >> 6) << 4);
    }
    return {half_lo(r.hdr.x) * sc, -half_hi(r.hdr.x) * mn};
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
  __device__ static float scale16(const Regs& r, int c, int half) {
    const int i = 8 * (c / 4) + 2 * (c % 4) + half;
    return r.d * static_cast<float>(static_cast<int8_t>(byte_of(r.sc, i)));
  }
};

template <TensorType T, int NB>
__global__ void __launch_bounds__(kMmaWarps * 32) gemv_mma_kernel(GemvParams p) {
  using P = Mma<T>;
  constexpr int U = P::kChunks >= 8 ? 1 : 4;  // groups in flight per warp and step
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int gid = lane / 4, t = lane % 4;
  const int64_t rows = p.w.rows, k = p.w.cols, kc = k / 32;
  const int64_t row0 = static_cast<int64_t>(blockIdx.x) * kMmaRows + gid;
  const int64_t row1 = row0 + 8;
  // Rows past the end read the last row and are not stored.
  const int64_t lr0 = row0 < rows ? row0 : rows - 1, lr1 = row1 < rows ? row1 : rows - 1;
  const uint8_t* q0 = p.w.q + lr0 * p.w.q_row_bytes;
  const uint8_t* q1 = p.w.q + lr1 * p.w.q_row_bytes;
  const uint8_t* s0 = p.w.s ? p.w.s + lr0 * p.w.s_row_bytes : nullptr;
  const uint8_t* s1 = p.w.s ? p.w.s + lr1 * p.w.s_row_bytes : nullptr;
  const int n_groups = static_cast<int>(kc / P::kChunks);

  float acc[NB][4];
#pragma unroll
  for (int nt = 0; nt < NB; ++nt) {
#pragma unroll
    for (int i = 0; i < 4; ++i) acc[nt][i] = 0.0f;
  }

  for (int g0 = warp * U; g0 < n_groups; g0 += kMmaWarps * U) {
    typename P::Regs r0[U], r1[U];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int g = min(g0 + u, n_groups - 1);  // a repeated group is loaded, not used
      r0[u] = P::load(q0, s0, g, t);
      r1[u] = P::load(q1, s1, g, t);
    }
#pragma unroll
    for (int u = 0; u < U; ++u) {
      if (g0 + u >= n_groups) break;
#pragma unroll
      for (int c = 0; c < P::kChunks; ++c) {
        const int64_t chunk = static_cast<int64_t>(g0 + u) * P::kChunks + c;
        const int2 a = P::frag(r0[u], c, t), b = P::frag(r1[u], c, t);
#pragma unroll
        for (int nt = 0; nt < NB; ++nt) {
          const int col = nt * 8 + gid;
          int2 x{0, 0};
          if (col < p.m) x = ld_i64(reinterpret_cast<const uint8_t*>(p.xq.q) + col * k + chunk * 32 + 8 * t);
          const int j0 = nt * 8 + 2 * t, j1 = j0 + 1;
          const float xd0 = j0 < p.m ? p.xq.d[j0 * kc + chunk] : 0.0f;
          const float xd1 = j1 < p.m ? p.xq.d[j1 * kc + chunk] : 0.0f;
          if constexpr (P::kHalves == 1) {
            int d[4];
            mma_s8(d, a.x, b.x, a.y, b.y, x.x, x.y);
            const float2 w0 = P::scale(r0[u], c), w1 = P::scale(r1[u], c);
            acc[nt][0] += w0.x * xd0 * static_cast<float>(d[0]);
            acc[nt][1] += w0.x * xd1 * static_cast<float>(d[1]);
            acc[nt][2] += w1.x * xd0 * static_cast<float>(d[2]);
            acc[nt][3] += w1.x * xd1 * static_cast<float>(d[3]);
            if constexpr (P::kHasMin) {
              const float xs0 = j0 < p.m ? p.xq.s[j0 * kc + chunk] : 0.0f;
              const float xs1 = j1 < p.m ? p.xq.s[j1 * kc + chunk] : 0.0f;
              acc[nt][0] += w0.y * xs0;
              acc[nt][1] += w0.y * xs1;
              acc[nt][2] += w1.y * xs0;
              acc[nt][3] += w1.y * xs1;
            }
          } else {
            // Lanes t < 2 hold values 0..15 (first scale), t >= 2 values 16..31.
            const bool first = t < 2;
            int lo[4], hi[4];
            mma_s8(lo, first ? a.x : 0, first ? b.x : 0, first ? a.y : 0, first ? b.y : 0, x.x, x.y);
            mma_s8(hi, first ? 0 : a.x, first ? 0 : b.x, first ? 0 : a.y, first ? 0 : b.y, x.x, x.y);
            const float w0l = P::scale16(r0[u], c, 0), w0h = P::scale16(r0[u], c, 1);
            const float w1l = P::scale16(r1[u], c, 0), w1h = P::scale16(r1[u], c, 1);
            acc[nt][0] += xd0 * (w0l * static_cast<float>(lo[0]) + w0h * static_cast<float>(hi[0]));
            acc[nt][1] += xd1 * (w0l * static_cast<float>(lo[1]) + w0h * static_cast<float>(hi[1]));
            acc[nt][2] += xd0 * (w1l * static_cast<float>(lo[2]) + w1h * static_cast<float>(hi[2]));
            acc[nt][3] += xd1 * (w1l * static_cast<float>(lo[3]) + w1h * static_cast<float>(hi[3]));
          }
        }
      }
    }
  }

  // The warps' partial sums, added in warp order: bitwise repeatable.
  __shared__ float red[kMmaWarps][NB * 4][32];
#pragma unroll
  for (int nt = 0; nt < NB; ++nt) {
#pragma unroll
    for (int i = 0; i < 4; ++i) red[warp][nt * 4 + i][lane] = acc[nt][i];
  }
  __syncthreads();
  if (warp != 0) return;
#pragma unroll
  for (int nt = 0; nt < NB; ++nt) {
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      float v = 0.0f;
#pragma unroll
      for (int w = 0; w < kMmaWarps; ++w) v += red[w][nt * 4 + i][lane];
      const int64_t row = i < 2 ? row0 : row1;
      const int col = nt * 8 + 2 * t + (i & 1);
      if (row < rows && col < p.m) p.y[col * rows + row] = v;
    }
  }
}

}  // namespace

void gemv_mma(const GemvParams& p, cudaStream_t stream) {
  const unsigned tiles = static_cast<unsigned>((p.w.rows + kMmaRows - 1) / kMmaRows);
    TPNODE_DISPATCH_QUANT_TYPE(p.w.type, T, {
      if (p.m <= 8) {
        gemv_mma_kernel<T, 1><<<tiles, kMmaWarps * 32, 0, stream>>>(p);
      } else {
        gemv_mma_kernel<T, 2><<<tiles, kMmaWarps * 32, 0, stream>>>(p);
      }
    })
  TPNODE_CUDA_CHECK_LAUNCH();
}

}  // namespace tpnode::cuda
