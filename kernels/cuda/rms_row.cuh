// The arithmetic of RMSNorm over one row, shared by every kernel that normalizes a row
// (rmsnorm_kernel, the all-reduce folded into it, the norm inside a GEMV), so that they
// produce the same bits: the roundings are spelled out, since ptxas would otherwise contract a
// plain `ss += a.x * a.x + ...` into multiply-adds as it sees fit in each kernel.
#pragma once

#include <cuda_runtime.h>

#include "kernels/cuda/warp_reduce.cuh"

namespace tpnode::cuda {

// a + b, element by element: the residual add in front of a norm.
__device__ __forceinline__ float4 add4(float4 a, float4 b) {
  return make_float4(a.x + b.x, a.y + b.y, a.z + b.z, a.w + b.w);
}

__device__ __forceinline__ float add_squares4(float ss, float4 a) {
  float t = __fmul_rn(a.x, a.x);
  t = __fmaf_rn(a.y, a.y, t);
  t = __fmaf_rn(a.z, a.z, t);
  t = __fmaf_rn(a.w, a.w, t);
  return __fadd_rn(ss, t);
}

// 1 / rms of a row whose sum of squares is spread over the CTA's threads (each its own `ss`):
// warp sums, then the warps' sums in warp order. Every thread of the CTA calls it (at most
// 1024 threads, whole warps) and gets the same value.
__device__ __forceinline__ float rms_inverse(float ss, int64_t n, float eps) {
  __shared__ float partial[32];
  ss = warp_sum(ss);
  if (threadIdx.x % 32 == 0) partial[threadIdx.x / 32] = ss;
  __syncthreads();
  float total = 0.0f;
  for (int w = 0; w < static_cast<int>(blockDim.x / 32); ++w) total += partial[w];
  return rsqrtf(total / static_cast<float>(n) + eps);
}

// a * inv * w, element by element: the normalized, weighted values.
__device__ __forceinline__ float4 rms_scale4(float4 a, float inv, float4 w) {
  return make_float4(a.x * inv * w.x, a.y * inv * w.y, a.z * inv * w.z, a.w * inv * w.w);
}

}  // namespace tpnode::cuda
