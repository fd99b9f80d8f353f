#include "kernels/cuda/attention.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cmath>
#include <type_traits>

#include "kernels/cuda/cuda_check.h"

namespace tpnode::cuda {
namespace {

template <typename T>
struct KvElem;
template <>
struct KvElem<__nv_bfloat16> {
  __device__ static __nv_bfloat16 from(float v) { return __float2bfloat16(v); }
  __device__ static float to(__nv_bfloat16 v) { return __bfloat162float(v); }
  __device__ static uint32_t pack(float lo, float hi) {
    const __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<const uint32_t*>(&h);
  }
};
template <>
struct KvElem<__half> {
  __device__ static __half from(float v) { return __float2half(v); }
  __device__ static float to(__half v) { return __half2float(v); }
  __device__ static uint32_t pack(float lo, float hi) {
    const __half2 h = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<const uint32_t*>(&h);
  }
};

#define TPNODE_DISPATCH_KV(dtype, KvT, ...)                                   \
  if ((dtype) == KvDtype::kBF16) { using KvT = __nv_bfloat16; __VA_ARGS__ }     \
  else { using KvT = __half; __VA_ARGS__ }

// Element offset of (key, kv head) in a layer's K or V blocks.
__device__ __forceinline__ int64_t kv_row(const PagedKv& kv, const DeviceBatch& b, int seq,
                                          int64_t key, int64_t kvh) {
  const int64_t blk = b.block_tables[static_cast<int64_t>(seq) * b.max_blocks + key / kv.block_size];
  return ((blk * kv.n_head_kv + kvh) * kv.block_size + key % kv.block_size) * kv.head_dim;
}

// ---- store ---------------------------------------------------------------------------
template <typename KvT>
__global__ void kv_store_kernel(KvStoreParams p) {
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
constexpr int kDecodeThreads = 128;
static_assert(kDecodeKeyTile == kDecodeThreads, "one key of a tile per thread");

// Dynamic shared memory: q [G][hd] (pre-scaled), scores [G][tile], alpha/m/l [G],
// row offsets [tile].
template <typename KvT>
__global__ void __launch_bounds__(kDecodeThreads) decode_attention_kernel(DecodeAttentionParams p) {
  extern __shared__ float smem[];
  const int64_t hd = p.kv.head_dim;
  const int G = static_cast<int>(p.n_head / p.kv.n_head_kv);
  float* qs = smem;                          // [G][hd]
  float* sc = qs + G * hd;                   // [G][tile]
  float* m_run = sc + G * kDecodeKeyTile;    // [G]
  float* l_run = m_run + G;                  // [G]
  float* alpha = l_run + G;                  // [G]
  int64_t* rows = reinterpret_cast<int64_t*>(alpha + G + (G % 2 == 1 ? 1 : 0));  // 8-aligned

  const int tid = threadIdx.x;
  const int64_t t = p.tokens[blockIdx.x];
  const int64_t kvh = blockIdx.y;
  const int split = blockIdx.z;
  const int seq = p.batch.token_seq[t];
  const int64_t kv_len = static_cast<int64_t>(p.batch.positions[t]) + 1;
  const int64_t begin = static_cast<int64_t>(split) * p.split_len;
  const int64_t end = min(kv_len, begin + p.split_len);
  const int n_out = G * static_cast<int>(hd);

  for (int i = tid; i < n_out; i += kDecodeThreads) {
    qs[i] = p.q[(t * p.n_head + kvh * G) * hd + i] * p.scale;
  }
  for (int h = tid; h < G; h += kDecodeThreads) {
    m_run[h] = -INFINITY;
    l_run[h] = 0.0f;
  }
  float acc[kMaxDecodeOutputsPerThread];
#pragma unroll
  for (int j = 0; j < kMaxDecodeOutputsPerThread; ++j) acc[j] = 0.0f;
  __syncthreads();

  const KvT* kc = static_cast<const KvT*>(p.kv.k);
  const KvT* vc = static_cast<const KvT*>(p.kv.v);
  for (int64_t ts = begin; ts < end; ts += kDecodeKeyTile) {
    // Scores: thread tid takes key ts + tid against every query head of the group.
    const int64_t key = ts + tid;
    if (key < end) {
      const int64_t row = kv_row(p.kv, p.batch, seq, key, kvh);
      rows[tid] = row;
      const KvT* kr = kc + row;
      for (int h = 0; h < G; ++h) sc[h * kDecodeKeyTile + tid] = 0.0f;
      for (int64_t d = 0; d < hd; d += 8) {
        const int4 raw = *reinterpret_cast<const int4*>(kr + d);
        const KvT* e = reinterpret_cast<const KvT*>(&raw);
        float kf[8];
#pragma unroll
        for (int i = 0; i < 8; ++i) kf[i] = KvElem<KvT>::to(e[i]);
        for (int h = 0; h < G; ++h) {
          const float* qh = qs + h * hd + d;
          float dot = 0.0f;
#pragma unroll
          for (int i = 0; i < 8; ++i) dot += qh[i] * kf[i];
          sc[h * kDecodeKeyTile + tid] += dot;
        }
      }
    } else {
      for (int h = 0; h < G; ++h) sc[h * kDecodeKeyTile + tid] = -INFINITY;
    }
    __syncthreads();
    // Online softmax per head: warp w takes heads w, w + 4, ...
    const int warp = tid / 32, lane = tid % 32;
    for (int h = warp; h < G; h += kDecodeThreads / 32) {
      float* s = sc + h * kDecodeKeyTile;
      float mx = -INFINITY;
      for (int i = lane; i < kDecodeKeyTile; i += 32) mx = fmaxf(mx, s[i]);
#pragma unroll
      for (int o = 16; o > 0; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
      const float m_new = fmaxf(m_run[h], mx);
      float sum = 0.0f;
      for (int i = lane; i < kDecodeKeyTile; i += 32) {
        const float e = __expf(s[i] - m_new);
        s[i] = e;
        sum += e;
      }
#pragma unroll
      for (int o = 16; o > 0; o >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
      __syncwarp();
      if (lane == 0) {
        const float a = __expf(m_run[h] - m_new);
        alpha[h] = a;
        l_run[h] = l_run[h] * a + sum;
        m_run[h] = m_new;
      }
    }
    __syncthreads();
    const int n_keys = static_cast<int>((end - ts < kDecodeKeyTile ? end - ts : kDecodeKeyTile));
#pragma unroll
    for (int j = 0; j < kMaxDecodeOutputsPerThread; ++j) {
      const int o = tid + j * kDecodeThreads;
      if (o < n_out) {
        const int h = o / static_cast<int>(hd), d = o % static_cast<int>(hd);
        const float* s = sc + h * kDecodeKeyTile;
        float a = acc[j] * alpha[h];
        for (int i = 0; i < n_keys; ++i) a += s[i] * KvElem<KvT>::to(vc[rows[i] + d]);
        acc[j] = a;
      }
    }
    __syncthreads();
  }

#pragma unroll
  for (int j = 0; j < kMaxDecodeOutputsPerThread; ++j) {
    const int o = tid + j * kDecodeThreads;
    if (o < n_out) {
      const int h = o / static_cast<int>(hd), d = o % static_cast<int>(hd);
      const int64_t head = kvh * G + h;
      const float l = l_run[h];
      const float v = l > 0.0f ? acc[j] / l : 0.0f;
      if (p.n_splits == 1) {
        p.out[(t * p.n_head + head) * hd + d] = v;
      } else {
        const int64_t slot = (blockIdx.x * p.n_head + head) * p.n_splits + split;
        p.part_out[slot * hd + d] = v;
        if (d == 0) p.part_lse[slot] = l > 0.0f ? m_run[h] + logf(l) : -INFINITY;
      }
    }
  }
}

// One CTA per (token, head), one thread per output dimension.
__global__ void decode_combine_kernel(DecodeAttentionParams p) {
  const int64_t i = blockIdx.x, head = blockIdx.y;
  const int64_t hd = p.kv.head_dim;
  const float* lse = p.part_lse + (i * p.n_head + head) * p.n_splits;
  float mx = -INFINITY;
  for (int s = 0; s < p.n_splits; ++s) mx = fmaxf(mx, lse[s]);
  for (int64_t d = threadIdx.x; d < hd; d += blockDim.x) {
    float num = 0.0f, den = 0.0f;
    for (int s = 0; s < p.n_splits; ++s) {
      if (lse[s] == -INFINITY) continue;
      const float w = __expf(lse[s] - mx);
      num += w * p.part_out[((i * p.n_head + head) * p.n_splits + s) * hd + d];
      den += w;
    }
    p.out[(static_cast<int64_t>(p.tokens[i]) * p.n_head + head) * hd + d] = num / den;
  }
}

size_t decode_smem_bytes(int G, int64_t hd) {
  return sizeof(float) * (G * hd + G * kDecodeKeyTile + 3 * G + 1) +
         sizeof(int64_t) * kDecodeKeyTile + 8;
}

// ---- prefill on tensor cores -----------------------------------------------------------
template <typename KvT>
__device__ __forceinline__ void mma16816(float* d, const uint32_t* a, uint32_t b0, uint32_t b1) {
  if constexpr (std::is_same_v<KvT, __nv_bfloat16>) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
}

template <typename KvT>
__device__ __forceinline__ uint32_t pack2(KvT lo, KvT hi) {
  const uint16_t l = *reinterpret_cast<const uint16_t*>(&lo);
  const uint16_t h = *reinterpret_cast<const uint16_t*>(&hi);
  return static_cast<uint32_t>(l) | (static_cast<uint32_t>(h) << 16);
}

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

void kv_store(const KvStoreParams& p, cudaStream_t stream) {
  const int64_t n = p.batch.n_tokens * p.kv.n_head_kv * p.kv.head_dim;
  if (n == 0) return;
  constexpr int kThreads = 256;
  const unsigned grid = static_cast<unsigned>((n + kThreads - 1) / kThreads);
  TPNODE_DISPATCH_KV(p.kv.dtype, KvT, { kv_store_kernel<KvT><<<grid, kThreads, 0, stream>>>(p); })
  TPNODE_CUDA_CHECK_LAUNCH();
}

bool decode_attention_supports(int64_t n_head, int64_t n_head_kv, int64_t head_dim) {
  if (n_head_kv <= 0 || n_head % n_head_kv != 0 || head_dim % 8 != 0) return false;
  return (n_head / n_head_kv) * head_dim <= kMaxDecodeOutputsPerThread * kDecodeThreads;
}

void decode_attention(const DecodeAttentionParams& p, cudaStream_t stream) {
  if (p.n == 0) return;
  TPNODE_CHECK(decode_attention_supports(p.n_head, p.kv.n_head_kv, p.kv.head_dim),
               "decode_attention: {} heads over {} KV heads of dim {} unsupported", p.n_head,
               p.kv.n_head_kv, p.kv.head_dim);
  TPNODE_CHECK(p.n_splits >= 1 && (p.n_splits == 1 || p.split_len % kDecodeKeyTile == 0),
               "decode_attention: bad split {} x {}", p.n_splits, p.split_len);
  const int G = static_cast<int>(p.n_head / p.kv.n_head_kv);
  const size_t smem = decode_smem_bytes(G, p.kv.head_dim);
  const dim3 grid(static_cast<unsigned>(p.n), static_cast<unsigned>(p.kv.n_head_kv),
                  static_cast<unsigned>(p.n_splits));
  TPNODE_DISPATCH_KV(p.kv.dtype, KvT, {
    if (smem > 48 * 1024) {
      TPNODE_CUDA_CHECK(cudaFuncSetAttribute(decode_attention_kernel<KvT>,
                                             cudaFuncAttributeMaxDynamicSharedMemorySize,
                                             static_cast<int>(smem)));
    }
    decode_attention_kernel<KvT><<<grid, kDecodeThreads, smem, stream>>>(p);
  })
  TPNODE_CUDA_CHECK_LAUNCH();
  if (p.n_splits > 1) {
    const dim3 cgrid(static_cast<unsigned>(p.n), static_cast<unsigned>(p.n_head));
    const int threads = static_cast<int>(std::min<int64_t>(p.kv.head_dim, 256));
    decode_combine_kernel<<<cgrid, threads, 0, stream>>>(p);
    TPNODE_CUDA_CHECK_LAUNCH();
  }
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
