// RoPE math shared by the rope kernel and the decode attention kernel (which rotates q and
// the new key as it loads them), so both rotate by the same bits.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace tpnode::cuda {

// cos and sin of rotation pair i at a position. The angle rounds to float (as the CPU backend
// and transformers do); cos/sin are taken in double and rounded once, as the CPU does.
struct RopeCosSin {
  float cs;
  float sn;
};
__device__ __forceinline__ RopeCosSin rope_cos_sin_at(int32_t pos, float inv_freq) {
  const float angle = static_cast<float>(pos) * inv_freq;
  double sd, cd;
  sincos(static_cast<double>(angle), &sd, &cd);
  return {static_cast<float>(cd), static_cast<float>(sd)};
}
__device__ __forceinline__ RopeCosSin rope_cos_sin(int32_t pos, const float* inv_freq, int64_t i) {
  return rope_cos_sin_at(pos, inv_freq[i]);
}

// The pair (x0, x1) rotated: x0' = x0 cos - x1 sin, x1' = x0 sin + x1 cos. Explicit roundings,
// so that no caller's compiler contracts them differently into FMAs.
__device__ __forceinline__ float rope_first(float x0, float x1, RopeCosSin r) {
  return __fsub_rn(__fmul_rn(x0, r.cs), __fmul_rn(x1, r.sn));
}
__device__ __forceinline__ float rope_second(float x0, float x1, RopeCosSin r) {
  return __fadd_rn(__fmul_rn(x0, r.sn), __fmul_rn(x1, r.cs));
}

}  // namespace tpnode::cuda
