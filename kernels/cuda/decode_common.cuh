// What the two decode attention kernels share (attention.cu: CUDA cores, any head_dim;
// decode_attention_mma.cu: tensor cores over a KV head's whole query group): element
// conversions, the cp.async ring's primitives, the rows a CTA stages from the launch before
// (q, the new key and value, rotated), and the end of a CTA: its warps' softmax states merged
// into outputs, merged over key splits (cluster or global), the 8-bit copy and gemm_kq's
// records written.
#pragma once

#include <cooperative_groups.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>

#include "kernels/cuda/attention.h"
#include "kernels/cuda/cp_async.cuh"
#include "kernels/cuda/kq_records.cuh"
#include "kernels/cuda/pdl.cuh"
#include "kernels/cuda/quantize_chunk.cuh"
#include "kernels/cuda/rope.cuh"

namespace tpnode::cuda::decode {

// Warps of a CTA: the CUDA-core kernel's always, the tensor-core kernel's for most grids (it
// also has a narrow variant; the helpers below take the count as W).
constexpr int kDecodeWarps = 4;
constexpr int kDecodeThreads = kDecodeWarps * 32;
// Passes of the CTA over the rows it stages (q of its heads, the new K and V; 8 elements per
// thread and pass): enough for every supported shape (decode_attention checks).
constexpr int kDecodeStagePasses = 3;

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

#define TPNODE_DISPATCH_KV(dtype, KvT, ...) \
  if ((dtype) == KvDtype::kBF16) {          \
    using KvT = __nv_bfloat16;              \
    __VA_ARGS__                             \
  } else {                                  \
    using KvT = __half;                     \
    __VA_ARGS__                             \
  }


// 8 cache elements (16 bytes) to floats, and 8 floats to cache elements.
template <typename KvT>
__device__ __forceinline__ void unpack8(const int4 raw, float* f) {
  const uint32_t w[4] = {static_cast<uint32_t>(raw.x), static_cast<uint32_t>(raw.y),
                         static_cast<uint32_t>(raw.z), static_cast<uint32_t>(raw.w)};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    if constexpr (std::is_same_v<KvT, __nv_bfloat16>) {
      f[2 * i] = __uint_as_float(w[i] << 16);
      f[2 * i + 1] = __uint_as_float(w[i] & 0xffff0000u);
    } else {
      const float2 x = __half22float2(*reinterpret_cast<const __half2*>(&w[i]));
      f[2 * i] = x.x;
      f[2 * i + 1] = x.y;
    }
  }
}
template <typename KvT>
__device__ __forceinline__ int4 pack8(const float (&f)[8]) {
  return make_int4(static_cast<int>(KvElem<KvT>::pack(f[0], f[1])),
                   static_cast<int>(KvElem<KvT>::pack(f[2], f[3])),
                   static_cast<int>(KvElem<KvT>::pack(f[4], f[5])),
                   static_cast<int>(KvElem<KvT>::pack(f[6], f[7])));
}
// 8 floats from 32-byte aligned global memory.
__device__ __forceinline__ void load8(const float* src, float (&f)[8]) {
  const float4 a = *reinterpret_cast<const float4*>(src);
  const float4 b = *reinterpret_cast<const float4*>(src + 4);
  f[0] = a.x, f[1] = a.y, f[2] = a.z, f[3] = a.w;
  f[4] = b.x, f[5] = b.y, f[6] = b.z, f[7] = b.w;
}

// exp2(m - ref) as a merge weight; a state that saw no key (m = -inf) weighs nothing.
__device__ __forceinline__ float merge_weight(float m, float ref) {
  return m == -INFINITY ? 0.0f : exp2f(m - ref);
}

// Splits' normalised outputs merged in the order they are added (deterministic), each
// weighted by its log2-sum-exp with a running maximum.
struct SplitMerge {
  float mm = -INFINITY, den = 0.0f, a = 0.0f;
  __device__ void add(float lse, float val) {
    const float m_new = fmaxf(mm, lse);
    const float f_old = merge_weight(mm, m_new), f_new = merge_weight(lse, m_new);
    den = den * f_old + f_new;
    a = a * f_old + val * f_new;
    mm = m_new;
  }
  __device__ float result() const { return den > 0.0f ? a / den : 0.0f; }
};

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

// Where a decode CTA's rows from the launch before go (shared memory, floats): q of its heads
// rotated and scaled so that scores are in log2 units, the token's new key rotated, its
// value, and the rotation table.
struct DecodeRows {
  float* q_s;   // [heads][hd]
  float* k_s;   // [hd]
  float* v_s;   // [hd]
  float* cs_s;  // [hd / 2] cos, then [hd / 2] sin, of the pairs
};
// The CTA: its token, first head, heads, KV head; whether it holds the token's own key.
struct DecodeCta {
  int64_t t;
  int pos, h0, hc, kvh, hd, split, n_active;
  bool own_key;
};

// The rows' layout from `base`: q of `heads` heads, then the new key, its value, the table.
__device__ __forceinline__ DecodeRows decode_rows_at(float* base, int heads, int hd) {
  return {.q_s = base,
          .k_s = base + heads * hd,
          .v_s = base + heads * hd + hd,
          .cs_s = base + heads * hd + 2 * hd};
}

// The rotation table depends on the position alone: it is built (double-precision sincos)
// before waiting for the launch that writes the rows.
template <int W = kDecodeWarps>
__device__ __forceinline__ void decode_rope_table(const DecodeAttentionParams& p,
                                                  const DecodeCta& c, const DecodeRows& s) {
  if (p.rope.inv_freq == nullptr) return;
  const int half = c.hd / 2;
#pragma unroll 1
  for (int i = threadIdx.x; i < half; i += W * 32) {
    const RopeCosSin r = rope_cos_sin(c.pos, p.rope.inv_freq, i);
    s.cs_s[i] = r.cs;
    s.cs_s[half + i] = r.sn;
  }
  __syncthreads();
}

// The rotation table from inverse frequencies this thread loaded at the kernel's start
// (decode_rope_freq: pair threadIdx.x, the only one it builds), so that the load does not wait
// behind the cache copies issued before the table is built.
__device__ __forceinline__ float decode_rope_freq(const DecodeAttentionParams& p, int hd) {
  return p.rope.inv_freq != nullptr && static_cast<int>(threadIdx.x) < hd / 2
             ? p.rope.inv_freq[threadIdx.x]
             : 0.0f;
}
__device__ __forceinline__ void decode_rope_table(const DecodeAttentionParams& p,
                                                  const DecodeCta& c, const DecodeRows& s,
                                                  float freq) {
  if (p.rope.inv_freq == nullptr) return;
  const int half = c.hd / 2, i = threadIdx.x;
  if (i < half) {
    const RopeCosSin r = rope_cos_sin_at(c.pos, freq);
    s.cs_s[i] = r.cs;
    s.cs_s[half + i] = r.sn;
  }
  __syncthreads();
}

// The rows this CTA reads from the launch before: q of its heads and, in the split holding
// the token's own key, k_new and v_new, each once from global memory into shared memory,
// rotated there when RoPE is fused. Items of 8 elements, 4 rotation pairs each: neox pairs
// elements [4j, 4j + 4) with [hd/2 + 4j, ...), interleaved pairs neighbours in [8j, 8j + 8);
// pairs 4j .. 4j + 3 either way. Ends with a CTA barrier.
template <int W = kDecodeWarps>
__device__ __forceinline__ void decode_load_rows(const DecodeAttentionParams& p, const DecodeCta& c,
                                                 const DecodeRows& s) {
  constexpr int kThreads = W * 32;
  const int tid = threadIdx.x, hd = c.hd, hc = c.hc, half = hd / 2;
  const int64_t n_kv = p.kv.n_head_kv;
  const bool rope = p.rope.inv_freq != nullptr;
  const bool neox = rope && p.rope.style == RopeStyle::kNeox;
  const int row_items = hd / 8;
  const int n_items = (hc + (c.own_key ? 2 : 0)) * row_items;
  float4 lo[kDecodeStagePasses], hi[kDecodeStagePasses];
  auto item_of = [&](int pass, int& r, int& a, int& b) {
    const int item = tid + pass * kThreads;
    r = item / row_items;
    const int j = item - r * row_items;
    a = neox ? 4 * j : 8 * j;
    b = neox ? half + 4 * j : 8 * j + 4;
    return j;
  };
#pragma unroll
  for (int pass = 0; pass < kDecodeStagePasses; ++pass) {
    int r, a, b;
    item_of(pass, r, a, b);
    if (tid + pass * kThreads < n_items) {
      const float* src = r < hc    ? p.q + (c.t * p.n_head + c.h0 + r) * hd
                         : r == hc ? p.k_new + (c.t * n_kv + c.kvh) * hd
                                   : p.v_new + (c.t * n_kv + c.kvh) * hd;
      lo[pass] = *reinterpret_cast<const float4*>(src + a);
      hi[pass] = *reinterpret_cast<const float4*>(src + b);
    }
  }
  const float qscale = p.scale * 1.4426950408889634f;
#pragma unroll
  for (int pass = 0; pass < kDecodeStagePasses; ++pass) {
    int r, a, b;
    const int j = item_of(pass, r, a, b);
    if (tid + pass * kThreads >= n_items) continue;
    float x[8] = {lo[pass].x, lo[pass].y, lo[pass].z, lo[pass].w,
                  hi[pass].x, hi[pass].y, hi[pass].z, hi[pass].w};
    if (rope && r <= hc) {
      const float4 c4 = *reinterpret_cast<const float4*>(s.cs_s + 4 * j);
      const float4 s4 = *reinterpret_cast<const float4*>(s.cs_s + half + 4 * j);
      const RopeCosSin rc[4] = {{c4.x, s4.x}, {c4.y, s4.y}, {c4.z, s4.z}, {c4.w, s4.w}};
      float y[8];
      if (neox) {  // pairs (x[e], x[e + 4])
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          y[e] = rope_first(x[e], x[e + 4], rc[e]);
          y[e + 4] = rope_second(x[e], x[e + 4], rc[e]);
        }
      } else {  // pairs (x[2e], x[2e + 1])
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          y[2 * e] = rope_first(x[2 * e], x[2 * e + 1], rc[e]);
          y[2 * e + 1] = rope_second(x[2 * e], x[2 * e + 1], rc[e]);
        }
      }
#pragma unroll
      for (int e = 0; e < 8; ++e) x[e] = y[e];
    }
    if (r < hc) {
#pragma unroll
      for (int e = 0; e < 8; ++e) x[e] *= qscale;
    }
    float* dst = r < hc ? s.q_s + r * hd : r == hc ? s.k_s : s.v_s;
    *reinterpret_cast<float4*>(dst + a) = make_float4(x[0], x[1], x[2], x[3]);
    *reinterpret_cast<float4*>(dst + b) = make_float4(x[4], x[5], x[6], x[7]);
  }
  __syncthreads();
}

// A CTA's rows from the launch before: the rotation table, the wait for that launch (fused:
// only here, the cache's older keys being in flight already; otherwise the kernel waited
// before its first cache read), the next launch let in, then the rows.
template <int W = kDecodeWarps>
__device__ __forceinline__ void decode_stage_rows(const DecodeAttentionParams& p,
                                                  const DecodeCta& c, const DecodeRows& s,
                                                  bool fused) {
  decode_rope_table<W>(p, c, s);
  if (fused) pdl_wait();
  pdl_launch_dependents();
  decode_load_rows<W>(p, c, s);
}
// The same with the table built from a frequency loaded earlier (decode_rope_freq; head_dim / 2
// at most W * 32 pairs).
template <int W>
__device__ __forceinline__ void decode_stage_rows(const DecodeAttentionParams& p,
                                                  const DecodeCta& c, const DecodeRows& s,
                                                  bool fused, float freq) {
  decode_rope_table(p, c, s, freq);
  if (fused) pdl_wait();
  pdl_launch_dependents();
  decode_load_rows<W>(p, c, s);
}

// After the key loop each warp leaves its softmax state per head (log2 units: the running
// maximum m, the sum l of exp2(s - m), the unnormalised output acc) in shared memory; the
// CTA's merged output and log2-sum-exp per head follow (what the other CTAs of a cluster read).
template <int GB, int W = kDecodeWarps>
struct DecodeRed {
  float* acc;     // [warp][GB][hd]
  float* m;       // [warp][GB]
  float* l;       // [warp][GB]
  float* cl_val;  // [GB][hd]
  float* cl_lse;  // [GB]
  __device__ DecodeRed(void* smem, int hd) {
    acc = reinterpret_cast<float*>(smem);
    m = acc + W * GB * hd;
    l = m + W * GB;
    cl_val = l + W * GB;
    cl_lse = cl_val + GB * hd;
  }
};
// DecodeRed's bytes for `heads` heads (its GB) and `warps` warps (its W).
__host__ __device__ constexpr size_t decode_red_bytes(int heads, int64_t hd,
                                                      int warps = kDecodeWarps) {
  return sizeof(float) * static_cast<size_t>(warps * heads * (hd + 2) + heads * (hd + 1));
}

// The end of a decode CTA, once every warp has written its state (DecodeRed) and passed a CTA
// barrier: the warps' states merged per output, then the key splits' (cluster or global)
// merge, the output, its 8-bit copy and gemm_kq's records.
template <int GB, int W = kDecodeWarps>
__device__ __forceinline__ void decode_finish(const DecodeAttentionParams& p, const DecodeCta& c,
                                              const DecodeRed<GB, W>& red) {
  constexpr int kThreads = W * 32;
  const int tid = threadIdx.x;
  const int64_t t = c.t;
  const int h0 = c.h0, hc = c.hc, hd = c.hd, split = c.split, n_active = c.n_active;
  float* red_acc = red.acc;
  float* red_m = red.m;
  float* red_l = red.l;
  float* cl_val = red.cl_val;
  float* cl_lse = red.cl_lse;
  // Output o of this CTA's heads (head h0 + o / hd, element o % hd) and its 8-bit copy. With
  // the copy, head_dim % 32 == 0: a warp's pass over o is one whole chunk, and every lane of a
  // warp makes the same passes.
  const bool quant = p.quant.q != nullptr;
  // With p.kq (no cluster: one CTA emits all of its heads' outputs), they also go to cl_val,
  // from which warp s % 4 writes 256-value stage s's gemm_kq record of token t (and its share
  // of the padding tokens' zeros).
  auto emit = [&](int o, float val) {
    const int64_t idx = (t * p.n_head + h0) * hd + o;
    p.out[idx] = val;
    if (quant) quantize_chunk32(p.quant, idx / 32, val);
    if (p.kq != nullptr) cl_val[o] = val;
  };
  auto write_record = [&]() {
    if (p.kq == nullptr) return;
    __syncthreads();
    kq::write_token_records(p.kq, cl_val, static_cast<int64_t>(h0) * hd / 256, hc * hd / 256, t,
                            p.n, W);
  };
  const int n_out = hc * hd;
  for (int o = tid; o < n_out; o += kThreads) {
    const int h = o / hd, d = o - h * hd;
    float mm = -INFINITY;
#pragma unroll
    for (int w = 0; w < W; ++w) mm = fmaxf(mm, red_m[w * GB + h]);
    float sum = 0.0f, a = 0.0f;
#pragma unroll
    for (int w = 0; w < W; ++w) {
      const float f = merge_weight(red_m[w * GB + h], mm);
      sum += red_l[w * GB + h] * f;
      a += red_acc[(w * GB + h) * hd + d] * f;
    }
    const float val = sum > 0.0f ? a / sum : 0.0f;
    if (p.cluster) {
      cl_val[o] = val;
      if (d == 0) cl_lse[h] = sum > 0.0f ? mm + log2f(sum) : -INFINITY;
    } else if (n_active == 1) {
      emit(o, val);
    } else {
      const int64_t slot =
          (static_cast<int64_t>(blockIdx.x) * p.n_head + h0 + h) * p.n_splits + split;
      p.part_out[slot * hd + d] = val;
      if (d == 0) p.part_lse[slot] = sum > 0.0f ? mm + log2f(sum) : -INFINITY;
    }
  }
  if (p.cluster) {
    // The cluster's CTAs are its splits (rank = split). Each merges a share of the outputs,
    // whole warps of 32 consecutive ones (the 8-bit copy's chunks), reading every split's
    // state from its shared memory; the second barrier keeps each CTA's shared memory alive
    // until all reads of it are done.
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    namespace cg = cooperative_groups;
    cg::cluster_group cluster = cg::this_cluster();
    cluster.sync();
    const int rank = static_cast<int>(cluster.block_rank());
    for (int o = rank * kThreads + tid; o < n_out; o += p.n_splits * kThreads) {
      const int h = o / hd;
      // Every split's pair is read before any is merged: the remote reads overlap.
      float ls[kDecodeMaxClusterSplits], vs[kDecodeMaxClusterSplits];
#pragma unroll
      for (int sp = 0; sp < kDecodeMaxClusterSplits; ++sp) {
        if (sp < p.n_splits) {
          ls[sp] = cluster.map_shared_rank(cl_lse, sp)[h];
          vs[sp] = cluster.map_shared_rank(cl_val, sp)[o];
        }
      }
      SplitMerge mg;
#pragma unroll
      for (int sp = 0; sp < kDecodeMaxClusterSplits; ++sp) {
        if (sp < p.n_splits) mg.add(ls[sp], vs[sp]);
      }
      emit(o, mg.result());
    }
    // Only keeps every CTA's shared memory alive until the others' reads of it are done (their
    // values were used above): no memory ordering, so no fence before the arrival.
    asm volatile("barrier.cluster.arrive.relaxed.aligned;\n" ::: "memory");
    asm volatile("barrier.cluster.wait.aligned;\n" ::: "memory");
#else
    __trap();  // never launched: the planner needs compute capability >= 9.0
#endif
    return;
  }
  if (n_active == 1) {
    write_record();
    return;
  }

  // The last split of the group to finish merges them all, in split order (deterministic),
  // and leaves the counter at zero for the next launch (atomicInc wraps at n_active - 1).
  __threadfence();
  __syncthreads();
  bool last = false;
  if (tid == 0) {
    const int64_t ctr = static_cast<int64_t>(blockIdx.x) * gridDim.y + blockIdx.y;
    const uint32_t ticket = atomicInc(p.counters + ctr, static_cast<uint32_t>(n_active - 1));
    last = ticket == static_cast<uint32_t>(n_active - 1);
  }
  if (!__syncthreads_or(last)) return;
  __threadfence();

  // One pass per output with a running maximum; eight splits' LSE and value loads go out
  // together.
  const int64_t slot0 = static_cast<int64_t>(blockIdx.x) * p.n_head + h0;  // first head's row
  for (int o = tid; o < n_out; o += kThreads) {
    const int h = o / hd, d = o - h * hd;
    const float* lse = p.part_lse + (slot0 + h) * p.n_splits;
    const float* src = p.part_out + (slot0 + h) * p.n_splits * hd + d;
    SplitMerge mg;
#pragma unroll 8
    for (int sp = 0; sp < n_active; ++sp) {
      mg.add(__ldcg(lse + sp), __ldcg(src + static_cast<int64_t>(sp) * hd));
    }
    emit(o, mg.result());
  }
  write_record();
}

}  // namespace tpnode::cuda::decode
