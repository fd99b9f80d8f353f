// The sum of squares of RMSNorm, with its roundings spelled out: ptxas contracts a plain
// `ss += a.x * a.x + ...` into multiply-adds as it sees fit in each kernel, and every kernel
// that normalizes a row (rmsnorm, the all-reduce folded into it) must produce the same bits.
#pragma once

#include <cuda_runtime.h>

namespace tpnode::cuda {

__device__ __forceinline__ float add_squares4(float ss, float4 a) {
  float t = __fmul_rn(a.x, a.x);
  t = __fmaf_rn(a.y, a.y, t);
  t = __fmaf_rn(a.z, a.z, t);
  t = __fmaf_rn(a.w, a.w, t);
  return __fadd_rn(ss, t);
}

}  // namespace tpnode::cuda
