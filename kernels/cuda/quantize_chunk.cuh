// The 8-bit copy of activations that quantized GEMVs read (QuantActs), one 32-value chunk
// at a time: d = amax / 127, q = round(v / d), s = d * sum(q), as quantize_acts writes it.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/cuda/gemv.h"  // QuantActs
#include "kernels/cuda/warp_reduce.cuh"

namespace tpnode::cuda {

// Four 8-bit values q[0..3] packed little-endian into a word, as they lie in memory.
__device__ __forceinline__ uint32_t pack_s8x4(const int* q) {
  return (static_cast<uint32_t>(q[0] & 0xFF)) | (static_cast<uint32_t>(q[1] & 0xFF) << 8) |
         (static_cast<uint32_t>(q[2] & 0xFF) << 16) | (static_cast<uint32_t>(q[3] & 0xFF) << 24);
}

// Quantizes the chunk whose 32 values the 32 lanes of a warp hold in order (lane i: value i).
// The maximum is exact in any order and so is the sum (at most 32 * 127 in magnitude).
__device__ __forceinline__ void quantize_chunk32(const QuantActs& out, int64_t chunk, float v) {
  const int lane = threadIdx.x % 32;
  const float amax = warp_max(fabsf(v));
  const float d = amax / 127.0f;
  const int q = amax > 0.0f ? __float2int_rn(v / d) : 0;
  out.q[chunk * 32 + lane] = static_cast<int8_t>(q);
  const float sum = warp_sum(static_cast<float>(q));
  if (lane == 0) {
    out.d[chunk] = d;
    out.s[chunk] = d * sum;
  }
}

// Value i (held by this thread) of a 256-thread CTA that holds one 256-value group, quantized
// as quantize_acts writes group 256: d = amax / 127 over the CTA, q = round(v / d), and per
// 32-value chunk (a warp) d and d * the chunk's sum of q. Every thread of the CTA calls it.
__device__ __forceinline__ void quantize_group256_cta(const QuantActs& out, int64_t i, float v) {
  __shared__ float s_amax[8];
  const int warp = static_cast<int>(threadIdx.x / 32), lane = static_cast<int>(threadIdx.x % 32);
  const float wmax = warp_max(fabsf(v));
  if (lane == 0) s_amax[warp] = wmax;
  __syncthreads();
  float amax = s_amax[0];
#pragma unroll
  for (int w = 1; w < 8; ++w) amax = fmaxf(amax, s_amax[w]);
  const float d = amax / 127.0f;
  const int q = amax > 0.0f ? __float2int_rn(v / d) : 0;
  out.q[i] = static_cast<int8_t>(q);
  const int sum = __reduce_add_sync(0xffffffffu, q);
  if (lane == 0) {
    out.d[i / 32] = d;
    out.s[i / 32] = d * static_cast<float>(sum);
  }
}

// q = round(v / d) for four values of a group whose scale is d = amax / 127 (all zero when
// amax is): the recipe every 8-bit copy here shares.
__device__ __forceinline__ void quantize4(float4 v, float amax, float d, int (&q)[4]) {
  q[0] = q[1] = q[2] = q[3] = 0;
  if (amax > 0.0f) {
    q[0] = __float2int_rn(v.x / d);
    q[1] = __float2int_rn(v.y / d);
    q[2] = __float2int_rn(v.z / d);
    q[3] = __float2int_rn(v.w / d);
  }
}

// Quantizes the 32 values of a chunk held as float4 by 8 consecutive lanes (lane % 8 = part):
// the same recipe as quantize_acts (d = amax / 127, q = round(v / d)).
// Every lane of the warp must call it (full-mask shuffles); only lanes with `store` write.
__device__ __forceinline__ void quantize_chunk8(const QuantActs& out, int64_t chunk, float4 v,
                                                bool store) {
  const int part = threadIdx.x % 8;
  float amax = fmaxf(fmaxf(fabsf(v.x), fabsf(v.y)), fmaxf(fabsf(v.z), fabsf(v.w)));
#pragma unroll
  for (int o = 4; o > 0; o >>= 1) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, o));
  const float d = amax / 127.0f;
  int q[4];
  quantize4(v, amax, d, q);
  if (store) reinterpret_cast<uint32_t*>(out.q + chunk * 32)[part] = pack_s8x4(q);
  float sum = static_cast<float>(q[0] + q[1] + q[2] + q[3]);
#pragma unroll
  for (int o = 4; o > 0; o >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
  if (store && part == 0) {
    out.d[chunk] = d;
    out.s[chunk] = d * sum;
  }
}

// Quantizes a 256-value group that the 32 lanes of a warp hold in order (lane i: values
// 8i..8i+7) with one scale, as quantize_acts writes group 256: returns d = amax / 127, sets
// q = round(v / d) and chunk_sum to the sum of q over the lane's 32-value chunk (lanes 4c..4c+3;
// exact). Every lane of the warp must call it.
__device__ __forceinline__ float quantize_group256(const float (&v)[8], int (&q)[8],
                                                   int& chunk_sum) {
  float amax = 0.0f;
#pragma unroll
  for (int i = 0; i < 8; ++i) amax = fmaxf(amax, fabsf(v[i]));
  amax = warp_max(amax);
  const float d = amax / 127.0f;
  int sum = 0;
#pragma unroll
  for (int i = 0; i < 8; ++i) {
    q[i] = amax > 0.0f ? __float2int_rn(v[i] / d) : 0;
    sum += q[i];
  }
  sum += __shfl_xor_sync(0xffffffffu, sum, 1);
  sum += __shfl_xor_sync(0xffffffffu, sum, 2);
  chunk_sum = sum;
  return d;
}

}  // namespace tpnode::cuda
