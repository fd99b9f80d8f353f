// Decode attention on tensor cores (see decode_attention_mma.h).
#include "kernels/cuda/decode_attention_mma.h"

#include <algorithm>

#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/decode_common.cuh"

namespace tpnode::cuda {
namespace {

using namespace decode;

// ---- the work split --------------------------------------------------------------------
// A CTA takes one (token, KV head, key split) with the KV head's whole query group (at most
// 8 heads: an MMA's N). The split's keys go in tiles of 16 (an MMA's M), tile j to warp
// j % 4; each warp runs its own online softmax over its tiles, and the warps merge at the end
// as the CUDA-core kernel's do (decode_finish). Per tile, with g = lane / 4, t = lane % 4:
//   S^T = K · Q^T: A = the K tile (16 keys x 16 dims per MMA, ldmatrix), B = Q^T (registers,
//   loaded once), so lane (g, t) holds the scores of keys g and g + 8 for heads 2t, 2t + 1;
//   O^T += V^T · P^T: A = the V tile transposed (ldmatrix.trans), B = P^T, which is the score
//   fragment transposed in registers (movmatrix), so O^T (dims x heads) stays in registers.
// K and V reach shared memory through each warp's own cp.async ring (no CTA barrier in the
// key loop); rows are swizzled (16-byte chunk c of row r at c ^ (r % 8)) so that ldmatrix's
// eight rows hit distinct banks.
constexpr int kKeys = 16;  // keys per warp tile
// Tiles in a warp's ring (S): two leave room for three four-warp CTAs per SM (measured
// slightly ahead of three tiles at two CTAs per SM on an H200, batches 32-64).
constexpr int kRingTiles = 2, kDeepRingTiles = 3;
constexpr int kMaxHeads = 8;  // the query heads of a CTA (an MMA's N)
// The narrow variant: two warps per CTA, five CTAs per SM (shared memory allows five of its
// 37.5 KB at head_dim 128), or four with three-tile rings, so grids that would take more
// than one wave of the four-warp CTAs (three per SM) run in one. The whole variant: twelve
// warps, one CTA per SM, for grids of a few tokens that leave most SMs idle: a round of its
// warps covers 192 keys, so a short context needs no key split (whose merge, across a
// cluster, cost a batch-1 CTA of four warps about as many instructions as its keys) and a
// long one fewer splits.
constexpr int kWideWarps = kDecodeWarps, kNarrowWarps = 2, kWholeWarps = kDecodeMmaWholeWarps;
constexpr int ctas_per_sm(int warps, int tiles) {
  return warps == kWholeWarps  ? 1
         : warps == kWideWarps ? 3
         : tiles == kDeepRingTiles ? 4
                                   : 5;
}

template <int HD, int W, int S>
struct Geom {
  static constexpr int kChunks = HD / 8;         // 16-byte chunks per key row
  static constexpr int kTile = kKeys * kChunks;  // int4s of a K (or V) tile
  static constexpr int kWarpRing = S * 2 * kTile;
  static constexpr int kRing = W * kWarpRing;
  // After the ring (the merge's states reuse the ring): q of 8 heads, the new key and value,
  // the rotation table.
  static constexpr int kRowFloats = kMaxHeads * HD + 3 * HD;
  static constexpr size_t kRegion =
      std::max<size_t>(sizeof(int4) * kRing, decode_red_bytes(kMaxHeads, HD, W));
  static constexpr size_t kSmemBytes = kRegion + sizeof(float) * kRowFloats;
  static_assert(kChunks % 2 == 0 && kChunks >= 8 && kRegion % 16 == 0);
  // decode_load_rows's passes hold q of a whole group and the new key and value.
  static_assert((kMaxHeads + 2) * (HD / 8) <= kDecodeStagePasses * W * 32);
  // ctas_per_sm's residency: 1 KB of each CTA's shared memory is the system's.
  static_assert(ctas_per_sm(W, S) * (kSmemBytes + 1024) <= 228 * 1024);
};

__device__ __forceinline__ int swz(int row, int chunk, int chunks) {
  return row * chunks + (chunk ^ (row & 7));
}

__device__ __forceinline__ void ldsm_x4(uint32_t (&r)[4], const int4* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(static_cast<unsigned>(__cvta_generic_to_shared(p))));
}
__device__ __forceinline__ void ldsm_x4_trans(uint32_t (&r)[4], const int4* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(static_cast<unsigned>(__cvta_generic_to_shared(p))));
}
// The 8x8 16-bit matrix whose fragment (row g, columns 2t, 2t + 1) lane (g, t) holds,
// transposed: the lane then holds row g of the transpose.
__device__ __forceinline__ uint32_t movmatrix_trans(uint32_t a) {
  uint32_t d;
  asm volatile("movmatrix.sync.aligned.m8n8.trans.b16 %0, %1;\n" : "=r"(d) : "r"(a));
  return d;
}

template <typename KvT, int HD, int W, int S>
__global__ void __launch_bounds__(W * 32, ctas_per_sm(W, S))
    decode_attention_mma_kernel(DecodeAttentionParams p) {
  using G = Geom<HD, W, S>;
  constexpr int KS = HD / 16;  // k steps of S^T, m tiles of O^T
  extern __shared__ __align__(16) int4 smem[];

  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, g = lane / 4, tq = lane % 4;
  const int n_kv = static_cast<int>(p.kv.n_head_kv);
  const int group = static_cast<int>(p.n_head) / n_kv;
  const int kvh = blockIdx.y, h0 = kvh * group;
  const int split = blockIdx.z;
  // Independent of everything else: its load goes out first.
  static_assert(HD / 2 <= W * 32, "one rotation pair per thread at most");
  const float rope_freq = decode_rope_freq(p, HD);

  // The step's metadata is uploaded before any kernel of the step: readable before pdl_wait.
  const int64_t t = p.tokens != nullptr ? p.tokens[blockIdx.x] : blockIdx.x;
  const int pos = p.batch.positions[t];
  const int seq = p.batch.token_seq[t];
  const int begin = split * p.split_len;
  if (begin > pos && !p.cluster) return;  // a cluster's CTAs all take part in its merge
  const int end = begin > pos ? begin : min(pos + 1, begin + p.split_len);
  const int n_active = pos / p.split_len + 1;
  const bool fused = p.k_new != nullptr;
  const bool own_key = fused && pos >= begin && pos < end;
  const int cache_end = fused ? min(end, pos) : end;
  const int n_tiles = (end - begin + kKeys - 1) / kKeys;
  const int my_tiles = n_tiles > warp ? (n_tiles - warp + W - 1) / W : 0;
  const int32_t* table = p.batch.block_tables + static_cast<int64_t>(seq) * p.batch.max_blocks;
  const int bs = static_cast<int>(p.kv.block_size);
  const KvT* kc = static_cast<const KvT*>(p.kv.k);
  const KvT* vc = static_cast<const KvT*>(p.kv.v);

  // This warp's ring. A tile's copies go in kChunks / 2 instructions of 32 lanes, each
  // instruction whole rows (consecutive lanes, consecutive 16-byte chunks: every 32-byte
  // sector asked once); lane l finds the cache row of key row l % 16 (the one division by the
  // block size per tile) and the others take it by a shuffle.
  int4* ring = smem + warp * G::kWarpRing;
  constexpr int kRowsPerCopy = 32 / G::kChunks;
  const int lch = lane % G::kChunks, lrow = lane / G::kChunks;
  auto tile_key = [&](int i) { return begin + (warp + W * i) * kKeys; };
  auto row_of = [&](int i) -> int64_t {
    const int key = tile_key(i) + lane % kKeys;
    if (i >= my_tiles || key >= cache_end) return -1;
    const int64_t blk = __ldg(table + key / bs);
    return (blk * n_kv + kvh) * bs + key % bs;
  };
  // One commit group per tile, empty or not, so that the waits count tiles. Rows past the
  // split's cached keys read as zeros (the token's own key is written in later).
  auto issue = [&](int i, int64_t row_lane) {
    if (i < my_tiles) {
      int4* kt = ring + (i % S) * 2 * G::kTile;
      int4* vt = kt + G::kTile;
#pragma unroll
      for (int c = 0; c < G::kChunks / 2; ++c) {
        const int r = c * kRowsPerCopy + lrow;
        const int64_t row = __shfl_sync(0xffffffffu, row_lane, r);
        const int slot = swz(r, lch, G::kChunks);
        if (row >= 0) {
          const int64_t at = row * HD + lch * 8;
          cp_async16(kt + slot, kc + at);
          cp_async16(vt + slot, vc + at);
        } else {
          kt[slot] = make_int4(0, 0, 0, 0);
          vt[slot] = make_int4(0, 0, 0, 0);
        }
      }
    }
    cp_async_commit();
  };

  // Fused, the launch before wrote only q and the new K/V: the cache's older keys can be in
  // flight before waiting for it. Otherwise kv_store (the launch before) wrote cache slots.
  if (!fused) pdl_wait();
  int64_t row_next;
  {
    int64_t rows[S - 1];
#pragma unroll
    for (int i = 0; i < S - 1; ++i) rows[i] = row_of(i);
    row_next = row_of(S - 1);
#pragma unroll
    for (int i = 0; i < S - 1; ++i) issue(i, rows[i]);
  }

  const DecodeRows rows = decode_rows_at(
      reinterpret_cast<float*>(reinterpret_cast<uint8_t*>(smem) + G::kRegion), kMaxHeads, HD);
  const DecodeCta cta{.t = t,
                      .pos = pos,
                      .h0 = h0,
                      .hc = group,
                      .kvh = kvh,
                      .hd = HD,
                      .split = split,
                      .n_active = n_active,
                      .own_key = own_key};
  decode_stage_rows<W>(p, cta, rows, fused, rope_freq);

  // The token's own key and value as the cache rounds them: warp 0 stores them in the cache
  // (no CTA reads that slot), and the warp whose tile holds the key writes them into its row.
  const int own = own_key ? pos - begin : -1;
  const bool own_here = own >= 0 && (own / kKeys) % W == warp;
  int4 own_k = make_int4(0, 0, 0, 0), own_v = own_k;
  if ((own_here || (own_key && warp == 0)) && lane < G::kChunks) {
    float kx[8], vx[8];
    load8(rows.k_s + 8 * lane, kx);
    load8(rows.v_s + 8 * lane, vx);
    own_k = pack8<KvT>(kx);
    own_v = pack8<KvT>(vx);
    if (warp == 0) {
      const int64_t blk = __ldg(table + pos / bs);
      const int64_t row = ((blk * n_kv + kvh) * bs + pos % bs) * HD + 8 * lane;
      *reinterpret_cast<int4*>(static_cast<KvT*>(p.kv.k) + row) = own_k;
      *reinterpret_cast<int4*>(static_cast<KvT*>(p.kv.v) + row) = own_v;
    }
  }

  // Q^T as B fragments: b0 = q[head g][16ks + 2t, +1], b1 = the same 8 dims on.
  uint32_t qb[KS][2];
#pragma unroll
  for (int ks = 0; ks < KS; ++ks) {
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      const float2 v =
          g < group ? *reinterpret_cast<const float2*>(rows.q_s + g * HD + 16 * ks + 8 * j + 2 * tq)
                    : make_float2(0.0f, 0.0f);
      qb[ks][j] = KvElem<KvT>::pack(v.x, v.y);
    }
  }

  // Softmax state of heads 2t, 2t + 1 (the same in every lane of a column; l is this lane's
  // share, summed over the column at the end) and O^T: o[mt] = rows 16mt + g, 16mt + g + 8.
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};
  float o[KS][4];
#pragma unroll
  for (int mt = 0; mt < KS; ++mt) {
#pragma unroll
    for (int i = 0; i < 4; ++i) o[mt][i] = 0.0f;
  }

  for (int i = 0; i < my_tiles; ++i) {
    __syncwarp();  // every lane's reads of the slot refilled next are done
    issue(i + S - 1, row_next);
    row_next = row_of(i + S);
    cp_async_wait<S - 1>();
    int4* kt = ring + (i % S) * 2 * G::kTile;
    int4* vt = kt + G::kTile;
    const int key0 = tile_key(i);
    if (own_here && own / kKeys == warp + W * i && lane < G::kChunks) {
      const int r = own % kKeys, slot = swz(r, lane, G::kChunks);
      kt[slot] = own_k;
      vt[slot] = own_v;
    }
    __syncwarp();  // the tile's copies (each lane waited for its own) and the own key

    float s[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
    for (int ks = 0; ks < KS; ++ks) {
      uint32_t a[4];
      ldsm_x4(a, kt + swz(lane & 15, 2 * ks + (lane >> 4), G::kChunks));
      mma16816<KvT>(s, a, qb[ks][0], qb[ks][1]);
    }
    if (key0 + g >= end) s[0] = s[1] = -INFINITY;
    if (key0 + g + 8 >= end) s[2] = s[3] = -INFINITY;

    float alpha[2], pr[4];
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      float mx = fmaxf(s[h], s[h + 2]);
#pragma unroll
      for (int off = 4; off < 32; off <<= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, off));
      const float m_new = fmaxf(m[h], mx);
      const float m_use = m_new == -INFINITY ? 0.0f : m_new;
      alpha[h] = exp2f(m[h] - m_use);
      pr[h] = exp2f(s[h] - m_use);
      pr[h + 2] = exp2f(s[h + 2] - m_use);
      l[h] = l[h] * alpha[h] + pr[h] + pr[h + 2];
      m[h] = m_new;
    }
    const uint32_t pb0 = movmatrix_trans(KvElem<KvT>::pack(pr[0], pr[1]));
    const uint32_t pb1 = movmatrix_trans(KvElem<KvT>::pack(pr[2], pr[3]));
#pragma unroll
    for (int mt = 0; mt < KS; ++mt) {
      o[mt][0] *= alpha[0];
      o[mt][1] *= alpha[1];
      o[mt][2] *= alpha[0];
      o[mt][3] *= alpha[1];
      uint32_t a[4];
      ldsm_x4_trans(
          a, vt + swz((lane & 7) + ((lane >> 4) << 3), 2 * mt + ((lane >> 3) & 1), G::kChunks));
      mma16816<KvT>(o[mt], a, pb0, pb1);
    }
  }
  cp_async_wait<0>();
#pragma unroll
  for (int h = 0; h < 2; ++h) {
#pragma unroll
    for (int off = 4; off < 32; off <<= 1) l[h] += __shfl_xor_sync(0xffffffffu, l[h], off);
  }

  // Warps merge through shared memory (the ring is free once every warp is here).
  __syncthreads();
  const DecodeRed<kMaxHeads, W> red(smem, HD);
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int head = 2 * tq + h;
    if (head >= group) continue;
    float* dst = red.acc + (warp * kMaxHeads + head) * HD;
#pragma unroll
    for (int mt = 0; mt < KS; ++mt) {
      dst[16 * mt + g] = o[mt][h];
      dst[16 * mt + g + 8] = o[mt][h + 2];
    }
    if (g == 0) {
      red.m[warp * kMaxHeads + head] = m[h];
      red.l[warp * kMaxHeads + head] = l[h];
    }
  }
  __syncthreads();
  decode_finish<kMaxHeads, W>(p, cta, red);
}

template <typename KvT, int HD, int W, int S>
void set_smem_limit() {
  TPNODE_CUDA_CHECK(cudaFuncSetAttribute(decode_attention_mma_kernel<KvT, HD, W, S>,
                                         cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         static_cast<int>(Geom<HD, W, S>::kSmemBytes)));
}
template <typename KvT, int HD>
void set_smem_limits(size_t smem_per_cta) {
  set_smem_limit<KvT, HD, kWideWarps, kRingTiles>();
  if (decode_mma_whole_fits(HD, smem_per_cta)) set_smem_limit<KvT, HD, kWholeWarps, kRingTiles>();
  set_smem_limit<KvT, HD, kNarrowWarps, kRingTiles>();
  set_smem_limit<KvT, HD, kNarrowWarps, kDeepRingTiles>();
}

size_t device_smem_per_cta() {
  int dev = 0, bytes = 0;
  TPNODE_CUDA_CHECK(cudaGetDevice(&dev));
  TPNODE_CUDA_CHECK(cudaDeviceGetAttribute(&bytes, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
  return static_cast<size_t>(bytes);
}

template <typename KvT, int HD, int W, int S>
void launch(const DecodeAttentionParams& p, LaunchShape s, cudaStream_t stream) {
  s.block = dim3(W * 32);
  s.smem = Geom<HD, W, S>::kSmemBytes;
  launch_pdl(decode_attention_mma_kernel<KvT, HD, W, S>, s, stream, p);
}
template <typename KvT, int HD>
void launch_variant(const DecodeAttentionParams& p, const LaunchShape& s, cudaStream_t stream) {
  if (p.mma_warps == kWholeWarps) {
    launch<KvT, HD, kWholeWarps, kRingTiles>(p, s, stream);
  } else if (p.mma_warps != kNarrowWarps) {
    launch<KvT, HD, kWideWarps, kRingTiles>(p, s, stream);
  } else if (p.mma_deep) {
    launch<KvT, HD, kNarrowWarps, kDeepRingTiles>(p, s, stream);
  } else {
    launch<KvT, HD, kNarrowWarps, kRingTiles>(p, s, stream);
  }
}

}  // namespace

bool decode_mma_supports(int64_t n_head, int64_t n_head_kv, int64_t head_dim) {
  if (n_head_kv <= 0 || n_head <= 0 || n_head % n_head_kv != 0) return false;
  const int64_t group = n_head / n_head_kv;
  return group <= kMaxHeads && (head_dim == 64 || head_dim == 128);
}

int decode_mma_stage_keys(int warps) { return warps * kKeys; }

bool decode_mma_whole_fits(int64_t head_dim, size_t smem_per_cta) {
  const size_t bytes = head_dim == 64    ? Geom<64, kWholeWarps, kRingTiles>::kSmemBytes
                       : head_dim == 128 ? Geom<128, kWholeWarps, kRingTiles>::kSmemBytes
                                         : SIZE_MAX;
  return bytes <= smem_per_cta;
}

int decode_mma_warps(int64_t ctas, int n_sms, int want, bool whole_fits) {
  TPNODE_CHECK(want != kWholeWarps || whole_fits,
               "decode attention: {}-warp CTAs need more shared memory per CTA than this GPU "
               "gives (choose 4 or 2 warps)",
               kWholeWarps);
  if (want == kWideWarps || want == kNarrowWarps || want == kWholeWarps) return want;
  if (whole_fits && ctas * kDecodeMmaWholeGridShare <= n_sms) return kWholeWarps;
  return ctas > static_cast<int64_t>(ctas_per_sm(kWideWarps, kRingTiles)) * n_sms ? kNarrowWarps
                                                                              : kWideWarps;
}

bool decode_mma_deep(int64_t ctas, int n_sms, int warps, bool allow) {
  return allow && warps == kNarrowWarps &&
         ctas <= static_cast<int64_t>(ctas_per_sm(kNarrowWarps, kDeepRingTiles)) * n_sms;
}

void decode_attention_mma_init() {
  const size_t smem = device_smem_per_cta();
  set_smem_limits<__nv_bfloat16, 64>(smem);
  set_smem_limits<__nv_bfloat16, 128>(smem);
  set_smem_limits<__half, 64>(smem);
  set_smem_limits<__half, 128>(smem);
}

void decode_attention_mma(const DecodeAttentionParams& p, const LaunchShape& shape,
                          cudaStream_t stream) {
  TPNODE_CHECK(decode_mma_supports(p.n_head, p.kv.n_head_kv, p.kv.head_dim),
               "decode_attention_mma: {} heads over {} KV heads of dim {} unsupported", p.n_head,
               p.kv.n_head_kv, p.kv.head_dim);
  TPNODE_CHECK(p.mma_warps == 0 || p.mma_warps == kWideWarps || p.mma_warps == kNarrowWarps ||
                   p.mma_warps == kWholeWarps,
               "decode_attention_mma: {} warps per CTA (0, {}, {} or {})", p.mma_warps,
               kWideWarps, kNarrowWarps, kWholeWarps);
  TPNODE_CHECK(p.mma_warps != kWholeWarps ||
                   decode_mma_whole_fits(p.kv.head_dim, device_smem_per_cta()),
               "decode_attention_mma: {}-warp CTAs at head_dim {} need more shared memory per "
               "CTA than this GPU gives",
               kWholeWarps, p.kv.head_dim);
  TPNODE_DISPATCH_KV(p.kv.dtype, KvT, {
    if (p.kv.head_dim == 64) {
      launch_variant<KvT, 64>(p, shape, stream);
    } else {
      launch_variant<KvT, 128>(p, shape, stream);
    }
  })
}

}  // namespace tpnode::cuda
