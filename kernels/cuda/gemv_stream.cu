// Batch-1 quantized GEMV streaming weights through shared memory (see gemv_stream.h).
//
// Work split: one CTA of kWarps warps per SM; global warp w owns rows
// [w * rows / W, (w + 1) * rows / W) of the group (balanced to the row). A warp walks its rows
// in tiles of R rows, each row cut into S segments of G "steps" (a step = 1024 values: 32
// lanes x 32 values); one tile segment fills one slot of the warp's private ring of K
// shared-memory slots. The warp is its own producer: lane r issues TMA bulk copies of row r's
// quant and scale bytes into the slot, whose mbarrier counts the bytes; after computing a
// slot the warp refills it with the segment K ahead. No CTA-wide barrier after the prologue.
//
// A bulk copy moves 16-byte granules: a row segment [a, b) is copied as [a & ~15, ceil16(b))
// so that shared memory keeps each byte's global address mod 16 and every in-block vector
// load stays aligned. A granule that holds a valid byte never crosses a page, so the few
// extra bytes read at either end are mapped memory; they are never used.
//
// Lanes own fixed positions within a step (one 32-value block each, or one eighth of a
// 256-value K block) and read their weights as contiguous 16-byte pieces, so shared loads are
// conflict-free. The activations are staged once per CTA in a per-type permuted layout where
// lane L's two 16-value pieces of step g sit at [g][0][L] and [g][1][L]; two rows are
// computed per pass so each activation load serves both.
#include "kernels/cuda/gemv_stream.h"

#include <cuda_fp16.h>

#include <algorithm>
#include <array>
#include <atomic>

#include "kernels/cuda/bulk_copy.cuh"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/device_query.h"
#include "kernels/cuda/dispatch.cuh"
#include "kernels/cuda/gemv_rows.cuh"
#include "kernels/cuda/pdl.cuh"
#include "kernels/cuda/quant_blocks.cuh"
#include "kernels/cuda/warp_reduce.cuh"

namespace tpnode::cuda {
namespace {

constexpr int kWarps = 16;
constexpr int kThreads = kWarps * 32;
constexpr int kStepVals = 2048;     // values per warp step: 32 lanes x 64
constexpr int kRowBatch = 2;        // rows per pass sharing one activation load
constexpr int kMaxSlots = 8;        // ring depth bound (mbarriers reserved per warp)
constexpr int kMinSlots = 2;
constexpr int kTargetSlotBytes = 4096;
constexpr int kMaxTileRows = 32;    // lane r copies row r of a tile
constexpr int kBarBytes = kWarps * kMaxSlots * 8;
static_assert(kBarBytes % 16 == 0, "slots and activations start 16-byte aligned");
static_assert(kMaxTileRows <= 32 && kMaxTileRows % kRowBatch == 0, "one copying lane per row");

// ---- per-type lane layout --------------------------------------------------------------
// A lane takes 64 values of every step: two 32-value blocks (L and L + 32 of the step's 64)
// or one quarter of a 256-value K block (block L / 4, quarter L % 4: the work item of
// quant::Policy). Its activations are four 16-value pieces.
template <TensorType T>
struct Layout {
  using P = quant::Policy<T>;
  static constexpr int kBlock = P::kBlock, kQBytes = P::kQBytes, kSBytes = P::kSBytes;
  static constexpr bool kKQuant = kBlock == 256;
  static constexpr int kBlocksPerStep = kStepVals / kBlock;
  static_assert(kKQuant ? kBlocksPerStep * 4 == 32 : kBlocksPerStep == 64, "32 lanes x 64 values");
  // Types whose dot product needs the chunks' scaled sums (a min or offset term).
  static constexpr bool kUsesSums = T != TensorType::kQ8_0 && T != TensorType::kQ6_K;
  // Q6_K takes its -32 offset out of the integer sums with each piece's sum of activations
  // (kept where the others keep the scaled sums).
  static constexpr bool kPieceSums = T == TensorType::kQ6_K;
};

// Column (from the step start) of lane `lane`'s activation piece j (0..3).
template <TensorType T>
__device__ __forceinline__ int piece_col(int lane, int j) {
  if constexpr (!Layout<T>::kKQuant) {
    return 32 * (lane + 32 * (j / 2)) + 16 * (j % 2);  // block lane + 32u: halves
  } else if constexpr (T == TensorType::kQ6_K) {
    // Quarter p = 2n + h: values 128n + 32g + 16h + i of groups g = 0..3.
    const int b = lane / 4, p = lane % 4;
    return 256 * b + 128 * (p / 2) + 32 * j + 16 * (p % 2);
  } else {
    // Q4_K / Q5_K quarter p: values 64p .. 64p + 63 (sub-blocks 2p and 2p + 1).
    return 256 * (lane / 4) + 64 * (lane % 4) + 16 * j;
  }
}

// A lane's activations for one step: four pieces of 16 int8, and per piece the scale (d) and
// scaled sum (s) of its 32-value chunk, or (Q6_K) the piece's own integer sum.
struct Acts {
  int4 x[4];
  float4 d, s;
  int4 sums;
};

__device__ __forceinline__ int4 lds128(const uint8_t* p) { return *reinterpret_cast<const int4*>(p); }
__device__ __forceinline__ int lds32(const uint8_t* p) { return *reinterpret_cast<const int*>(p); }
__device__ __forceinline__ float ld_half(const uint8_t* p) {
  return __half2float(*reinterpret_cast<const __half*>(p));
}
__device__ __forceinline__ float2 ld_half2(const uint8_t* p) {
  return __half22float2(*reinterpret_cast<const __half2*>(p));
}

// acc + sum over 16 values: four weight words against four activation words.
__device__ __forceinline__ int dp16(int w0, int w1, int w2, int w3, const int4& x, int acc) {
  acc = __dp4a(w0, x.x, acc);
  acc = __dp4a(w1, x.y, acc);
  acc = __dp4a(w2, x.z, acc);
  return __dp4a(w3, x.w, acc);
}
__device__ __forceinline__ int dp16_lo(const int4& w, const int4& x, int acc) {
  using quant::nib_lo;
  return dp16(nib_lo(w.x), nib_lo(w.y), nib_lo(w.z), nib_lo(w.w), x, acc);
}
__device__ __forceinline__ int dp16_hi(const int4& w, const int4& x, int acc) {
  using quant::nib_hi;
  return dp16(nib_hi(w.x), nib_hi(w.y), nib_hi(w.z), nib_hi(w.w), x, acc);
}

// ---- per-type dot products (qb, sb: a block in shared memory) ---------------------------
// 32-value blocks: unit() is one block against pieces xa (values 0..15) and xb (16..31).
template <TensorType T>
struct Dot;

template <>
struct Dot<TensorType::kQ4_0> {
  __device__ static float unit(const uint8_t* qb, const uint8_t* sb, const int4& xa,
                               const int4& xb, float d, float s) {
    const int4 w = lds128(qb);
    const int sum = dp16_hi(w, xb, dp16_lo(w, xa, 0));
    return ld_half(sb) * (d * sum - 8.0f * s);
  }
};

template <>
struct Dot<TensorType::kQ4_1> {
  __device__ static float unit(const uint8_t* qb, const uint8_t* sb, const int4& xa,
                               const int4& xb, float d, float s) {
    const int4 w = lds128(qb);
    const int sum = dp16_hi(w, xb, dp16_lo(w, xa, 0));
    const float2 dm = ld_half2(sb);
    return dm.x * d * sum + dm.y * s;
  }
};

// Bits 0..3 of b to bit 4 of bytes 0..3 (one multiply: the four shifted copies of the
// nibble do not overlap, so no carries).
__device__ __forceinline__ int spread4(int b) { return ((b & 0xF) * 0x02040810) & 0x10101010; }

// Q5_0 / Q5_1 blocks (qh[4], qs[16]) are 20 bytes: 4-byte loads.
__device__ __forceinline__ int q5_sum(const uint8_t* qb, const int4& xa, const int4& xb) {
  using quant::nib_hi;
  using quant::nib_lo;
  const int qh = lds32(qb);
  int lo[4], hi[4];
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int w = lds32(qb + 4 + 4 * i);
    lo[i] = nib_lo(w) | spread4(qh >> (4 * i));
    hi[i] = nib_hi(w) | spread4(qh >> (4 * i + 16));
  }
  return dp16(hi[0], hi[1], hi[2], hi[3], xb, dp16(lo[0], lo[1], lo[2], lo[3], xa, 0));
}

template <>
struct Dot<TensorType::kQ5_0> {
  __device__ static float unit(const uint8_t* qb, const uint8_t* sb, const int4& xa,
                               const int4& xb, float d, float s) {
    return ld_half(sb) * (d * q5_sum(qb, xa, xb) - 16.0f * s);
  }
};

template <>
struct Dot<TensorType::kQ5_1> {
  __device__ static float unit(const uint8_t* qb, const uint8_t* sb, const int4& xa,
                               const int4& xb, float d, float s) {
    const float2 dm = ld_half2(sb);
    return dm.x * d * q5_sum(qb, xa, xb) + dm.y * s;
  }
};

template <>
struct Dot<TensorType::kQ8_0> {
  __device__ static float unit(const uint8_t* qb, const uint8_t* sb, const int4& xa,
                               const int4& xb, float d, float) {
    const int4 w0 = lds128(qb), w1 = lds128(qb + 16);
    const int sum = dp16(w1.x, w1.y, w1.z, w1.w, xb, dp16(w0.x, w0.y, w0.z, w0.w, xa, 0));
    return ld_half(sb) * d * sum;
  }
};

// K blocks: item() is quarter p of a block against the lane's four pieces.
// Q4_K / Q5_K: d * (sc0 * s0 * xd0 + sc1 * s1 * xd1) - dmin * (m0 * xs0 + m1 * xs1), the
// integer products exact.
__device__ __forceinline__ float k4_combine(const int4& hd, int p, int s0, int s1, const Acts& x) {
  const quant::KScales ks = quant::k_scales(hd, p);
  const float2 dm = __half22float2(*reinterpret_cast<const __half2*>(&hd.x));
  const float v = static_cast<float>(ks.sc0 * s0) * x.d.x + static_cast<float>(ks.sc1 * s1) * x.d.z;
  const float mins = static_cast<float>(ks.m0) * x.s.x + static_cast<float>(ks.m1) * x.s.z;
  return dm.x * v - dm.y * mins;
}

template <>
struct Dot<TensorType::kQ4_K> {
  // Block: d, dmin, scales[12], qs[128]; quarter p: low nibbles of qs[32p..32p+32) are
  // sub-block 2p, high nibbles sub-block 2p + 1.
  __device__ static float item(const uint8_t* qb, const uint8_t*, int p, const Acts& x) {
    const int4 hd = lds128(qb);
    const int4 q0 = lds128(qb + 16 + 32 * p), q1 = lds128(qb + 32 + 32 * p);
    const int s0 = dp16_lo(q1, x.x[1], dp16_lo(q0, x.x[0], 0));
    const int s1 = dp16_hi(q1, x.x[3], dp16_hi(q0, x.x[2], 0));
    return k4_combine(hd, p, s0, s1, x);
  }
};

template <>
struct Dot<TensorType::kQ5_K> {
  // Block: d, dmin, scales[12], qh[32], qs[128]; bit c of qh[l] is the fifth bit of value l
  // of sub-block c.
  __device__ static float item(const uint8_t* qb, const uint8_t*, int p, const Acts& x) {
    using quant::nib_hi;
    using quant::nib_lo;
    const int4 hd = lds128(qb);
    const int4 h0 = lds128(qb + 16), h1 = lds128(qb + 32);
    const int4 q0 = lds128(qb + 48 + 32 * p), q1 = lds128(qb + 64 + 32 * p);
    const int w[8] = {q0.x, q0.y, q0.z, q0.w, q1.x, q1.y, q1.z, q1.w};
    const int h[8] = {h0.x, h0.y, h0.z, h0.w, h1.x, h1.y, h1.z, h1.w};
    int lo[8], hi[8];
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      lo[i] = nib_lo(w[i]) | (((h[i] >> (2 * p)) & 0x01010101) << 4);
      hi[i] = nib_hi(w[i]) | (((h[i] >> (2 * p + 1)) & 0x01010101) << 4);
    }
    const int s0 = dp16(lo[4], lo[5], lo[6], lo[7], x.x[1], dp16(lo[0], lo[1], lo[2], lo[3], x.x[0], 0));
    const int s1 = dp16(hi[4], hi[5], hi[6], hi[7], x.x[3], dp16(hi[0], hi[1], hi[2], hi[3], x.x[2], 0));
    return k4_combine(hd, p, s0, s1, x);
  }
};

template <>
struct Dot<TensorType::kQ6_K> {
  // Quant region: ql[128], qh[64], int8 scales[16]; d in the scale region. Quarter
  // p = 2n + h: group g (piece g) is value l + 32g of half n for l in [16h, 16h + 16), low
  // nibbles of ql[64n + l] (g = 0, 2 high) or ql[64n + 32 + l] (g = 1, 3 high), two bits of
  // qh[32n + l] at 2g, scale byte 8n + h + 2g.
  __device__ static float item(const uint8_t* qb, const uint8_t* sb, int p, const Acts& x) {
    using quant::nib_hi;
    using quant::nib_lo;
    const int n = p >> 1, h = p & 1;
    const int4 la = lds128(qb + 64 * n + 16 * h), lb = lds128(qb + 64 * n + 32 + 16 * h);
    const int4 hv = lds128(qb + 128 + 32 * n + 16 * h);
    const int2 sc = *reinterpret_cast<const int2*>(qb + 192 + 8 * n);
    const int qa[4] = {la.x, la.y, la.z, la.w};
    const int qc[4] = {lb.x, lb.y, lb.z, lb.w};
    const int qh[4] = {hv.x, hv.y, hv.z, hv.w};
    const float xd[4] = {x.d.x, x.d.y, x.d.z, x.d.w};
    const int xsum[4] = {x.sums.x, x.sums.y, x.sums.z, x.sums.w};
    float acc = 0.0f;
#pragma unroll
    for (int g = 0; g < 4; ++g) {
      int v[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int src = (g & 1) ? qc[i] : qa[i];
        // Bits 2g, 2g + 1 of each qh byte to bits 4, 5.
        const unsigned h6 = static_cast<unsigned>(qh[i]);
        const int top = static_cast<int>((g == 3 ? h6 >> 2 : h6 << (4 - 2 * g)) & 0x30303030u);
        v[i] = (g & 2 ? nib_hi(src) : nib_lo(src)) | top;  // 0..63
      }
      const int sum = dp16(v[0], v[1], v[2], v[3], x.x[g], -32 * xsum[g]);
      const int bi = h + 2 * g;  // byte of the half's 8 scale bytes
      const int word = bi < 4 ? sc.x : sc.y;
      const int scale = static_cast<int8_t>((word >> (8 * (bi & 3))) & 0xFF);
      acc += static_cast<float>(scale * sum) * xd[g];
    }
    return ld_half(sb) * acc;
  }
};

// One step of one row: q, s point at the step's first block. `live` has bit u set when unit
// u of a 32-value-block lane lies inside the row (both, except in a partial last step).
template <TensorType T>
__device__ __forceinline__ float dot_step(const uint8_t* q, const uint8_t* s, int lane,
                                          const Acts& x, int live) {
  using L = Layout<T>;
  if constexpr (L::kKQuant) {
    const int b = lane / 4;
    return Dot<T>::item(q + b * L::kQBytes, s + b * L::kSBytes, lane % 4, x);
  } else {
    float v = 0.0f;
    if (live & 1) {
      v += Dot<T>::unit(q + lane * L::kQBytes, s + lane * L::kSBytes, x.x[0], x.x[1], x.d.x, x.s.x);
    }
    if (live & 2) {
      const int b = lane + 32;
      v += Dot<T>::unit(q + b * L::kQBytes, s + b * L::kSBytes, x.x[2], x.x[3], x.d.z, x.s.z);
    }
    return v;
  }
}

// ---- the plan: shapes of tiles, slots and shared memory ---------------------------------
struct StreamPlan {
  int nb = 0;              // blocks per row
  int steps = 0;           // warp steps per row; the last may be partial
  int tile_rows = 0;       // R: rows per tile, a multiple of kRowBatch
  int seg_steps = 0;       // G: steps per row segment
  int segs = 0;            // S: segments per row (S > 1 only with R = kRowBatch)
  int slots = 0;           // K: ring depth per warp
  int pitch_q = 0;         // shared bytes per row of a slot: quant bytes, then scale bytes
  int pitch_s = 0;
  int slot_bytes = 0;
  int xq_off = 0;          // [steps][4 pieces][32 lanes] x 16 int8 (piece_col)
  int xd_off = 0;          // [steps][32 lanes][4 pieces] float: the piece's chunk scale
  int xs_off = 0;          // [steps][32 lanes][4 pieces] float: the chunk's scaled sum
                           // (Q6_K: int, the piece's sum)
  int slots_off = 0;       // [kWarps][K] slots
  int smem_bytes = 0;
  int ctas = 0;
  int64_t warps = 0;       // in the grid
};

struct StreamArgs {
  GemvGroupParams g;
  StreamPlan plan;
};


// The 16-byte granules holding [p, p + len).
struct Granules {
  const uint8_t* src;
  uint32_t bytes;
};
__device__ __forceinline__ Granules granules(const uint8_t* p, uint32_t len) {
  const uintptr_t a = reinterpret_cast<uintptr_t>(p);
  const uintptr_t lo = a & ~uintptr_t{15};
  const uintptr_t hi = (a + len + 15) & ~uintptr_t{15};
  return {reinterpret_cast<const uint8_t*>(lo), static_cast<uint32_t>(hi - lo)};
}
__device__ __forceinline__ int misalign(const uint8_t* p) {
  return static_cast<int>(reinterpret_cast<uintptr_t>(p) & 15);
}

template <TensorType T>
__global__ void __launch_bounds__(kThreads, 1) gemv_stream_kernel(const __grid_constant__ StreamArgs args) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  using L = Layout<T>;
  constexpr int kQ = L::kQBytes, kS = L::kSBytes, kBps = L::kBlocksPerStep;
  const GemvGroupParams& p = args.g;
  const StreamPlan& pl = args.plan;
  extern __shared__ __align__(128) uint8_t smem[];

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t gw = static_cast<int64_t>(blockIdx.x) * kWarps + warp;
  const int64_t row0 = gw * p.total_rows / pl.warps;
  const int64_t row1 = (gw + 1) * p.total_rows / pl.warps;
  const int R = pl.tile_rows, S = pl.segs, G = pl.seg_steps, K = pl.slots;
  const int tiles = static_cast<int>((row1 - row0 + R - 1) / R);
  const int uses = tiles * S;  // slot fills of this warp, in order
  const uint32_t bar0 = smem_u32(smem) + 8 * kMaxSlots * warp;
  uint8_t* const ring = smem + pl.slots_off + static_cast<size_t>(warp) * K * pl.slot_bytes;

  // Fill u of the ring: tile u / S, segment u % S, slot u % K; lane r copies row r.
  auto issue = [&](int u) {
    const int t = u / S, s = u % S, k = u % K;
    const int b0 = s * G * kBps;
    const int nblk = min(pl.nb, b0 + G * kBps) - b0;
    const int64_t row = row0 + static_cast<int64_t>(t) * R + lane;
    const bool live = lane < R && row < row1;
    Granules gq{nullptr, 0}, gs{nullptr, 0};
    if (live) {
      const RowRef ref = group_row(p, row);
      gq = granules(ref.q + static_cast<int64_t>(b0) * kQ, nblk * kQ);
      if constexpr (kS > 0) gs = granules(ref.s + static_cast<int64_t>(b0) * kS, nblk * kS);
    }
    const uint32_t total = __reduce_add_sync(0xffffffffu, gq.bytes + gs.bytes);
    const uint32_t bar = bar0 + 8 * k;
    if (lane == 0) mbar_arrive_expect_tx(bar, total);
    __syncwarp();
    if (live) {
      const uint32_t slot = smem_u32(ring + static_cast<size_t>(k) * pl.slot_bytes);
      bulk_copy(slot + lane * pl.pitch_q, gq.src, gq.bytes, bar);
      if constexpr (kS > 0) bulk_copy(slot + R * pl.pitch_q + lane * pl.pitch_s, gs.src, gs.bytes, bar);
    }
  };

  if (lane == 0) {
    for (int k = 0; k < K; ++k) mbar_init(bar0 + 8 * k, 1);
    mbar_fence_init();
  }
  __syncwarp();
  // Weights are written by no kernel of the step: start streaming before the wait.
  for (int u = 0; u < min(K, uses); ++u) issue(u);
  pdl_wait();
  pdl_launch_dependents();

  // Activations into shared memory, permuted per piece_col (zeros past the row end).
  {
    const int cols = pl.nb * L::kBlock;
    for (int i = threadIdx.x; i < pl.steps * 128; i += kThreads) {
      const int g = i / 128, j = (i / 32) % 4, ln = i % 32;
      const int col = g * kStepVals + piece_col<T>(ln, j);
      const int4 v = col < cols ? *reinterpret_cast<const int4*>(p.xq.q + col) : make_int4(0, 0, 0, 0);
      *reinterpret_cast<int4*>(smem + pl.xq_off + 16 * i) = v;
      if constexpr (L::kPieceSums) {
        const int ones = 0x01010101;
        const int sum = __dp4a(v.w, ones, __dp4a(v.z, ones, __dp4a(v.y, ones, __dp4a(v.x, ones, 0))));
        reinterpret_cast<int*>(smem + pl.xs_off)[g * 128 + ln * 4 + j] = sum;
      }
    }
    float* xd = reinterpret_cast<float*>(smem + pl.xd_off);
    float* xs = reinterpret_cast<float*>(smem + pl.xs_off);
    for (int i = threadIdx.x; i < pl.steps * 128; i += kThreads) {
      const int g = i / 128, ln = (i / 4) % 32, j = i % 4;
      const int col = g * kStepVals + piece_col<T>(ln, j);
      xd[i] = col < cols ? p.xq.d[col / 32] : 0.0f;
      if constexpr (L::kUsesSums) xs[i] = col < cols ? p.xq.s[col / 32] : 0.0f;
    }
  }
  __syncthreads();

  const uint8_t* const xq = smem + pl.xq_off + 16 * lane;
  const uint8_t* const xd = smem + pl.xd_off + 16 * lane;
  const uint8_t* const xs = smem + pl.xs_off + 16 * lane;
  auto acts = [&](int g) {
    Acts x;
#pragma unroll
    for (int j = 0; j < 4; ++j) x.x[j] = lds128(xq + g * kStepVals + 512 * j);
    x.d = *reinterpret_cast<const float4*>(xd + 512 * g);
    if constexpr (L::kUsesSums) x.s = *reinterpret_cast<const float4*>(xs + 512 * g);
    if constexpr (L::kPieceSums) x.sums = *reinterpret_cast<const int4*>(xs + 512 * g);
    return x;
  };
  // Steps lying wholly inside the row, and the lane's units in a partial last step.
  const int full_steps = pl.nb / kBps;
  const int rem = pl.nb - full_steps * kBps;  // blocks of the partial step
  const int last_live = L::kKQuant ? (lane / 4 < rem ? 1 : 0)
                                   : (lane < rem ? 1 : 0) | (lane + 32 < rem ? 2 : 0);

  float acc[kRowBatch] = {};
  for (int u = 0; u < uses; ++u) {
    const int t = u / S, s = u % S, k = u % K;
    mbar_wait(bar0 + 8 * k, (u / K) & 1);
    const uint8_t* const slot = ring + static_cast<size_t>(k) * pl.slot_bytes;
    const int g0 = s * G, g1 = min(pl.steps, g0 + G), gf = min(g1, full_steps);
    const int64_t qo = static_cast<int64_t>(g0) * kBps * kQ, so = static_cast<int64_t>(g0) * kBps * kS;
    for (int r = 0; r < R; r += kRowBatch) {
      const int64_t row = row0 + static_cast<int64_t>(t) * R + r;
      if (row >= row1) break;
      const bool pair = row + 1 < row1;
      const RowRef ra = group_row(p, row);
      const RowRef rb = group_row(p, pair ? row + 1 : row);
      const uint8_t* qa = slot + r * pl.pitch_q + misalign(ra.q + qo);
      const uint8_t* qb = slot + (r + 1) * pl.pitch_q + misalign(rb.q + qo);
      const uint8_t* sa = nullptr;
      const uint8_t* sb = nullptr;
      if constexpr (kS > 0) {
        sa = slot + R * pl.pitch_q + r * pl.pitch_s + misalign(ra.s + so);
        sb = slot + R * pl.pitch_q + (r + 1) * pl.pitch_s + misalign(rb.s + so);
      }
      if (s == 0) {
#pragma unroll
        for (int j = 0; j < kRowBatch; ++j) acc[j] = 0.0f;
      }
      constexpr int kStepQ = kBps * kQ, kStepS = kBps * kS;
      if (pair) {
#pragma unroll 2
        for (int g = g0; g < gf; ++g) {
          const Acts x = acts(g);
          acc[0] += dot_step<T>(qa, sa, lane, x, 3);
          acc[1] += dot_step<T>(qb, sb, lane, x, 3);
          qa += kStepQ;
          qb += kStepQ;
          sa += kStepS;
          sb += kStepS;
        }
      } else {
#pragma unroll 2
        for (int g = g0; g < gf; ++g) {
          acc[0] += dot_step<T>(qa, sa, lane, acts(g), 3);
          qa += kStepQ;
          sa += kStepS;
        }
      }
      if (gf < g1 && last_live != 0) {  // the partial last step of the row
        const Acts x = acts(gf);
        acc[0] += dot_step<T>(qa, sa, lane, x, last_live);
        if (pair) acc[1] += dot_step<T>(qb, sb, lane, x, last_live);
      }
      if (s == S - 1) {
        const float v0 = warp_sum(acc[0]);
        const float v1 = warp_sum(acc[1]);
        if (lane == 0) {
          *ra.y = v0;
          if (pair) *rb.y = v1;
        }
      }
    }
    __syncwarp();
    if (u + K < uses) {
      fence_proxy_async();
      issue(u + K);
    }
  }
#else
  __trap();  // gemv_stream_supports() requires compute capability 9.0
#endif
}

// ---- host side ----------------------------------------------------------------------------
struct DeviceLimits {
  int sms = 0;
  int smem_optin = 0;
  int major = 0;
};

PerDeviceSetup g_setup("gemv_stream");  // shared-memory limits raised

DeviceLimits device_limits() {
  const int dev = current_device("gemv_stream");
  DeviceLimits d;
  d.sms = current_device_sms("gemv_stream");
  TPNODE_CUDA_CHECK(cudaDeviceGetAttribute(&d.smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
  TPNODE_CUDA_CHECK(cudaDeviceGetAttribute(&d.major, cudaDevAttrComputeCapabilityMajor, dev));
  return d;
}

int align16(int64_t n) { return static_cast<int>((n + 15) / 16 * 16); }

// Shared bytes for one row's segment of `blocks` blocks, quant and scale parts (16 bytes of
// slack each for the granule rounding).
template <TensorType T>
int pitch_q(int blocks) { return align16(static_cast<int64_t>(blocks) * Layout<T>::kQBytes) + 16; }
template <TensorType T>
int pitch_s(int blocks) {
  return Layout<T>::kSBytes ? align16(static_cast<int64_t>(blocks) * Layout<T>::kSBytes) + 16 : 0;
}

// Returns a plan with slots == 0 when the activations leave no room for a slot.
template <TensorType T>
StreamPlan make_plan(const GemvGroupParams& p, const DeviceLimits& dl) {
  using L = Layout<T>;
  StreamPlan pl;
  pl.nb = static_cast<int>(p.cols / L::kBlock);
  pl.steps = (pl.nb + L::kBlocksPerStep - 1) / L::kBlocksPerStep;
  // Per step: 2048 int8 values, and 32 lanes x 4 pieces of chunk scales and sums.
  pl.xq_off = kBarBytes;
  pl.xd_off = pl.xq_off + pl.steps * kStepVals;
  pl.xs_off = pl.xd_off + pl.steps * 512;
  pl.slots_off = pl.xs_off + (L::kUsesSums || L::kPieceSums ? pl.steps * 512 : 0);
  const int64_t budget = static_cast<int64_t>(dl.smem_optin) - pl.slots_off;
  if (budget <= 0) return pl;
  pl.slots = static_cast<int>(std::clamp<int64_t>(budget / (kWarps * kTargetSlotBytes), kMinSlots, kMaxSlots));
  const int64_t per_slot = budget / (kWarps * pl.slots) / 16 * 16;

  pl.ctas = static_cast<int>(std::clamp<int64_t>((p.total_rows + kWarps - 1) / kWarps, 1, dl.sms));
  pl.warps = static_cast<int64_t>(pl.ctas) * kWarps;
  const int64_t rows_per_warp = (p.total_rows + pl.warps - 1) / pl.warps;

  const int64_t full = pitch_q<T>(pl.nb) + pitch_s<T>(pl.nb);
  if (kRowBatch * full <= per_slot) {
    // Whole rows per slot: as many as fit, no more than a warp owns.
    const int64_t fit = std::min<int64_t>(per_slot / full, kMaxTileRows);
    const int64_t want = (rows_per_warp + kRowBatch - 1) / kRowBatch * kRowBatch;
    pl.tile_rows = static_cast<int>(std::max<int64_t>(kRowBatch, std::min(fit, want) / kRowBatch * kRowBatch));
    pl.seg_steps = pl.steps;
  } else {
    pl.tile_rows = kRowBatch;
    int g = 0;
    while (g < pl.steps && kRowBatch * (static_cast<int64_t>(pitch_q<T>((g + 1) * L::kBlocksPerStep)) +
                                        pitch_s<T>((g + 1) * L::kBlocksPerStep)) <= per_slot) {
      ++g;
    }
    if (g == 0) {
      pl.slots = 0;
      return pl;
    }
    pl.seg_steps = g;
  }
  pl.segs = (pl.steps + pl.seg_steps - 1) / pl.seg_steps;
  const int seg_blocks = std::min(pl.nb, pl.seg_steps * L::kBlocksPerStep);
  pl.pitch_q = pitch_q<T>(seg_blocks);
  pl.pitch_s = pitch_s<T>(seg_blocks);
  pl.slot_bytes = pl.tile_rows * (pl.pitch_q + pl.pitch_s);
  pl.smem_bytes = pl.slots_off + kWarps * pl.slots * pl.slot_bytes;
  return pl;
}

bool aligned(const void* ptr, uintptr_t a) { return reinterpret_cast<uintptr_t>(ptr) % a == 0; }

// Why the group cannot run here, or null.
const char* unsupported_reason(const GemvGroupParams& p, const DeviceLimits& dl) {
  if (dl.major < 9) return "needs compute capability 9.0 (TMA bulk copies)";
  if (p.n < 1 || p.n > kMaxGemvGroup) return "group size outside 1..3";
  const TensorType type = p.outs[0].w.type;
  switch (type) {
    case TensorType::kQ4_0: case TensorType::kQ4_1: case TensorType::kQ5_0:
    case TensorType::kQ5_1: case TensorType::kQ8_0: case TensorType::kQ4_K:
    case TensorType::kQ5_K: case TensorType::kQ6_K: break;
    default: return "weight type not supported";
  }
  const SplitLayout sl = split_layout(type);
  if (p.cols <= 0 || p.cols % sl.block_size != 0) return "columns not a multiple of the block";
  if (p.cols > (int64_t{1} << 24)) return "row too long";
  int64_t total = 0;
  for (int i = 0; i < p.n; ++i) {
    const DeviceMatrix& w = p.outs[i].w;
    const int64_t nb = w.cols / sl.block_size;
    if (w.type != type || w.cols != p.cols) return "matrices of the group differ in type or width";
    if (w.q_row_bytes != static_cast<size_t>(nb * sl.q_bytes) ||
        w.s_row_bytes != static_cast<size_t>(nb * sl.s_bytes)) {
      return "not the split layout";
    }
    if (!aligned(w.q, 16) || (sl.s_bytes > 0 && (w.s == nullptr || !aligned(w.s, 4)))) {
      return "weights not aligned";
    }
    if (p.outs[i].y == nullptr) return "no output";
    total += w.rows;
  }
  if (total != p.total_rows) return "total_rows does not match the matrices";
  if (!aligned(p.xq.q, 16) || !aligned(p.xq.d, 4) || !aligned(p.xq.s, 4)) {
    return "activations not aligned";
  }
  return nullptr;
}

template <TensorType T>
void launch(const GemvGroupParams& p, const StreamPlan& pl, cudaStream_t stream) {
  const StreamArgs args{p, pl};
  launch_pdl(gemv_stream_kernel<T>, dim3(static_cast<unsigned>(pl.ctas)), dim3(kThreads),
             static_cast<size_t>(pl.smem_bytes), stream, args);
  TPNODE_CUDA_CHECK_LAUNCH();
}

StreamPlan plan_for(const GemvGroupParams& p, const DeviceLimits& dl) {
  StreamPlan pl;
  TPNODE_DISPATCH_QUANT_TYPE(p.outs[0].w.type, T, { pl = make_plan<T>(p, dl); })
  return pl;
}

constexpr TensorType kTypes[] = {TensorType::kQ4_0, TensorType::kQ4_1, TensorType::kQ5_0,
                                 TensorType::kQ5_1, TensorType::kQ8_0, TensorType::kQ4_K,
                                 TensorType::kQ5_K, TensorType::kQ6_K};

}  // namespace

void gemv_stream_init() {
  const DeviceLimits dl = device_limits();
  if (dl.major < 9) return;  // gemv_stream_supports() is false there
  for (TensorType type : kTypes) {
    TPNODE_DISPATCH_QUANT_TYPE(type, T, {
      TPNODE_CUDA_CHECK(cudaFuncSetAttribute(gemv_stream_kernel<T>,
                                             cudaFuncAttributeMaxDynamicSharedMemorySize,
                                             dl.smem_optin));
    })
  }
  g_setup.mark_done();
}

bool gemv_stream_supports(const GemvGroupParams& p) {
  const DeviceLimits dl = device_limits();
  if (unsupported_reason(p, dl) != nullptr) return false;
  return plan_for(p, dl).slots > 0;
}

void gemv_stream(const GemvGroupParams& p, cudaStream_t stream) {
  const DeviceLimits dl = device_limits();
  const char* why = unsupported_reason(p, dl);
  TPNODE_CHECK(why == nullptr, "gemv_stream: {} ({} group of {}, {} columns)", why ? why : "",
               p.n >= 1 && p.n <= kMaxGemvGroup ? weight_type_label(p.outs[0].w.type) : "?",
               p.total_rows, p.cols);
  if (p.total_rows == 0) return;
  const StreamPlan pl = plan_for(p, dl);
  TPNODE_CHECK(pl.slots > 0, "gemv_stream: {} columns of {}: activations leave no shared memory",
               p.cols, weight_type_label(p.outs[0].w.type));
  if (g_setup.needed(stream)) gemv_stream_init();
  TPNODE_DISPATCH_QUANT_TYPE(p.outs[0].w.type, T, { launch<T>(p, pl, stream); })
}

}  // namespace tpnode::cuda
