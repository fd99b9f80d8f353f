// Reductions over the 32 lanes of a warp (full-mask butterflies: every lane gets the result,
// in the same order on every lane, so the bits are the same run after run).
#pragma once

#include <cuda_runtime.h>

namespace tpnode::cuda {

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

}  // namespace tpnode::cuda
