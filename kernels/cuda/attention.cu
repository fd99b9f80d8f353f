#include "kernels/cuda/attention.h"

#include <cooperative_groups.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cstdint>
#include <cmath>
#include <type_traits>
#include <utility>

#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/decode_attention_mma.h"
#include "kernels/cuda/decode_common.cuh"
#include "kernels/cuda/pdl.cuh"
#include "kernels/cuda/kq_records.cuh"
#include "kernels/cuda/quantize_chunk.cuh"
#include "kernels/cuda/rope.cuh"

namespace tpnode::cuda {
namespace {

using namespace decode;

// Element offset of (key, kv head) in a layer's K or V blocks. Keys are positions (int32):
// the division by the block size is a 32-bit one (a 64-bit division is several times longer).
__device__ __forceinline__ int64_t kv_row(const PagedKv& kv, const DeviceBatch& b, int seq,
                                          int64_t key, int64_t kvh) {
  const int k = static_cast<int>(key), bs = static_cast<int>(kv.block_size);
  const int64_t blk = b.block_tables[static_cast<int64_t>(seq) * b.max_blocks + k / bs];
  return ((blk * kv.n_head_kv + kvh) * bs + k % bs) * kv.head_dim;
}

// ---- store ---------------------------------------------------------------------------
template <typename KvT>
__global__ void kv_store_kernel(KvStoreParams p) {
  pdl_wait();  // k and v come from the launch before
  pdl_launch_dependents();
  const int64_t per_token = p.kv.n_head_kv * p.kv.head_dim;
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= p.batch.n_tokens * per_token) return;
  const int64_t t = i / per_token, r = i % per_token;
  const int64_t kvh = r / p.kv.head_dim, d = r % p.kv.head_dim;
  const int64_t off = kv_row(p.kv, p.batch, p.batch.token_seq[t], p.batch.positions[t], kvh) + d;
  static_cast<KvT*>(p.kv.k)[off] = KvElem<KvT>::from(p.k[i]);
  static_cast<KvT*>(p.kv.v)[off] = KvElem<KvT>::from(p.v[i]);
}

// ---- decode --------------------------------------------------------------------------
// A CTA of kDecodeWarps warps takes one (token, KV head, head chunk, key split). A key row of
// hd/8 16-byte chunks is spread over `tx` lanes (a power of two) holding NC chunks each (lane
// j of a group: chunks c*tx + j), so a warp reads 32/tx rows per load; each lane keeps the
// query heads' values of its chunks in registers and runs its own online softmax over its
// rows; groups, warps and splits merge at the end. K and V reach shared memory through a
// per-thread cp.async ring: a thread only reads back what it copied itself, so the ring
// needs no barriers. The ring's block-table entries are read a stage ahead of its copies.
// When the launch stores the token's own key (k_new), that key never goes through the cache:
// warp 0 of the split holding it starts its softmax state from it.
constexpr int kDecodeStages = 3;
constexpr int kDecodeChunksPerStage = 4;  // 16-byte K chunks (and as many of V) per lane
// A key split holds at least this many ring stages, and capacities up to it run whole: the
// merge of splits is a chain of L2 round trips (partials out, a fence, the ticket, partials
// in) that costs more than several stages of arithmetic, whose loads the ring overlaps.
constexpr int kDecodeMinSplitStages = 8;
// Clusters split grids of at most 1 / kDecodeClusterGridShare CTAs per SM.
constexpr int kDecodeClusterGridShare = 4;

// Query heads per CTA: the KV head's group rounded up to 1, 2, 4 or 8 (larger groups take
// several CTAs, the head chunks).
int decode_heads_per_cta(int64_t group) {
  return group <= 1 ? 1 : group <= 2 ? 2 : group <= 4 ? 4 : 8;
}
// 16-byte chunks of a row per lane: two halve the shuffles per key; eight heads need the
// registers for one.
constexpr int decode_chunks_per_lane(int heads) { return heads >= 8 ? 1 : 2; }

__host__ __device__ constexpr int decode_lanes_per_key(int head_dim, int nc) {
  const int per = (head_dim / 8 + nc - 1) / nc;
  int tx = 1;
  while (tx < per) tx *= 2;
  return tx;
}
// Keys a CTA takes per ring stage.
__host__ __device__ constexpr int decode_stage_keys(int head_dim, int nc) {
  return kDecodeWarps * (kDecodeChunksPerStage / nc) * (32 / decode_lanes_per_key(head_dim, nc));
}
static_assert(decode_stage_keys(128, 2) == 32 && decode_stage_keys(64, 2) == 64 &&
                  decode_stage_keys(80, 2) == 32 && decode_stage_keys(128, 1) == 32 &&
                  decode_stage_keys(64, 1) == 64 && decode_stage_keys(80, 1) == 32,
              "stage geometry (the same for one or two chunks per lane, which the planner "
              "relies on)");

// Shared memory: the ring, reused after the key loop for the warps' states.
constexpr size_t kDecodeRingBytes =
    sizeof(int4) * kDecodeStages * 2 * kDecodeChunksPerStage * kDecodeThreads;
constexpr size_t kDecodeSmemLimit = 48 * 1024;
static_assert(kDecodeRingBytes <= kDecodeSmemLimit, "the ring fits the default shared memory");
// After the key loop: the warps' states, then the CTA's merged output and log2-sum-exp per
// head (what the other CTAs of a cluster read).
size_t decode_smem_bytes(int heads, int64_t head_dim) {
  const size_t ring = kDecodeRingBytes;
  return std::max(ring, decode_red_bytes(heads, head_dim));
}

// Eight heads need about 240 registers (two CTAs per SM); fewer fit three CTAs per SM.
template <typename KvT, int GB, int NC>
__global__ void __launch_bounds__(kDecodeThreads, GB >= 8 ? 2 : 3)
    decode_attention_kernel(DecodeAttentionParams p) {
  constexpr int U = kDecodeChunksPerStage / NC;  // key rows per lane per stage
  constexpr int E = NC * 8;                      // head_dim values per lane
  constexpr int kSlots = U * NC;                 // K chunks per lane per stage (V alike)
  constexpr int kStageInt4 = 2 * kSlots * kDecodeThreads;
  constexpr int kV = kSlots * kDecodeThreads;  // V slots follow the K slots
  constexpr int S = kDecodeStages;
  extern __shared__ int4 smem[];  // ring: [stage][K, V][slot][thread]

  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int hd = static_cast<int>(p.kv.head_dim), nch = hd / 8;
  const int tx = decode_lanes_per_key(hd, NC), kr = 32 / tx;
  const int grp = lane / tx, jl = lane % tx;
  const int warp_keys = U * kr, stage_keys = kDecodeWarps * warp_keys;
  const int n_kv = static_cast<int>(p.kv.n_head_kv);
  const int group = static_cast<int>(p.n_head) / n_kv;
  const int n_hchunks = (group + GB - 1) / GB;
  const int kvh = blockIdx.y / n_hchunks, hchunk = blockIdx.y % n_hchunks;
  const int h0 = kvh * group + hchunk * GB, hc = min(GB, group - hchunk * GB);
  const int split = blockIdx.z;

  // The step's metadata is uploaded before any kernel of the step: readable before pdl_wait.
  // The position and the sequence are read together (the table row needs only the latter).
  const int64_t t = p.tokens != nullptr ? p.tokens[blockIdx.x] : blockIdx.x;
  const int pos = p.batch.positions[t];  // the token's own key; keys 0..pos are visible
  const int seq = p.batch.token_seq[t];
  const int begin = split * p.split_len;
  // Past this token's length. A cluster's CTAs all take part in its merge: such a CTA runs no
  // stage and offers an empty state.
  if (begin > pos && !p.cluster) return;
  const int end = begin > pos ? begin : min(pos + 1, begin + p.split_len);
  const int n_active = pos / p.split_len + 1;
  const bool fused = p.k_new != nullptr;
  // Fused, the token's own key comes from k_new / v_new and the cache supplies those before it.
  const bool own_key = fused && pos >= begin && pos < end;
  const int cache_end = fused ? min(end, pos) : end;
  const int n_stages = max(0, (cache_end - begin + stage_keys - 1) / stage_keys);
  const int32_t* table = p.batch.block_tables + static_cast<int64_t>(seq) * p.batch.max_blocks;
  const int bs = static_cast<int>(p.kv.block_size);
  const KvT* kc = static_cast<const KvT*>(p.kv.k);
  const KvT* vc = static_cast<const KvT*>(p.kv.v);

  auto key_of = [&](int i, int u) {
    return begin + i * stage_keys + warp * warp_keys + u * kr + grp;
  };
  // The cache row of row u of stage i (one division by the block size), or -1 past the
  // split's cached keys.
  auto row_of = [&](int i, int u) -> int64_t {
    const int key = key_of(i, u);
    if (key >= cache_end) return -1;
    const int64_t blk = __ldg(table + key / bs);
    return (blk * n_kv + kvh) * bs + key % bs;
  };
  auto k_slot = [&](int i, int u, int c) {
    return smem + (i % S) * kStageInt4 + (u * NC + c) * kDecodeThreads + tid;
  };
  // Stage i into the ring from its rows' blocks; rows past the split's cached keys and chunks
  // past head_dim read as zeros. One commit group per stage, empty or not, so that the waits
  // count stages.
  auto issue_stage = [&](int i, const int64_t (&rows)[U]) {
    if (i < n_stages) {
#pragma unroll
      for (int u = 0; u < U; ++u) {
        const int64_t row = rows[u] * hd;
#pragma unroll
        for (int c = 0; c < NC; ++c) {
          const int ch = c * tx + jl;
          int4* dst = k_slot(i, u, c);
          if (rows[u] >= 0 && ch < nch) {
            cp_async16(dst, kc + row + ch * 8);
            cp_async16(dst + kV, vc + row + ch * 8);
          } else {
            dst[0] = make_int4(0, 0, 0, 0);
            dst[kV] = make_int4(0, 0, 0, 0);
          }
        }
      }
    }
    cp_async_commit();
  };

  // Fused, the launch before wrote only q and the new K/V: the cache's older keys can be in
  // flight before waiting for it. Otherwise kv_store (the launch before) wrote cache slots.
  if (!fused) pdl_wait();
  int64_t rows_next[U];  // the cache rows of the next stage to issue
  {
    int64_t rows[S - 1][U];
#pragma unroll
    for (int i = 0; i < S - 1; ++i) {
#pragma unroll
      for (int u = 0; u < U; ++u) rows[i][u] = row_of(i, u);
    }
#pragma unroll
    for (int u = 0; u < U; ++u) rows_next[u] = row_of(S - 1, u);
#pragma unroll
    for (int i = 0; i < S - 1; ++i) issue_stage(i, rows[i]);
  }
  // Head chunk 0's lanes that hold the new key also store it (no CTA reads that slot).
  const bool store_new = own_key && hchunk == 0 && warp == 0 && grp == 0;
  const int blk_own = store_new ? __ldg(table + pos / bs) : -1;

  // The rows this CTA reads from the launch before go to the ring's last stage (free until the
  // key loop fills it); the lanes then take their chunks from there.
  const DecodeRows rows =
      decode_rows_at(reinterpret_cast<float*>(smem + (S - 1) * kStageInt4), GB, hd);
  const float* q_s = rows.q_s;
  const float* k_s = rows.k_s;
  const float* v_s = rows.v_s;
  const DecodeCta cta{.t = t, .pos = pos, .h0 = h0, .hc = hc, .kvh = kvh, .hd = hd,
                      .split = split, .n_active = n_active, .own_key = own_key};
  decode_stage_rows(p, cta, rows, fused);

  // Query values of this lane's chunks.
  float q[GB][E];
#pragma unroll
  for (int h = 0; h < GB; ++h) {
#pragma unroll
    for (int c = 0; c < NC; ++c) {
      const int ch = c * tx + jl;
      float x[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
      if (h < hc && ch < nch) load8(q_s + h * hd + ch * 8, x);
#pragma unroll
      for (int e = 0; e < 8; ++e) q[h][c * 8 + e] = x[e];
    }
  }

  // The token's own key, as the cache rounds it: its scores (the same sums as a cached key's)
  // and its value become the first state of warp 0's first lane group.
  float s_own[GB], v_own[E];
#pragma unroll
  for (int h = 0; h < GB; ++h) s_own[h] = -INFINITY;
#pragma unroll
  for (int e = 0; e < E; ++e) v_own[e] = 0.0f;
  if (own_key && warp == 0) {
#pragma unroll
    for (int h = 0; h < GB; ++h) s_own[h] = 0.0f;
#pragma unroll
    for (int c = 0; c < NC; ++c) {
      const int ch = c * tx + jl;
      float kx[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
      float vx[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
      if (ch < nch) {
        load8(k_s + ch * 8, kx);
        load8(v_s + ch * 8, vx);
        const int4 kk = pack8<KvT>(kx), vv = pack8<KvT>(vx);
        if (store_new) {
          const int64_t row =
              ((static_cast<int64_t>(blk_own) * n_kv + kvh) * bs + pos % bs) * hd + ch * 8;
          *reinterpret_cast<int4*>(static_cast<KvT*>(p.kv.k) + row) = kk;
          *reinterpret_cast<int4*>(static_cast<KvT*>(p.kv.v) + row) = vv;
        }
        unpack8<KvT>(kk, kx);
        unpack8<KvT>(vv, vx);
      }
#pragma unroll
      for (int h = 0; h < GB; ++h) {
#pragma unroll
        for (int e = 0; e < 8; ++e) s_own[h] = fmaf(q[h][c * 8 + e], kx[e], s_own[h]);
      }
#pragma unroll
      for (int e = 0; e < 8; ++e) v_own[c * 8 + e] = vx[e];
    }
    for (int o = 1; o < tx; o <<= 1) {
#pragma unroll
      for (int h = 0; h < GB; ++h) s_own[h] += __shfl_xor_sync(0xffffffffu, s_own[h], o);
    }
  }
  const bool starts_own = own_key && warp == 0 && grp == 0;
  __syncthreads();  // the staged rows' slot takes the ring's next stage

  float acc[GB][E], m[GB], l[GB];
#pragma unroll
  for (int h = 0; h < GB; ++h) {
    m[h] = starts_own ? s_own[h] : -INFINITY;
    l[h] = starts_own ? 1.0f : 0.0f;
#pragma unroll
    for (int e = 0; e < E; ++e) acc[h][e] = starts_own ? v_own[e] : 0.0f;
  }

  for (int i = 0; i < n_stages; ++i) {
    issue_stage(i + S - 1, rows_next);
#pragma unroll
    for (int u = 0; u < U; ++u) rows_next[u] = row_of(i + S, u);
    cp_async_wait<S - 1>();  // stage i has landed (this thread's copies)
    float s[U][GB];
#pragma unroll
    for (int u = 0; u < U; ++u) {
#pragma unroll
      for (int h = 0; h < GB; ++h) s[u][h] = 0.0f;
#pragma unroll
      for (int c = 0; c < NC; ++c) {
        float kf[8];
        unpack8<KvT>(*k_slot(i, u, c), kf);
#pragma unroll
        for (int h = 0; h < GB; ++h) {
#pragma unroll
          for (int e = 0; e < 8; ++e) s[u][h] = fmaf(q[h][c * 8 + e], kf[e], s[u][h]);
        }
      }
    }
    for (int o = 1; o < tx; o <<= 1) {
#pragma unroll
      for (int u = 0; u < U; ++u) {
#pragma unroll
        for (int h = 0; h < GB; ++h) s[u][h] += __shfl_xor_sync(0xffffffffu, s[u][h], o);
      }
    }
#pragma unroll
    for (int u = 0; u < U; ++u) {
      if (key_of(i, u) >= cache_end) {
#pragma unroll
        for (int h = 0; h < GB; ++h) s[u][h] = -INFINITY;
      }
    }
    // Online softmax of this lane group's rows (m = -inf until it has seen a key).
#pragma unroll
    for (int h = 0; h < GB; ++h) {
      float mx = s[0][h];
#pragma unroll
      for (int u = 1; u < U; ++u) mx = fmaxf(mx, s[u][h]);
      const float m_new = fmaxf(m[h], mx);
      const float m_use = m_new == -INFINITY ? 0.0f : m_new;
      const float alpha = exp2f(m[h] - m_use);
      l[h] *= alpha;
#pragma unroll
      for (int e = 0; e < E; ++e) acc[h][e] *= alpha;
#pragma unroll
      for (int u = 0; u < U; ++u) {
        s[u][h] = exp2f(s[u][h] - m_use);
        l[h] += s[u][h];
      }
      m[h] = m_new;
    }
#pragma unroll
    for (int u = 0; u < U; ++u) {
#pragma unroll
      for (int c = 0; c < NC; ++c) {
        float vf[8];
        unpack8<KvT>(k_slot(i, u, c)[kV], vf);
#pragma unroll
        for (int h = 0; h < GB; ++h) {
#pragma unroll
          for (int e = 0; e < 8; ++e) acc[h][c * 8 + e] = fmaf(s[u][h], vf[e], acc[h][c * 8 + e]);
        }
      }
    }
  }
  cp_async_wait<0>();

  // Lane groups of the warp (lanes tx apart hold the same chunks) merge by shuffles.
  for (int o = tx; o < 32; o <<= 1) {
#pragma unroll
    for (int h = 0; h < GB; ++h) {
      const float mo = __shfl_xor_sync(0xffffffffu, m[h], o);
      const float lo = __shfl_xor_sync(0xffffffffu, l[h], o);
      const float mm = fmaxf(m[h], mo);
      const float fa = merge_weight(m[h], mm), fb = merge_weight(mo, mm);
      l[h] = l[h] * fa + lo * fb;
#pragma unroll
      for (int e = 0; e < E; ++e) {
        acc[h][e] = acc[h][e] * fa + __shfl_xor_sync(0xffffffffu, acc[h][e], o) * fb;
      }
      m[h] = mm;
    }
  }

  // Warps merge through shared memory (the ring is free: every thread waited for its copies).
  __syncthreads();
  const DecodeRed<GB> red(smem, hd);
  if (grp == 0) {
#pragma unroll
    for (int h = 0; h < GB; ++h) {
#pragma unroll
      for (int c = 0; c < NC; ++c) {
        const int ch = c * tx + jl;
        if (ch >= nch) continue;
        float4* dst = reinterpret_cast<float4*>(red.acc + (warp * GB + h) * hd + ch * 8);
        dst[0] =
            make_float4(acc[h][c * 8], acc[h][c * 8 + 1], acc[h][c * 8 + 2], acc[h][c * 8 + 3]);
        dst[1] =
            make_float4(acc[h][c * 8 + 4], acc[h][c * 8 + 5], acc[h][c * 8 + 6], acc[h][c * 8 + 7]);
      }
    }
    if (lane == 0) {
#pragma unroll
      for (int h = 0; h < GB; ++h) {
        red.m[warp * GB + h] = m[h];
        red.l[warp * GB + h] = l[h];
      }
    }
  }
  __syncthreads();

  decode_finish<GB>(p, cta, red);
}

// ---- prefill on tensor cores -----------------------------------------------------------
constexpr int kPrefillWarps = 4;  // 16 query rows each
static_assert(kPrefillWarps * 16 == kPrefillTile, "warps cover the query tile");

// Fragment layouts of mma.m16n8k16 (g = lane / 4, t = lane % 4):
//   A (16x16, row): a0 (g, 2t..2t+1), a1 (g+8, 2t..), a2 (g, 2t+8..), a3 (g+8, 2t+8..)
//   B (16x8, col):  b0 (k 2t..2t+1, n g), b1 (k 2t+8.., n g)
//   C (16x8):       c0 (g, 2t), c1 (g, 2t+1), c2 (g+8, 2t), c3 (g+8, 2t+1)
// S = Q·Kᵀ accumulators of two adjacent key n-tiles are exactly the A fragment of P for P·V.
template <int HD, typename KvT>
__global__ void __launch_bounds__(kPrefillWarps * 32) prefill_attention_kernel(PrefillAttentionParams p) {
  constexpr int LD = HD + 8;  // padded rows: conflict-free fragment loads
  constexpr int KT = HD / 16;
  constexpr int NT = HD / 8;
  __shared__ __align__(16) KvT ks[kPrefillTile * LD];
  __shared__ __align__(16) KvT vs[kPrefillTile * LD];

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int g = lane / 4, tq = lane % 4;
  const int64_t head = blockIdx.y;
  const int64_t kvh = head / (p.n_head / p.kv.n_head_kv);
  const int t0 = p.tiles[2 * blockIdx.x], cnt = p.tiles[2 * blockIdx.x + 1];
  const int seq = p.batch.token_seq[t0];
  const int pos0 = p.batch.positions[t0];
  const int64_t n_keys = static_cast<int64_t>(pos0) + cnt;
  const int r0 = warp * 16 + g, r1 = r0 + 8;  // this thread's two query rows
  const int pos_r0 = pos0 + min(r0, cnt - 1), pos_r1 = pos0 + min(r1, cnt - 1);
  const int warp_last_pos = pos0 + min(warp * 16 + 15, cnt - 1);
  const bool warp_active = warp * 16 < cnt;

  // Q fragments, pre-scaled by scale * log2(e) so the softmax uses exp2.
  const float qscale = p.scale * 1.4426950408889634f;
  uint32_t qa[KT][4];
  {
    const float* q0 = p.q + ((static_cast<int64_t>(t0) + r0) * p.n_head + head) * HD;
    const float* q1 = p.q + ((static_cast<int64_t>(t0) + r1) * p.n_head + head) * HD;
    const bool v0 = r0 < cnt, v1 = r1 < cnt;
#pragma unroll
    for (int kk = 0; kk < KT; ++kk) {
      const int c = kk * 16 + 2 * tq;
      const float2 x00 = v0 ? *reinterpret_cast<const float2*>(q0 + c) : make_float2(0.f, 0.f);
      const float2 x10 = v1 ? *reinterpret_cast<const float2*>(q1 + c) : make_float2(0.f, 0.f);
      const float2 x01 = v0 ? *reinterpret_cast<const float2*>(q0 + c + 8) : make_float2(0.f, 0.f);
      const float2 x11 = v1 ? *reinterpret_cast<const float2*>(q1 + c + 8) : make_float2(0.f, 0.f);
      qa[kk][0] = KvElem<KvT>::pack(x00.x * qscale, x00.y * qscale);
      qa[kk][1] = KvElem<KvT>::pack(x10.x * qscale, x10.y * qscale);
      qa[kk][2] = KvElem<KvT>::pack(x01.x * qscale, x01.y * qscale);
      qa[kk][3] = KvElem<KvT>::pack(x11.x * qscale, x11.y * qscale);
    }
  }
  float o[NT][4];
#pragma unroll
  for (int nt = 0; nt < NT; ++nt) o[nt][0] = o[nt][1] = o[nt][2] = o[nt][3] = 0.0f;
  float m_run[2] = {-INFINITY, -INFINITY}, l_run[2] = {0.0f, 0.0f};

  const KvT* kc = static_cast<const KvT*>(p.kv.k);
  const KvT* vc = static_cast<const KvT*>(p.kv.v);
  for (int64_t k0 = 0; k0 < n_keys; k0 += kPrefillTile) {
    __syncthreads();  // the previous tile is consumed
    constexpr int kChunks = kPrefillTile * HD / 8;  // 16-byte chunks per tile
    for (int c = threadIdx.x; c < kChunks; c += kPrefillWarps * 32) {
      const int row = c / (HD / 8), col = (c % (HD / 8)) * 8;
      const int64_t key = k0 + row;
      int4 kv4 = make_int4(0, 0, 0, 0), vv4 = make_int4(0, 0, 0, 0);
      if (key < n_keys) {
        const int64_t off = kv_row(p.kv, p.batch, seq, key, kvh) + col;
        kv4 = *reinterpret_cast<const int4*>(kc + off);
        vv4 = *reinterpret_cast<const int4*>(vc + off);
      }
      *reinterpret_cast<int4*>(ks + row * LD + col) = kv4;
      *reinterpret_cast<int4*>(vs + row * LD + col) = vv4;
    }
    __syncthreads();
    if (!warp_active || k0 > warp_last_pos) continue;

    float s[8][4];
#pragma unroll
    for (int nt = 0; nt < 8; ++nt) s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.0f;
#pragma unroll
    for (int kk = 0; kk < KT; ++kk) {
#pragma unroll
      for (int nt = 0; nt < 8; ++nt) {
        const KvT* kr = ks + (nt * 8 + g) * LD + kk * 16 + 2 * tq;
        mma16816<KvT>(s[nt], qa[kk], *reinterpret_cast<const uint32_t*>(kr),
                      *reinterpret_cast<const uint32_t*>(kr + 8));
      }
    }
    float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
    for (int nt = 0; nt < 8; ++nt) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int64_t key = k0 + nt * 8 + 2 * tq + (e & 1);
        const int pr = e < 2 ? pos_r0 : pos_r1;
        if (key > pr) s[nt][e] = -INFINITY;
        mx[e / 2] = fmaxf(mx[e / 2], s[nt][e]);
      }
    }
    float alpha[2], sum[2] = {0.0f, 0.0f};
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 1));
      mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 2));
      const float m_new = fmaxf(m_run[r], mx[r]);
      alpha[r] = exp2f(m_run[r] - m_new);
      m_run[r] = m_new;
    }
#pragma unroll
    for (int nt = 0; nt < 8; ++nt) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        s[nt][e] = exp2f(s[nt][e] - m_run[e / 2]);
        sum[e / 2] += s[nt][e];
      }
    }
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      sum[r] += __shfl_xor_sync(0xffffffffu, sum[r], 1);
      sum[r] += __shfl_xor_sync(0xffffffffu, sum[r], 2);
      l_run[r] = l_run[r] * alpha[r] + sum[r];
    }
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
      o[nt][0] *= alpha[0];
      o[nt][1] *= alpha[0];
      o[nt][2] *= alpha[1];
      o[nt][3] *= alpha[1];
    }
#pragma unroll
    for (int u = 0; u < kPrefillTile / 16; ++u) {
      const uint32_t pa[4] = {KvElem<KvT>::pack(s[2 * u][0], s[2 * u][1]),
                              KvElem<KvT>::pack(s[2 * u][2], s[2 * u][3]),
                              KvElem<KvT>::pack(s[2 * u + 1][0], s[2 * u + 1][1]),
                              KvElem<KvT>::pack(s[2 * u + 1][2], s[2 * u + 1][3])};
      const KvT* v0 = vs + (u * 16 + 2 * tq) * LD + g;
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) {
        const KvT* vr = v0 + nt * 8;
        const uint32_t b0 = pack2<KvT>(vr[0], vr[LD]);
        const uint32_t b1 = pack2<KvT>(vr[8 * LD], vr[9 * LD]);
        mma16816<KvT>(o[nt], pa, b0, b1);
      }
    }
  }

  if (!warp_active) return;
  const float inv0 = l_run[0] > 0.0f ? 1.0f / l_run[0] : 0.0f;
  const float inv1 = l_run[1] > 0.0f ? 1.0f / l_run[1] : 0.0f;
  float* out0 = p.out + ((static_cast<int64_t>(t0) + r0) * p.n_head + head) * HD;
  float* out1 = p.out + ((static_cast<int64_t>(t0) + r1) * p.n_head + head) * HD;
#pragma unroll
  for (int nt = 0; nt < NT; ++nt) {
    const int c = nt * 8 + 2 * tq;
    if (r0 < cnt) *reinterpret_cast<float2*>(out0 + c) = make_float2(o[nt][0] * inv0, o[nt][1] * inv0);
    if (r1 < cnt) *reinterpret_cast<float2*>(out1 + c) = make_float2(o[nt][2] * inv1, o[nt][3] * inv1);
  }
}

}  // namespace

// The heads per CTA a launch of n tokens takes: `want` (1, 2, 4 or 8), at most the group's
// rounding; 0 picks two, or one where two leave fewer than 16 CTAs before the key splits: a
// CTA's chain of dependent instructions grows with its heads, and at short contexts that
// chain is the kernel's time (on an H200, Llama-3-8B context 128: TP1 batch 1 2.03 ms with
// two heads against 2.07 with four and 2.12 with one; TP2 batch 1, four KV heads per rank,
// 1.60-1.62 with one against 1.63 with two and 1.65-1.69 with four; batch 64 5.74-5.76 with
// two against 5.86-5.88 with four and 6.16 with one).
int decode_heads_per_cta(int64_t group, int want, int64_t n, int64_t n_head_kv, bool mma) {
  if (mma) return static_cast<int>(group);  // the tensor-core kernel takes the whole group
  TPNODE_CHECK(want == 0 || want == 1 || want == 2 || want == 4 || want == 8,
               "decode_attention: {} heads per CTA (0, 1, 2, 4 or 8)", want);
  const int full = decode_heads_per_cta(group);
  if (want == 0) want = n * n_head_kv * ((group + 1) / 2) < 16 ? 1 : 2;
  return std::min(want, full);
}

void kv_store(const KvStoreParams& p, cudaStream_t stream) {
  const int64_t n = p.batch.n_tokens * p.kv.n_head_kv * p.kv.head_dim;
  if (n == 0) return;
  constexpr int kThreads = 256;
  const unsigned grid = static_cast<unsigned>((n + kThreads - 1) / kThreads);
  TPNODE_DISPATCH_KV(p.kv.dtype, KvT, {
    launch_pdl(kv_store_kernel<KvT>, dim3(grid), dim3(kThreads), 0, stream, p);
  })
}

bool decode_kq_records_supports(int64_t n_head, int64_t n_head_kv, int64_t head_dim,
                                int heads_per_cta, bool cluster) {
  const int64_t group = n_head_kv > 0 ? n_head / n_head_kv : 0;
  return !cluster && heads_per_cta * head_dim % 256 == 0 && group % heads_per_cta == 0;
}

bool decode_attention_supports(int64_t n_head, int64_t n_head_kv, int64_t head_dim) {
  if (n_head_kv <= 0 || n_head <= 0 || n_head % n_head_kv != 0) return false;
  if (head_dim <= 0 || head_dim % 8 != 0) return false;
  const int heads = decode_heads_per_cta(n_head / n_head_kv);
  const int nc = decode_chunks_per_lane(heads);
  // The staged rows (q of the CTA's heads, the new K and V, the RoPE table) fit one ring stage
  // and the kernel's passes over them.
  const int64_t stage_floats = static_cast<int64_t>(kDecodeChunksPerStage) * 2 * kDecodeThreads * 4;
  const bool staged = (heads + 3) * head_dim <= stage_floats &&
                      (heads + 2) * (head_dim / 8) <= kDecodeStagePasses * kDecodeThreads;
  return head_dim / 8 <= 32 * nc && staged;  // a key row within one warp's lanes
}

bool decode_rope_supports(int64_t head_dim) { return head_dim > 0 && head_dim % 8 == 0; }

DecodeSplit plan_decode_split(const DecodeShape& s) {
  auto ceil_div = [](int64_t a, int64_t b) { return (a + b - 1) / b; };
  DecodeSplit r;
  const int64_t max_keys = std::max<int64_t>(s.max_keys, 1);
  r.split_len = static_cast<int>(max_keys);
  if (s.mma ? !decode_mma_supports(s.n_head, s.n_head_kv, s.head_dim)
            : !decode_attention_supports(s.n_head, s.n_head_kv, s.head_dim)) {
    return r;
  }
  const int64_t group = s.n_head / s.n_head_kv;
  const int heads = decode_heads_per_cta(group, s.heads_per_cta, s.n, s.n_head_kv, s.mma);
  const int64_t ctas = s.n * s.n_head_kv * ceil_div(group, heads);
  if (s.mma) {
    r.mma_warps = decode_mma_warps(ctas, s.n_sms, s.mma_warps, s.mma_whole);
    r.mma_deep = decode_mma_deep(ctas, s.n_sms, r.mma_warps, s.mma_deep);
  }
  const int64_t stage =
      s.mma ? decode_mma_stage_keys(r.mma_warps)
            : decode_stage_keys(static_cast<int>(s.head_dim), decode_chunks_per_lane(heads));
  // Split the key axis while the unsplit grid would leave SMs idle: about two CTAs per SM (one
  // of the whole variant, which fills an SM), each split whole ring stages.
  const bool whole = s.mma && r.mma_warps == kDecodeMmaWholeWarps;
  const int64_t target = (whole ? 1 : 2) * static_cast<int64_t>(std::max(s.n_sms, 1));
  if (ctas >= target) return r;
  // At batch 1 a whole CTA takes a second round of keys behind the first (its warps' rings
  // hold two tiles) rather than a split whose cluster merge costs more, while that round is
  // at most half full (on an H200, Llama-3-8B batch 1, tables of 208 keys: 1.825 ms per step
  // unsplit against 1.866 in two splits; of 272: 1.851 against 1.865; of 372, 301-364 keys
  // used: 1.885 against 1.862, and batch 2 of 208: 3.548 against 3.495; docs/BENCHMARKS.md).
  if (whole && s.n == 1 && 2 * max_keys <= 3 * stage) return r;
  const int cap = s.max_splits > 0 ? std::min(s.max_splits, kDecodeMaxSplits) : kDecodeMaxSplits;
  // Splits of `min_len` or more keys, at most `most` of them.
  auto split_by = [&](int64_t min_len, int64_t most) {
    int64_t splits = std::min<int64_t>({ceil_div(target, ctas), ceil_div(max_keys, min_len), most});
    const int64_t len = ceil_div(ceil_div(max_keys, std::max<int64_t>(splits, 1)), stage) * stage;
    return std::pair<int64_t, int64_t>{ceil_div(max_keys, len), len};
  };
  // Merging in a cluster costs two cluster barriers and reads of neighbours' shared memory, so
  // its splits can be as short as one stage. Over global memory the merge is a chain of L2
  // round trips (partials out, a fence, the ticket, partials in) that costs more than several
  // stages, whose loads the ring overlaps: at least kDecodeMinSplitStages. A cluster serves
  // whenever its splits are no longer than that minimum or global splits would not be more.
  const int64_t min_len = kDecodeMinSplitStages * stage;
  // Each CTA's fixed chain (block tables, q, RoPE, merges) costs several stages, so clusters
  // split only grids that leave most SMs idle (batch 1-4 of Llama-3-8B's 8 KV heads); fuller
  // grids measured slower split that way.
  if (s.clusters && ctas * kDecodeClusterGridShare <= s.n_sms) {
    const auto [splits, len] =
        split_by(stage, std::min<int64_t>(cap, kDecodeMaxClusterSplits));
    const auto [g_splits, g_len] = split_by(min_len, cap);
    if (splits > 1 && (len <= min_len || g_splits <= splits)) {
      r.n_splits = static_cast<int>(splits);
      r.split_len = static_cast<int>(len);
      r.cluster = true;
      return r;
    }
  }
  if (ctas > kDecodeMaxCounters || max_keys <= min_len) return r;
  const auto [splits, len] = split_by(min_len, cap);
  if (splits <= 1) return r;
  r.n_splits = static_cast<int>(splits);
  r.split_len = static_cast<int>(len);
  r.part_lse_floats = s.n * s.n_head * splits;
  r.part_out_floats = r.part_lse_floats * s.head_dim;
  return r;
}

// clang-format off
#define TPNODE_DISPATCH_DECODE_HEADS(heads, GB, ...)            \
  switch (heads) {                                              \
    case 1: { constexpr int GB = 1; __VA_ARGS__ } break;        \
    case 2: { constexpr int GB = 2; __VA_ARGS__ } break;        \
    case 4: { constexpr int GB = 4; __VA_ARGS__ } break;        \
    case 8: { constexpr int GB = 8; __VA_ARGS__ } break;        \
    default: TPNODE_THROW(::tpnode::ErrorKind::kUnsupported, "decode_attention: {} heads per CTA", heads); \
  }
// clang-format on

void decode_attention(const DecodeAttentionParams& p, cudaStream_t stream) {
  if (p.n == 0) return;
  TPNODE_CHECK(p.mma ? decode_mma_supports(p.n_head, p.kv.n_head_kv, p.kv.head_dim)
                     : decode_attention_supports(p.n_head, p.kv.n_head_kv, p.kv.head_dim),
               "decode_attention: {} heads over {} KV heads of dim {} unsupported{}", p.n_head,
               p.kv.n_head_kv, p.kv.head_dim, p.mma ? " on tensor cores" : "");
  const int64_t group = p.n_head / p.kv.n_head_kv;
  const int heads = decode_heads_per_cta(group, p.heads_per_cta, p.n, p.kv.n_head_kv, p.mma);
  const int64_t n_hchunks = (group + heads - 1) / heads;
  const int64_t ctas = p.n * p.kv.n_head_kv * n_hchunks;
  TPNODE_CHECK(p.split_len >= 1 && p.n_splits >= 1 && p.n_splits <= kDecodeMaxSplits,
               "decode_attention: bad split {} x {}", p.n_splits, p.split_len);
  TPNODE_CHECK(!p.cluster || p.n_splits <= kDecodeMaxClusterSplits,
               "decode_attention: {} splits in one cluster (at most {})", p.n_splits,
               kDecodeMaxClusterSplits);
  TPNODE_CHECK(p.n_splits == 1 || p.cluster ||
                   (p.part_out != nullptr && p.part_lse != nullptr && p.counters != nullptr &&
                    ctas <= kDecodeMaxCounters),
               "decode_attention: {} splits of {} CTAs need partial buffers and counters",
               p.n_splits, ctas);
  TPNODE_CHECK((p.k_new == nullptr) == (p.v_new == nullptr),
               "decode_attention: k_new and v_new go together");
  TPNODE_CHECK(p.kq == nullptr ||
                   (decode_kq_records_supports(p.n_head, p.kv.n_head_kv, p.kv.head_dim, heads,
                                               p.cluster) &&
                    p.tokens == nullptr && reinterpret_cast<uintptr_t>(p.kq) % 16 == 0),
               "decode_attention: gemm_kq records need a CTA's heads to be whole 256-value stages, "
               "no cluster and every batch token decoding");
  TPNODE_CHECK(
      p.rope.inv_freq == nullptr || (p.k_new != nullptr && decode_rope_supports(p.kv.head_dim)),
      "decode_attention: RoPE needs the fused K/V store and head_dim % 8 == 0 (got {})",
      p.kv.head_dim);
  TPNODE_CHECK(p.quant.q == nullptr || (p.quant.d != nullptr && p.quant.s != nullptr &&
                                        p.kv.head_dim % 32 == 0 && p.tokens == nullptr),
               "decode_attention: the 8-bit output needs head_dim % 32 == 0 (got {}) and every "
               "batch token decoding",
               p.kv.head_dim);
  TPNODE_CHECK(p.n <= INT32_MAX && p.kv.n_head_kv * n_hchunks <= 65535,
               "decode_attention: grid of {} tokens x {} KV heads x {} head chunks too large", p.n,
               p.kv.n_head_kv, n_hchunks);
  const dim3 grid(static_cast<unsigned>(p.n), static_cast<unsigned>(p.kv.n_head_kv * n_hchunks),
                  static_cast<unsigned>(p.n_splits));
  LaunchShape shape{.grid = grid,
                    .block = dim3(kDecodeThreads),
                    .cluster = dim3(1, 1, p.cluster ? grid.z : 1)};
  if (p.mma) {
    decode_attention_mma(p, shape, stream);
    return;
  }
  // Within the default 48 KB, so no attribute call (not allowed while a graph is captured).
  shape.smem = decode_smem_bytes(heads, p.kv.head_dim);
  TPNODE_CHECK(shape.smem <= kDecodeSmemLimit, "decode_attention: {} bytes of shared memory",
               shape.smem);
  // Grids split into clusters (a few tokens) take one 16-byte chunk per lane where a key row
  // fits one warp's lanes that way: twice the lanes per key and half the lane groups to merge
  // (Llama-3-8B batch 1 ~1% faster on an H200); fuller grids keep the planner's choice (two
  // for up to four heads: batch 64 ~1% faster).
  const bool one_chunk = p.cluster && p.kv.head_dim / 8 <= 32;
  TPNODE_DISPATCH_KV(p.kv.dtype, KvT, {TPNODE_DISPATCH_DECODE_HEADS(heads, GB, {
                       if (one_chunk) {
                         launch_pdl(decode_attention_kernel<KvT, GB, 1>, shape, stream, p);
                       } else {
                         constexpr int NC = decode_chunks_per_lane(GB);
                         launch_pdl(decode_attention_kernel<KvT, GB, NC>, shape, stream, p);
                       }
                     })})
}

bool prefill_attention_supports(int64_t head_dim) { return head_dim == 64 || head_dim == 128; }

void prefill_attention(const PrefillAttentionParams& p, cudaStream_t stream) {
  if (p.n_tiles == 0) return;
  TPNODE_CHECK(prefill_attention_supports(p.kv.head_dim),
               "prefill_attention: head_dim {} unsupported", p.kv.head_dim);
  const dim3 grid(static_cast<unsigned>(p.n_tiles), static_cast<unsigned>(p.n_head));
  const int threads = kPrefillWarps * 32;
  TPNODE_DISPATCH_KV(p.kv.dtype, KvT, {
    if (p.kv.head_dim == 64) {
      prefill_attention_kernel<64, KvT><<<grid, threads, 0, stream>>>(p);
    } else {
      prefill_attention_kernel<128, KvT><<<grid, threads, 0, stream>>>(p);
    }
  })
  TPNODE_CUDA_CHECK_LAUNCH();
}

}  // namespace tpnode::cuda
