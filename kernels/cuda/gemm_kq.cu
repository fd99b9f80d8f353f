// Q4_K GEMM on int8 warpgroup MMAs (see gemm_kq.h).
#include "kernels/cuda/gemm_kq.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cstdint>

#include "kernels/cuda/bulk_copy.cuh"
#include "kernels/cuda/cp_async.cuh"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/device_query.h"
#include "kernels/cuda/gemm_tiles.h"
#include "kernels/cuda/kq_records.cuh"
#include "kernels/cuda/pdl.cuh"
#include "kernels/cuda/quant_blocks.cuh"
#include "kernels/cuda/quantize_chunk.cuh"
#include "kernels/cuda/gemm_epilogue.cuh"
#include "kernels/cuda/wgmma.cuh"

namespace tpnode::cuda {
namespace {

// ---- the work split ----------------------------------------------------------------------
// A CTA of two warpgroups computes 128 weight rows x one token tile (NB n-tiles of 8: 32 or 64
// tokens) over a range of k stages of 256 values (one Q4_K block per row; a stream-K CTA goes on
// to the next tiles' stages, gemm_kq_stream_kernel). Warpgroup wg owns
// rows 64wg..64wg+63, its warp wr the 16 rows 64wg + 16wr.. (lane: g = lane / 4 takes rows g
// and g + 8, t = lane % 4 quants 8t..8t+7 of every chunk of them). Per stage the CTA copies
// the block of each of its rows (cp.async) and the tile's activation records (one bulk copy)
// into a ring in shared memory; each lane decodes its quants straight into MMA fragments.
//
// Per stage and warpgroup: for each of the eight 32-value chunks c, A_hi = q * (sc_c >> 3)
// and A_lo = q * (sc_c & 7) (4-bit quants times 3-bit halves of the 6-bit scale: <= 105, so
// int8) each go through one m64nNk32 s8 MMA into the 32-bit accumulators hi and lo, the first
// chunk overwriting them; sum_c sc_c (q_c . x_c) = 8 hi + lo. Then one m64nNk16 BF16 MMA of
// -dmin * m_c (k = chunk, the other 8 k zero) against the chunks' sums of x adds the mins'
// term to the float accumulator, and after waiting for the stage's MMAs each lane adds
// (8 hi + lo) * d * x_scale to it: one conversion per block and output.
constexpr int kStageK = kGemmKqStage;
constexpr int kBlockBytes = 144;  // Q4_K: d, dmin (halves), 12 bytes of scales/mins, qs[128]
using kq::kPiece;
using kq::kRec;
using kq::kSumsOff;
using kq::kXScaleOff;
constexpr int kMaxStages = 5;  // ring buffers: kMaxStages - 2 stages in flight ahead
static_assert(kBlockBytes % 16 == 0 && kRec % 16 == 0);

constexpr int kThreads = 256;
constexpr int kTileRows = kGemmTileRows;

// The ring of a CTA when CPS CTAs run per SM. One CTA pads its rows to 32 mod 128 bytes so
// that a half-warp's 8-byte loads (4 rows x 4 lanes) hit distinct banks; two CTAs need the
// space for four stages each and leave the rows unpadded (two-way conflicts on 16 loads).
template <int NB, int CPS>
struct Layout {
  static constexpr int kQStride = CPS == 1 ? 160 : kBlockBytes;
  static constexpr int kSmemBudget = CPS == 1 ? 225 * 1024 : 112 * 1024;
  static constexpr int kXOff = kTileRows * kQStride;
  static constexpr int kStageBytes = kXOff + NB * kRec;
  static constexpr int kStages = std::min(kMaxStages, kSmemBudget / kStageBytes);
  static constexpr int kSmemBytes = kStages * kStageBytes;
  static_assert(kStages >= 4, "a stage does not fit four times");
  static_assert(kXOff % 16 == 0 && kStageBytes % 16 == 0 && kQStride % 16 == 0);
};

// One matrix of a launch: its row tiles are blockIdx.y in [tile0, tile0 + its tiles).
struct OutArgs {
  const uint8_t* q = nullptr;
  int64_t q_row_bytes = 0;
  int64_t rows = 0;
  float* y = nullptr;  // [m, ldy]
  int64_t ldy = 0;
  int tile0 = 0;
};

struct KernelArgs {
  OutArgs outs[kGemmKqMaxGroup];
  int n_outs = 1;
  int row_tiles = 0;  // of all the matrices
  const uint8_t* x = nullptr;
  GemmSplitArgs sp;
};

#if TPNODE_WGMMA
// What only the sm_90a kernel uses (other targets compile its body out).
constexpr int kQsOff = 16;  // the quants after d, dmin and the scales
constexpr int kWPieces = kBlockBytes / 16;
constexpr int kWTotal = kTileRows * kWPieces;
constexpr int kWSlots = (kWTotal + kThreads - 1) / kThreads;
constexpr uint32_t kNib = 0x0F0F0F0Fu;

__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&v);
}
#endif

#if TPNODE_WGMMA
// One stage of the warpgroup's rows in a ring buffer: lane (g, t) reads rows g and g + 8 of
// its warp's 16 (w0, w1: their blocks; h0, h1: their headers) and the stage's activation
// records at xb.
template <int NB, int CPS>
struct StageView {
  const uint8_t* w0;
  const uint8_t* w1;
  const uint8_t* xb;
  int4 h0, h1;
  __device__ StageView(const uint8_t* buf, int wg, int wr) {
    using L = Layout<NB, CPS>;
    const int g = threadIdx.x % 32 / 4;
    w0 = buf + (64 * wg + 16 * wr + g) * L::kQStride;
    w1 = w0 + 8 * L::kQStride;
    xb = buf + L::kXOff;
    h0 = *reinterpret_cast<const int4*>(w0);
    h1 = *reinterpret_cast<const int4*>(w1);
  }
};
using PairFrags = uint32_t[2][2][4];  // [chunk of the pair][hi, lo][a0..a3]

// What pair_frags needs of chunks 2p and 2p + 1 of rows g and g + 8: their scales and the
// lane's quants.
struct PairRaw {
  quant::KScales k0, k1;
  uint2 u0, u1;
};
__device__ __forceinline__ PairRaw load_pair(const uint8_t* w0, const uint8_t* w1, int4 h0,
                                             int4 h1, int p) {
  const int t = threadIdx.x % 4;
  return {quant::k_scales(h0, p), quant::k_scales(h1, p),
          *reinterpret_cast<const uint2*>(w0 + kQsOff + 32 * p + 8 * t),
          *reinterpret_cast<const uint2*>(w1 + kQsOff + 32 * p + 8 * t)};
}
// The pair's quants times the halves of their scales: MMA fragments.
__device__ __forceinline__ void pair_frags(const PairRaw& r, PairFrags& f) {
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const uint32_t s0 = static_cast<uint32_t>(h ? r.k0.sc1 : r.k0.sc0);
    const uint32_t s1 = static_cast<uint32_t>(h ? r.k1.sc1 : r.k1.sc0);
    const uint32_t n0x = (r.u0.x >> (4 * h)) & kNib, n0y = (r.u0.y >> (4 * h)) & kNib;
    const uint32_t n1x = (r.u1.x >> (4 * h)) & kNib, n1y = (r.u1.y >> (4 * h)) & kNib;
    // Byte-wise products stay below 256: one multiply per four quants.
    f[h][0][0] = n0x * (s0 >> 3), f[h][0][1] = n1x * (s1 >> 3);
    f[h][0][2] = n0y * (s0 >> 3), f[h][0][3] = n1y * (s1 >> 3);
    f[h][1][0] = n0x * (s0 & 7), f[h][1][1] = n1x * (s1 & 7);
    f[h][1][2] = n0y * (s0 & 7), f[h][1][3] = n1y * (s1 & 7);
  }
}
template <int NB, int CPS>
__device__ __forceinline__ void decode_pair(const StageView<NB, CPS>& v, int p, PairFrags& f) {
  pair_frags(load_pair(v.w0, v.w1, v.h0, v.h1, p), f);
}

// Pair p's four MMAs (hi and lo of its two chunks) as one commit group; chunk 0 overwrites
// the integer accumulators.
template <int NB>
__device__ __forceinline__ void issue_pair(uint64_t desc0, int p, const PairFrags& f,
                                           int (&hi)[NB][4], int (&lo)[NB][4]) {
  wg_fence();
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int c = 2 * p + h;
    const uint64_t b = desc0 + ((2 * c * kPiece) >> 4);
    const int accumulate = c > 0;
    WgmmaS8<NB>::run(hi, f[h][0][0], f[h][0][1], f[h][0][2], f[h][0][3], b, accumulate);
    WgmmaS8<NB>::run(lo, f[h][1][0], f[h][1][1], f[h][1][2], f[h][1][3], b, accumulate);
  }
  wg_commit();
}

// The mins' BF16 MMA into the float accumulator as one commit group: lane t holds k = 2t,
// 2t + 1 (chunks 2t, 2t + 1, pair t) of rows g (header h0) and g + 8 (h1), -dmin * m against
// the chunks' sums of x.
template <int NB>
__device__ __forceinline__ void issue_mins(int4 h0, int4 h1, const uint8_t* xb,
                                           float (&acc)[NB][4]) {
  const int t = threadIdx.x % 4;
  const quant::KScales m0 = quant::k_scales(h0, t), m1 = quant::k_scales(h1, t);
  const float2 dm0 = __half22float2(*reinterpret_cast<const __half2*>(&h0.x));
  const float2 dm1 = __half22float2(*reinterpret_cast<const __half2*>(&h1.x));
  const uint32_t am0 = pack_bf16(-dm0.y * static_cast<float>(m0.m0), -dm0.y * static_cast<float>(m0.m1));
  const uint32_t am1 = pack_bf16(-dm1.y * static_cast<float>(m1.m0), -dm1.y * static_cast<float>(m1.m1));
  wg_fence();  // acc was last written by the previous stage's conversions
  WgmmaBf16<NB>::run(acc, am0, am1, 0u, 0u, wg_desc(smem_u32(xb + kSumsOff), kPiece, kRec), 1);
  wg_commit();
}

// Once the stage's MMAs are done: acc += (8 hi + lo) * d * x_scale (rows g (d of h0), g + 8
// (of h1); tokens 8nt + 2t, + 1), then the fence that orders these generic-proxy reads of
// the buffer before the bulk copy that refills it.
template <int NB>
__device__ __forceinline__ void convert(int4 h0, int4 h1, const uint8_t* xb,
                                        const int (&hi)[NB][4], const int (&lo)[NB][4],
                                        float (&acc)[NB][4]) {
  const int t = threadIdx.x % 4;
  const float d0 = __low2float(*reinterpret_cast<const __half2*>(&h0.x));
  const float d1 = __low2float(*reinterpret_cast<const __half2*>(&h1.x));
#pragma unroll
  for (int nt = 0; nt < NB; ++nt) {
    const float2 xs = *reinterpret_cast<const float2*>(xb + nt * kRec + kXScaleOff + 8 * t);
    const float s[4] = {d0 * xs.x, d0 * xs.y, d1 * xs.x, d1 * xs.y};
#pragma unroll
    for (int i = 0; i < 4; ++i)
      acc[nt][i] = fmaf(static_cast<float>(8 * hi[nt][i] + lo[nt][i]), s[i], acc[nt][i]);
  }
  fence_proxy_async();
}

// A stage's MMAs, pair 0 decoded already (into af[0]), and the mins': on return the groups
// of pairs 2, 3 and the mins' are pending (af[0] is free once the oldest is done).
template <int NB, int CPS>
__device__ __forceinline__ void issue_stage(const StageView<NB, CPS>& v, PairFrags (&af)[2],
                                            int (&hi)[NB][4], int (&lo)[NB][4],
                                            float (&acc)[NB][4]) {
  const uint64_t desc0 = wg_desc(smem_u32(v.xb), kPiece, kRec);
  issue_pair<NB>(desc0, 0, af[0], hi, lo);
#pragma unroll
  for (int p = 1; p < 4; ++p) {
    // Pair p decodes into af[p % 2] once the group of pair p - 2, its last reader, is done.
    if (p >= 2) wg_wait<1>();
    decode_pair(v, p, af[p % 2]);
    issue_pair<NB>(desc0, p, af[p % 2], hi, lo);
  }
  issue_mins<NB>(v.h0, v.h1, v.xb, acc);
}

// One stage of the warpgroup on its own (`buf` holds the stage's weights and activation
// records): decode, MMAs, wait, conversion. The 32- and 48-token tiles take it.
template <int NB, int CPS>
__device__ __forceinline__ void compute_stage(const uint8_t* buf, int wg, int wr,
                                              float (&acc)[NB][4]) {
  using L = Layout<NB, CPS>;
  const int lane = threadIdx.x % 32, g = lane / 4;
  const uint8_t* w0 = buf + (64 * wg + 16 * wr + g) * L::kQStride;
  const uint8_t* w1 = w0 + 8 * L::kQStride;
  const int4 h0 = *reinterpret_cast<const int4*>(w0);
  const int4 h1 = *reinterpret_cast<const int4*>(w1);
  const uint8_t* xb = buf + L::kXOff;
  const uint64_t desc0 = wg_desc(smem_u32(xb), kPiece, kRec);
  int hi[NB][4], lo[NB][4];
  // Fragments of two chunk pairs: pair p decodes into af[p % 2] once the MMAs of pair p - 2
  // (the last readers of those registers) are done.
  uint32_t af[2][2][2][4];  // [buffer][chunk of the pair][hi, lo][a0..a3]
#pragma unroll
  for (int p = 0; p < 4; ++p) {
    const PairRaw raw = load_pair(w0, w1, h0, h1, p);
    if (p >= 2) wg_wait<1>();
    uint32_t(&f)[2][2][4] = af[p % 2];
    pair_frags(raw, f);
    issue_pair<NB>(desc0, p, f, hi, lo);
  }
  issue_mins<NB>(h0, h1, xb, acc);
  wg_wait<0>();
  convert<NB>(h0, h1, xb, hi, lo, acc);
}
#endif

#if TPNODE_WGMMA
// The matrix row tile gt of a launch falls in, and its row tiles (a selection, not an index:
// the parameters stay in constant memory).
struct MatrixOf {
  OutArgs o;
  int tiles;
};
__device__ __forceinline__ MatrixOf matrix_of(const KernelArgs& a, int gt) {
  MatrixOf m{a.outs[0], a.n_outs > 1 ? a.outs[1].tile0 : a.row_tiles};
  if (a.n_outs > 1 && gt >= a.outs[1].tile0) {
    m.o = a.outs[1];
    m.tiles = (a.n_outs > 2 ? a.outs[2].tile0 : a.row_tiles) - m.o.tile0;
  }
  if (a.n_outs > 2 && gt >= a.outs[2].tile0) {
    m.o = a.outs[2];
    m.tiles = a.row_tiles - m.o.tile0;
  }
  return m;
}

// Tile ti of a launch is row tile ti / token_tiles (of the matrix it falls in) times token tile
// ti % token_tiles. What a stream-K CTA needs of it to copy its stages and to store it.
struct TileRef {
  OutArgs o;
  int64_t row0;  // first row within the matrix
  int tok0;
  int rot;       // its stages are visited from stage rot on, so that row tiles do not all ask
                 // the same L2 lines of x at once
};
__device__ __forceinline__ TileRef tile_ref(const KernelArgs& a, int ti, int nb) {
  const int gt = ti / a.sp.token_tiles;
  const MatrixOf m = matrix_of(a, gt);
  const int rt = gt - m.o.tile0;
  return {m.o, static_cast<int64_t>(rt) * kTileRows, (ti - gt * a.sp.token_tiles) * nb * 8,
          static_cast<int>(static_cast<int64_t>(rt) * a.sp.n_stages / m.tiles)};
}

// The CTAs of a stream-K launch share its tiles' stages, tile by tile, in even contiguous
// ranges. In 32 bits: the host keeps total x CTAs below 2^32.
struct Ranges {
  uint32_t total;  // tiles x stages
  uint32_t ctas;
  __device__ explicit Ranges(const KernelArgs& a)
      : total(static_cast<uint32_t>(a.row_tiles * a.sp.token_tiles * a.sp.n_stages)),
        ctas(gridDim.x) {}
  __device__ int begin(int c) const { return static_cast<int>(total * c / ctas); }
  __device__ int cta_of(int i) const { return static_cast<int>(((i + 1) * ctas - 1) / total); }
};

// The cursor of a stream-K CTA's copies into the ring: the tile, the next copy's stage (the
// tile's stages visited from its rotation on) and how many of them are left to copy, worked
// out once per tile.
template <int NB>
struct Filler {
  int ti = 0, stage = 0, left = 0;
  const uint8_t* q = nullptr;  // the tile's matrix
  uint32_t w_src[kWSlots];     // this thread's 16-byte pieces of the tile's rows (rows past the
                               // end copy the last row, computed and never stored)
  uint32_t x = 0;              // the tile's records: offset in a stage | bytes << 16

  // `done`: the tile's stages (in its order) that another CTA copies.
  __device__ void set_tile(const KernelArgs& a, int tile, int done = 0) {
    ti = tile;
    const TileRef r = tile_ref(a, tile, NB);
    q = r.o.q;
    const int64_t last = r.o.rows - 1;
#pragma unroll
    for (int k = 0; k < kWSlots; ++k) {
      const int i = min(static_cast<int>(threadIdx.x) + k * kThreads, kWTotal - 1);
      w_src[k] = static_cast<uint32_t>(min(r.row0 + i / kWPieces, last) * r.o.q_row_bytes +
                                       16 * (i % kWPieces));
    }
    stage = r.rot + done;  // both below n_stages
    if (stage >= a.sp.n_stages) stage -= a.sp.n_stages;
    left = a.sp.n_stages - done;
    x = static_cast<uint32_t>(r.tok0 / 8 * kRec) |
        static_cast<uint32_t>(min(NB, a.sp.groups - r.tok0 / 8)) * kRec << 16;
  }
  // Past the CTA's last tile this works out a tile that no copy then reads.
  __device__ void advance(const KernelArgs& a) {
    if (++stage == a.sp.n_stages) stage = 0;
    if (--left == 0) set_tile(a, ti + 1);
  }
};
static_assert(kGemmMaxNB * kRec < (1 << 16) && kGemmKqMaxBatch / 8 * kRec < (1 << 16));
#endif

#if TPNODE_WGMMA
// A CTA's ring of stage buffers in shared memory. It runs on mbarriers, no CTA barrier per
// stage, so that the two warpgroups drift apart and their MMAs, decodes and conversions
// interleave. full[b]: the stage in buffer b landed (every thread's cp.async and the records'
// bulk copy); empty[b]: every warp is done reading it. Iteration i of the CTA uses buffer
// i % S; the copies run kAhead = S - 2 iterations ahead.
template <int NB, int CPS>
struct Ring {
  using L = Layout<NB, CPS>;
  static constexpr int S = L::kStages;
  static constexpr int kAhead = S - 2;
  uint8_t* smem;
  uint32_t full, empty;

  __device__ Ring(uint8_t* buffers, uint64_t* s_full, uint64_t* s_empty)
      : smem(buffers), full(smem_u32(s_full)), empty(smem_u32(s_empty)) {
    if (threadIdx.x == 0) {
      for (int i = 0; i < S; ++i) {
        mbar_init(full + 8 * i, kThreads + 1);
        mbar_init(empty + 8 * i, kThreads / 32);
      }
      mbar_fence_init();
    }
    __syncthreads();
  }
  __device__ uint8_t* buf(int i) const { return smem + (i % S) * L::kStageBytes; }
  __device__ uint32_t full_bar(int i) const { return full + 8 * (i % S); }
  __device__ void wait_full(int i) const { mbar_wait(full_bar(i), (i / S) & 1); }
  // Before iteration nx's copies: every warp released the buffer's last iteration.
  __device__ void wait_empty(int nx) const {
    if (nx >= S) mbar_wait(empty + 8 * (nx % S), ((nx - S) / S) & 1);
  }
  // The stage's MMAs are done and its generic reads fenced: release the buffer.
  __device__ void release(int it) const {
    __syncwarp();
    if (threadIdx.x % 32 == 0) mbar_arrive(empty + 8 * (it % S));
  }
};

// The CTA's stages, iteration by iteration; refill(it) queues iteration it + kAhead. 64-token
// tiles (one CTA per SM, two warps per scheduler) decode each stage's first pair before the
// stage before it drains (its MMAs' wait and conversion), so that the warpgroup's next MMAs
// go out right after that conversion: batch 64 on an H200 ~2% shorter steps. The 32- and
// 48-token tiles lost 1.3-2.6% that way (batches 9-48) and keep a stage to itself
// (compute_stage). run() may stop at any iteration and go on later (a stream-K CTA's tiles).
template <int NB, int CPS>
struct StageLoop {
  static constexpr bool kEarly = NB == 8 && CPS == 1;
  const Ring<NB, CPS>& ring;
  int wg, wr, n_it;
  int hi[NB][4], lo[NB][4];
  PairFrags af[2];
  StageView<NB, CPS> cur;

  template <typename Refill>
  __device__ StageLoop(const Ring<NB, CPS>& r, int wg_, int wr_, int n, Refill refill)
      : ring(r), wg(wg_), wr(wr_), n_it(n), cur(first(refill)) {
    if constexpr (kEarly) decode_pair(cur, 0, af[0]);
  }
  template <typename Refill>
  __device__ StageView<NB, CPS> first(Refill refill) {
    if constexpr (kEarly) refill(0);
    return view(0, kEarly);  // read by the early path only
  }
  __device__ StageView<NB, CPS> view(int i, bool wait) const {
    if (wait) ring.wait_full(i);
    return StageView<NB, CPS>(ring.buf(i), wg, wr);
  }
  // Iterations [it, end) into acc; it ends at end.
  template <typename Refill>
  __device__ void run(int& it, int end, Refill refill, float (&acc)[NB][4]) {
    for (; it < end; ++it) {
      if constexpr (kEarly) {
        if (it > 0) refill(it);
        issue_stage(cur, af, hi, lo, acc);
        StageView<NB, CPS> next = cur;
        if (it + 1 < n_it) {
          next = view(it + 1, true);
          wg_wait<2>();  // pair 2's group, af[0]'s last reader
          decode_pair(next, 0, af[0]);
        }
        wg_wait<0>();
        convert<NB>(cur.h0, cur.h1, cur.xb, hi, lo, acc);
        ring.release(it);
        cur = next;
      } else {
        refill(it);
        ring.wait_full(it);
        compute_stage<NB, CPS>(ring.buf(it), wg, wr, acc);
        ring.release(it);
      }
    }
  }
};
#endif

// CPS CTAs per SM: one takes most of shared memory for its ring; two (32-token tiles) fit
// 128 registers per thread.
template <int NB, int CPS>
__global__ void __launch_bounds__(kThreads, CPS) gemm_kq_kernel(KernelArgs a) {
#if TPNODE_WGMMA
  using L = Layout<NB, CPS>;
  constexpr int kAhead = Ring<NB, CPS>::kAhead;
  extern __shared__ __align__(128) uint8_t smem[];
  __shared__ int s_last;
  __shared__ __align__(8) uint64_t s_full[kMaxStages];
  __shared__ __align__(8) uint64_t s_empty[kMaxStages];

  const int tid = threadIdx.x, lane = tid % 32, warp = __shfl_sync(0xffffffffu, tid / 32, 0);
  const int wg = warp / 4, wr = warp % 4;
  const int tt = static_cast<int>(blockIdx.x), split = static_cast<int>(blockIdx.z);
  const int gt = static_cast<int>(blockIdx.y);
  const MatrixOf mat = matrix_of(a, gt);  // this CTA's matrix
  const OutArgs& o = mat.o;
  const int o_tiles = mat.tiles;
  const int rt = gt - o.tile0;  // row tile within the matrix
  const int64_t row0 = static_cast<int64_t>(rt) * kTileRows;
  const int tok0 = tt * NB * 8;
  const int st0 = static_cast<int>(static_cast<int64_t>(a.sp.n_stages) * split / a.sp.splits);
  const int n_st =
      static_cast<int>(static_cast<int64_t>(a.sp.n_stages) * (split + 1) / a.sp.splits) - st0;
  // Row tiles start at different stages of their range so that they do not all ask the same
  // L2 lines of x at once.
  const int rot = static_cast<int>(static_cast<int64_t>(rt) * n_st / o_tiles);
  auto stage_at = [&](int i) {
    const int k = i + rot;
    return st0 + (k >= n_st ? k - n_st : k);
  };

  // What this thread copies per stage: 16-byte pieces of the tile's rows (rows past the end
  // copy the last row, computed and never stored), and (thread 0) the tile's x records.
  uint32_t w_src[kWSlots], w_dst[kWSlots];
  const int64_t last = o.rows - 1;
#pragma unroll
  for (int k = 0; k < kWSlots; ++k) {
    const int i = min(tid + k * kThreads, kWTotal - 1);
    const int r = i / kWPieces, j = i % kWPieces;
    w_src[k] = static_cast<uint32_t>(min(row0 + r, last) * o.q_row_bytes +
                                     16 * j);
    w_dst[k] = static_cast<uint32_t>(r * L::kQStride + 16 * j);
  }
  const uint8_t* x_tile = a.x + static_cast<int64_t>(tok0 / 8) * kRec;
  const uint32_t x_bytes = static_cast<uint32_t>(min(NB, a.sp.groups - tok0 / 8)) * kRec;
  auto copy_weights = [&](int st, uint8_t* buf) {
    const uint8_t* q = o.q + static_cast<int64_t>(st) * kBlockBytes;
#pragma unroll
    for (int k = 0; k < kWSlots; ++k) {
      if (kWTotal % kThreads == 0 || tid + k * kThreads < kWTotal)
        cp_async16(buf + w_dst[k], q + w_src[k]);
    }
  };
  // Groups of the tile past m keep stale bytes: they reach only y's columns that are not stored.
  auto copy_acts = [&](int st, uint8_t* buf, uint32_t bar) {
    if (tid == 0) {
      mbar_arrive_expect_tx(bar, x_bytes);
      bulk_copy(smem_u32(buf + L::kXOff), x_tile + static_cast<int64_t>(st) * a.sp.groups * kRec,
                x_bytes, bar);
    }
  };

  const Ring<NB, CPS> ring(smem, s_full, s_empty);
  // The weights of the first stages are in flight before the previous kernel has finished;
  // x is its output.
#pragma unroll
  for (int s = 0; s < kAhead; ++s) {
    if (s < n_st) copy_weights(stage_at(s), ring.buf(s));
  }
  pdl_wait();
#pragma unroll
  for (int s = 0; s < kAhead; ++s) {
    if (s < n_st) {
      copy_acts(stage_at(s), ring.buf(s), ring.full_bar(s));
      cp_async_mbar_arrive(ring.full_bar(s));
    }
  }

  float acc[NB][4];
#pragma unroll
  for (int nt = 0; nt < NB; ++nt) {
#pragma unroll
    for (int i = 0; i < 4; ++i) acc[nt][i] = 0.0f;
  }
  // Iteration it + kAhead goes into the ring once every warp released its buffer.
  auto refill = [&](int it) {
    const int nx = it + kAhead;
    if (nx < n_st) {
      ring.wait_empty(nx);
      copy_weights(stage_at(nx), ring.buf(nx));
      copy_acts(stage_at(nx), ring.buf(nx), ring.full_bar(nx));
      cp_async_mbar_arrive(ring.full_bar(nx));
    }
  };
  StageLoop<NB, CPS> loop(ring, wg, wr, n_st, refill);
  int it = 0;
  loop.run(it, n_st, refill, acc);
  pdl_launch_dependents();

  const int64_t row_base = row0 + 64 * wg + 16 * wr;
  if (a.sp.splits == 1) {
    store_tile<NB>({o.y, o.ldy, o.rows, a.sp.m}, acc, row_base, tok0);
    return;
  }
  // Split k: every CTA of the tile leaves its partial sums in the workspace in fragment order
  // ([tile][split][warp][value][lane], coalesced); the last to arrive adds all splits in split
  // order (its own from registers, bitwise the same) and writes y.
  constexpr int kTileVals = NB * 4;
  const int64_t tile = static_cast<int64_t>(gt) * a.sp.token_tiles + tt;
  const int64_t split_floats = static_cast<int64_t>(kThreads / 32) * kTileVals * 32;
  float* part = a.sp.partials + tile * a.sp.splits * split_floats + warp * kTileVals * 32 + lane;
  float sum[NB][4];
  if (!sum_splits<NB>(acc, part, split_floats, split, a.sp.splits, a.sp.counters + tile, s_last, sum))
    return;
  store_tile<NB>({o.y, o.ldy, o.rows, a.sp.m}, sum, row_base, tok0);
  if (tid == 0) a.sp.counters[tile] = 0;  // ready for the next launch
#else
  __trap();  // gemm_kq_available() keeps the host from launching it here
#endif
}

// Stream-K (one CTA per SM): CTA c of C computes iterations [T c / C, T (c + 1) / C) of the T =
// tiles x stages of the launch, tile after tile, its ring running on from one tile into the
// next. The stages and their ring are gemm_kq_kernel's; the tile-per-CTA kernel stays apart
// because its two-CTA form has no registers to spare for the tile cursor.
template <int NB>
__global__ void __launch_bounds__(kThreads, 1) gemm_kq_stream_kernel(KernelArgs a) {
#if TPNODE_WGMMA
  using L = Layout<NB, 1>;
  constexpr int kAhead = Ring<NB, 1>::kAhead;
  extern __shared__ __align__(128) uint8_t smem[];
  __shared__ int s_last;
  __shared__ __align__(8) uint64_t s_full[kMaxStages];
  __shared__ __align__(8) uint64_t s_empty[kMaxStages];

  const int tid = threadIdx.x, lane = tid % 32, warp = __shfl_sync(0xffffffffu, tid / 32, 0);
  const int wg = warp / 4, wr = warp % 4;
  const int n_st = a.sp.n_stages;
  // The CTA's first iteration (tile * n_st + its place in the tile's order) and count.
  const int it0 = Ranges(a).begin(static_cast<int>(blockIdx.x));
  const int n_it = Ranges(a).begin(static_cast<int>(blockIdx.x) + 1) - it0;

  uint32_t w_dst[kWSlots];  // where this thread's pieces of a stage go in a ring buffer
#pragma unroll
  for (int k = 0; k < kWSlots; ++k) {
    const int i = min(tid + k * kThreads, kWTotal - 1);
    w_dst[k] = static_cast<uint32_t>(i / kWPieces * L::kQStride + 16 * (i % kWPieces));
  }
  Filler<NB> fill;
  fill.set_tile(a, it0 / n_st, it0 % n_st);
  auto copy_weights = [&](const Filler<NB>& f, uint8_t* buf) {
    const uint8_t* q = f.q + static_cast<int64_t>(f.stage) * kBlockBytes;
#pragma unroll
    for (int k = 0; k < kWSlots; ++k) {
      if (kWTotal % kThreads == 0 || tid + k * kThreads < kWTotal)
        cp_async16(buf + w_dst[k], q + f.w_src[k]);
    }
  };
  // Groups of the tile past m keep stale bytes: they reach only y's columns that are not stored.
  auto copy_acts = [&](const Filler<NB>& f, uint8_t* buf, uint32_t bar) {
    if (tid == 0) {
      const uint32_t bytes = f.x >> 16;
      mbar_arrive_expect_tx(bar, bytes);
      bulk_copy(smem_u32(buf + L::kXOff),
                a.x + (f.x & 0xFFFFu) + static_cast<int64_t>(f.stage) * a.sp.groups * kRec, bytes,
                bar);
    }
  };

  const Ring<NB, 1> ring(smem, s_full, s_empty);
  // The weights of the first stages are in flight before the previous kernel has finished;
  // x is its output.
  {
    Filler<NB> f = fill;
#pragma unroll
    for (int s = 0; s < kAhead; ++s) {
      if (s < n_it) {
        copy_weights(f, ring.buf(s));
        f.advance(a);
      }
    }
  }
  pdl_wait();
#pragma unroll
  for (int s = 0; s < kAhead; ++s) {
    if (s < n_it) {
      copy_acts(fill, ring.buf(s), ring.full_bar(s));
      cp_async_mbar_arrive(ring.full_bar(s));
      fill.advance(a);
    }
  }

  float acc[NB][4];
#pragma unroll
  for (int nt = 0; nt < NB; ++nt) {
#pragma unroll
    for (int i = 0; i < 4; ++i) acc[nt][i] = 0.0f;
  }
  // The tile being computed, and the iteration (of this CTA's) where its part of it ends.
  int ti = it0 / n_st;
  const int first_end = min(n_it, (ti + 1) * n_st - it0);
  // Once the tile's last stage of this CTA is converted: a whole tile is stored; a part goes
  // to the workspace, and the tile's last CTA to arrive adds the parts in CTA order and
  // stores them. A CTA holds at most two parts (its range's first and last tiles): its first
  // goes to slot 2c, its last to 2c + 1. The counter is that of the tile's first CTA, which
  // starts no other tile that another CTA finishes.
  auto finish_tile = [&]() {
    const TileRef r = tile_ref(a, ti, NB);
    const int64_t row_base = r.row0 + 64 * wg + 16 * wr;
    const TileOut out{r.o.y, r.o.ldy, r.o.rows, a.sp.m};
    const int t_begin = ti * n_st;
    if (it0 <= t_begin && t_begin + n_st <= it0 + n_it) {  // the whole tile
      store_tile<NB>(out, acc, row_base, r.tok0);
    } else {
      const Ranges ranges(a);
      const int c0 = ranges.cta_of(t_begin), c1 = ranges.cta_of(t_begin + n_st - 1);
      constexpr int kTileVals = NB * 4;
      const int64_t part_floats = static_cast<int64_t>(kThreads / 32) * kTileVals * 32;
      float* base = a.sp.partials + warp * kTileVals * 32 + lane;
      // Only the tile's first CTA can have begun in an earlier tile.
      const int first_last = ranges.begin(c0) < t_begin ? 1 : 0;
      auto slot = [&](int s) {
        return base + (2 * (c0 + s) + (s == 0 ? first_last : 0)) * part_floats;
      };
      float sum[NB][4];
      if (sum_parts<NB>(acc, slot, static_cast<int>(blockIdx.x) - c0, c1 - c0 + 1,
                        a.sp.counters + c0, s_last, sum)) {
        store_tile<NB>(out, sum, row_base, r.tok0);
        if (tid == 0) a.sp.counters[c0] = 0;  // ready for the next launch
      }
    }
#pragma unroll
    for (int nt = 0; nt < NB; ++nt) {
#pragma unroll
      for (int i = 0; i < 4; ++i) acc[nt][i] = 0.0f;
    }
    ++ti;
  };
  // Iteration it + kAhead goes into the ring once every warp released its buffer.
  auto refill = [&](int it) {
    const int nx = it + kAhead;
    if (nx < n_it) {
      ring.wait_empty(nx);
      copy_weights(fill, ring.buf(nx));
      copy_acts(fill, ring.buf(nx), ring.full_bar(nx));
      cp_async_mbar_arrive(ring.full_bar(nx));
      fill.advance(a);
    }
  };
  // Each tile part's stages, then the part's end.
  StageLoop<NB, 1> loop(ring, wg, wr, n_it, refill);
  for (int it = 0, end = first_end; it < n_it; end = min(n_it, end + n_st)) {
    loop.run(it, end, refill, acc);
    if (it == n_it) pdl_launch_dependents();
    finish_tile();
  }
#else
  __trap();  // gemm_kq_available() keeps the host from launching it here
#endif
}

// One warp per (token slot, stage) writes its slot of the stage's record (kq::write_record);
// slots past m get zeros.
__global__ void gemm_kq_acts_kernel(GemmKqActsParams p, int groups, int64_t n_warps) {
  const int64_t wid = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  const int lane = static_cast<int>(threadIdx.x % 32);
  pdl_wait();
  if (wid >= n_warps) return;
  const int slots = groups * 8;
  const int64_t tok = wid % slots, st = wid / slots;
  float v[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
  if (tok < p.m) {
    const float* src = p.x + tok * p.cols + st * kStageK + 8 * lane;
    const float4 a = *reinterpret_cast<const float4*>(src);
    const float4 b = *reinterpret_cast<const float4*>(src + 4);
    v[0] = a.x, v[1] = a.y, v[2] = a.z, v[3] = a.w, v[4] = b.x, v[5] = b.y, v[6] = b.z, v[7] = b.w;
  }
  kq::write_record(v, kq::record(p.y, st, groups, tok), static_cast<int>(tok % 8));
}

__global__ void gemm_kq_probe_kernel(int* out) { *out = TPNODE_WGMMA; }

// ---- host side ------------------------------------------------------------------------------


PerDeviceSetup g_setup("gemm_kq");
std::array<std::atomic<int>, kMaxCachedDevices> g_available{};  // 0 unknown, 1 yes, 2 no

int64_t row_tiles(const GemmKqGroupParams& p) {
  int64_t n = 0;
  for (int i = 0; i < p.n; ++i) n += (p.outs[i].w.rows + kTileRows - 1) / kTileRows;
  return n;
}

// 48-token tiles too: a batch of 33-48 (or 65-96) tokens does not pay 64-token MMAs.
GemmTokenTiling token_tiling(int64_t m, const GemmKqPlan& plan) {
  return gemm_token_tiling(m, plan.max_tile_tokens / 8, true);
}

// The workspace holds `parts` output tile parts and `counters` arrival counters: k splits need
// a part per tile and split and a counter per tile; stream-K two parts and a counter per CTA.
bool workspace_fits(const GemmKqGroupParams& p, const GemmKqPlan& plan, int64_t parts,
                    int64_t counters) {
  const GemmTokenTiling tk = token_tiling(p.m, plan);
  return p.ws.partials != nullptr && p.ws.counters != nullptr && counters <= p.ws.n_counters &&
         parts * gemm_tile_floats(tk.nb) <= p.ws.partial_floats;
}

GemmKqGroupParams group_of(const GemmKqParams& p) {
  GemmKqGroupParams g;
  g.outs[0] = {.w = p.w, .y = p.y, .ldy = p.ldy};
  g.n = 1;
  g.x = p.x;
  g.m = p.m;
  g.ws = p.ws;
  return g;
}

template <typename Kernel>
void set_smem_limit(Kernel kernel, int bytes) {
  TPNODE_CUDA_CHECK(
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes));
  // All of the SM's unified L1/shared memory as shared memory, so that CPS rings fit at once.
  TPNODE_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributePreferredSharedMemoryCarveout,
                                         cudaSharedmemCarveoutMaxShared));
}
template <int NB, int CPS>
void set_smem_limits() {
  set_smem_limit(gemm_kq_kernel<NB, CPS>, Layout<NB, CPS>::kSmemBytes);
  if constexpr (CPS == 1) set_smem_limit(gemm_kq_stream_kernel<NB>, Layout<NB, CPS>::kSmemBytes);
}

// Stream-K runs one CTA per SM.
template <int NB, int CPS>
void launch(dim3 grid, bool stream_k, const KernelArgs& a, cudaStream_t stream) {
  if constexpr (CPS == 1) {
    if (stream_k) {
      launch_pdl(gemm_kq_stream_kernel<NB>, grid, dim3(kThreads), Layout<NB, CPS>::kSmemBytes,
                 stream, a);
      return;
    }
  }
  launch_pdl(gemm_kq_kernel<NB, CPS>, grid, dim3(kThreads), Layout<NB, CPS>::kSmemBytes, stream,
             a);
}

}  // namespace

GemmDqWorkspaceSize gemm_kq_workspace_size() {
  // Two CTAs per SM at most (32-token tiles), two parts per CTA.
  const int64_t ctas = 2 * int64_t{current_device_sms("gemm_kq")};
  return {2 * ctas * gemm_tile_floats(4), ctas};
}

bool gemm_kq_supports(const DeviceMatrix& w) {
  return w.type == TensorType::kQ4_K && w.rows > 0 && w.cols > 0 && w.cols % kStageK == 0 &&
         reinterpret_cast<uintptr_t>(w.q) % 16 == 0 && w.q_row_bytes % 16 == 0;
}

void gemm_kq_init() {
  set_smem_limits<4, 1>();
  set_smem_limits<4, 2>();
  set_smem_limits<6, 1>();
  set_smem_limits<8, 1>();
  const int dev = current_device("gemm_kq");
  if (g_available[dev].load() == 0) {
    cudaDeviceProp prop{};
    TPNODE_CUDA_CHECK(cudaGetDeviceProperties(&prop, dev));
    int yes = 0;
    if (prop.major == 9 && prop.minor == 0) {
      int* d = nullptr;
      TPNODE_CUDA_CHECK(cudaMalloc(&d, sizeof(int)));
      gemm_kq_probe_kernel<<<1, 1>>>(d);
      const cudaError_t launched = cudaGetLastError();
      if (launched == cudaSuccess) {
        TPNODE_CUDA_CHECK(cudaMemcpy(&yes, d, sizeof(int), cudaMemcpyDeviceToHost));
      }
      TPNODE_CUDA_CHECK(cudaFree(d));
    }
    g_available[dev].store(yes == 1 ? 1 : 2);
  }
  g_setup.mark_done();
}

bool gemm_kq_available() {
  const int dev = current_device("gemm_kq");
  if (g_available[dev].load() == 0) gemm_kq_init();
  return g_available[dev].load() == 1;
}

void gemm_kq_check_tuning(const GemmKqTuning& t) {
  TPNODE_CHECK(t.max_tile_tokens == 32 || t.max_tile_tokens == 64,
               "gemm_kq: token tiles of at most {} (32 or 64)", t.max_tile_tokens);
  TPNODE_CHECK(t.ctas_per_sm == 1 || t.ctas_per_sm == 2, "gemm_kq: {} CTAs per SM (1 or 2)",
               t.ctas_per_sm);
}

GemmKqPlan gemm_kq_plan(const GemmKqGroupParams& p, const GemmKqTuning& t) {
  gemm_kq_check_tuning(t);
  GemmKqPlan plan{.max_tile_tokens = t.max_tile_tokens};
  if (p.n < 1 || p.m < 1 || p.m > kGemmKqMaxBatch || p.outs[0].w.cols < kStageK) return plan;
  const GemmTokenTiling tk = token_tiling(p.m, plan);
  plan.ctas_per_sm = tk.nb == 4 ? t.ctas_per_sm : 1;
  const int64_t tiles = row_tiles(p) * tk.tiles;
  const int64_t n_stages = p.outs[0].w.cols / kStageK;
  // The resident CTAs; each split keeps at least two stages for the ring to overlap.
  const int64_t slots = int64_t{plan.ctas_per_sm} * current_device_sms("gemm_kq");
  int64_t s = std::min<int64_t>(
      {kGemmKqMaxSplits, slots / std::max<int64_t>(tiles, 1), n_stages / 2});
  s = std::max<int64_t>(s, 1);
  while (s > 1 && !workspace_fits(p, plan, tiles * s, tiles)) --s;
  plan.k_splits = static_cast<int>(s);
  // Stream-K where the tiles make partial waves: more tiles than slots, not a multiple of them.
  if (t.stream_k && tiles > slots && tiles % slots != 0 && plan.ctas_per_sm == 1 &&
      tiles * n_stages >= 2 * slots && workspace_fits(p, plan, 2 * slots, slots)) {
    plan.ctas = static_cast<int>(slots);
  }
  return plan;
}
GemmKqPlan gemm_kq_plan(const GemmKqParams& p, const GemmKqTuning& t) {
  return gemm_kq_plan(group_of(p), t);
}

void gemm_kq_acts(const GemmKqActsParams& p, cudaStream_t stream) {
  TPNODE_CHECK(p.m >= 0 && p.cols % kStageK == 0, "gemm_kq_acts: {} x {} (cols % {} != 0)", p.m,
               p.cols, kStageK);
  TPNODE_CHECK(p.x != nullptr && p.y != nullptr && reinterpret_cast<uintptr_t>(p.x) % 16 == 0 &&
                   reinterpret_cast<uintptr_t>(p.y) % 16 == 0,
               "gemm_kq_acts: x and y must be 16-byte aligned device pointers");
  if (p.m == 0 || p.cols == 0) return;
  const int groups = static_cast<int>((p.m + 7) / 8);
  const int64_t n_warps = static_cast<int64_t>(groups) * 8 * (p.cols / kStageK);
  constexpr int kBlock = 256;
  const int64_t blocks = (n_warps * 32 + kBlock - 1) / kBlock;
  launch_pdl(gemm_kq_acts_kernel, dim3(static_cast<unsigned>(blocks)), dim3(kBlock), 0, stream, p,
             groups, n_warps);
}

void gemm_kq(const GemmKqParams& p, cudaStream_t stream) { gemm_kq_group(group_of(p), stream); }
void gemm_kq(const GemmKqParams& p, const GemmKqPlan& plan, cudaStream_t stream) {
  gemm_kq_group(group_of(p), plan, stream);
}
void gemm_kq_group(const GemmKqGroupParams& p, cudaStream_t stream) {
  gemm_kq_group(p, gemm_kq_plan(p), stream);
}

void gemm_kq_group(const GemmKqGroupParams& p, const GemmKqPlan& plan, cudaStream_t stream) {
  TPNODE_CHECK(p.n >= 1 && p.n <= kGemmKqMaxGroup, "gemm_kq: {} matrices in one launch (1..{})",
               p.n, kGemmKqMaxGroup);
  TPNODE_CHECK(p.m >= 1 && p.m <= kGemmKqMaxBatch, "gemm_kq: batch {} outside 1..{}", p.m,
               kGemmKqMaxBatch);
  TPNODE_CHECK(p.x != nullptr && reinterpret_cast<uintptr_t>(p.x) % 16 == 0,
               "gemm_kq: x must be a 16-byte aligned device pointer");
  gemm_kq_check_tuning({.max_tile_tokens = plan.max_tile_tokens, .ctas_per_sm = plan.ctas_per_sm});
  const GemmTokenTiling tk = token_tiling(p.m, plan);
  TPNODE_CHECK(plan.ctas_per_sm == 1 || tk.nb == 4, "gemm_kq: two CTAs per SM for {}-token tiles",
               8 * tk.nb);
  const int64_t cols = p.outs[0].w.cols;
  KernelArgs a;
  int64_t tiles = 0;
  for (int i = 0; i < p.n; ++i) {
    const GemmKqOut& o = p.outs[i];
    TPNODE_CHECK(gemm_kq_supports(o.w) && o.w.cols == cols &&
                     o.w.q_row_bytes == p.outs[0].w.q_row_bytes,
                 "gemm_kq: no kernel for a {} {}x{} matrix (in a launch of {} columns)",
                 weight_type_label(o.w.type), o.w.rows, o.w.cols, cols);
    const int64_t ldy = o.ldy == 0 ? o.w.rows : o.ldy;
    TPNODE_CHECK(o.y != nullptr && ldy >= o.w.rows, "gemm_kq: y row stride {} < rows {}", ldy,
                 o.w.rows);
    // The kernel keeps byte offsets within the quant region in 32 bits.
    TPNODE_CHECK(static_cast<uint64_t>(o.w.rows) * o.w.q_row_bytes <= UINT32_MAX,
                 "gemm_kq: {}x{} matrix over 4 GiB", o.w.rows, o.w.cols);
    a.outs[i] = {.q = o.w.q,
                 .q_row_bytes = static_cast<int64_t>(o.w.q_row_bytes),
                 .rows = o.w.rows,
                 .y = o.y,
                 .ldy = ldy,
                 .tile0 = static_cast<int>(tiles)};
    tiles += (o.w.rows + kTileRows - 1) / kTileRows;
  }
  const int64_t n_stages = cols / kStageK;
  TPNODE_CHECK(plan.k_splits >= 1 && plan.k_splits <= kGemmKqMaxSplits && plan.k_splits <= n_stages,
               "gemm_kq: {} k splits for {} stages (1..{})", plan.k_splits, n_stages,
               kGemmKqMaxSplits);
  const int64_t all_tiles = tiles * tk.tiles;
  TPNODE_CHECK(plan.k_splits == 1 || workspace_fits(p, plan, all_tiles * plan.k_splits, all_tiles),
               "gemm_kq: the workspace is too small for {} k splits", plan.k_splits);
  TPNODE_CHECK(plan.ctas == 0 || (plan.ctas > 0 && plan.ctas_per_sm == 1 &&
                                  plan.ctas <= all_tiles * n_stages &&
                                  workspace_fits(p, plan, 2 * int64_t{plan.ctas}, plan.ctas)),
               "gemm_kq: stream-K over {} CTAs for {} tiles of {} stages (or the workspace is "
               "too small)",
               plan.ctas, all_tiles, n_stages);
  // The kernel counts the tiles' stages in 32 bits (stream-K: times its CTAs).
  TPNODE_CHECK(tiles <= 65535 && all_tiles * n_stages * std::max(plan.ctas, 1) <= UINT32_MAX,
               "gemm_kq: {} row tiles of {} stages", tiles, n_stages);
  if (g_setup.needed(stream)) gemm_kq_init();
  TPNODE_CHECK(gemm_kq_available(), "gemm_kq: needs compute capability 9.0 and an sm_90a build");

  a.n_outs = p.n;
  a.row_tiles = static_cast<int>(tiles);
  a.x = p.x;
  a.sp = gemm_split_args(p.m, n_stages, plan.k_splits, tk.tiles, p.ws.partials, p.ws.counters);
  const bool sk = plan.ctas > 0;
  const dim3 grid = sk ? dim3(static_cast<unsigned>(plan.ctas))
                       : dim3(static_cast<unsigned>(tk.tiles), static_cast<unsigned>(tiles),
                              static_cast<unsigned>(plan.k_splits));
  if (plan.ctas_per_sm == 2) {
    launch<4, 2>(grid, sk, a, stream);
  } else if (tk.nb == 6) {
    launch<6, 1>(grid, sk, a, stream);
  } else {
    TPNODE_DISPATCH_TOKEN_TILES("gemm_kq", tk.nb, NB, { launch<NB, 1>(grid, sk, a, stream); })
  }
}

}  // namespace tpnode::cuda
