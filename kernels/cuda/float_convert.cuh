// 16-byte vectors of F32/F16/BF16 elements as floats.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "node/model/tensor_type.h"

namespace tpnode::cuda {

template <TensorType T>
struct FloatElem;
template <>
struct FloatElem<TensorType::kF32> {
  using type = float;
  static constexpr int kPer16B = 4;
  __device__ static float to_float(float v) { return v; }
};
template <>
struct FloatElem<TensorType::kF16> {
  using type = __half;
  static constexpr int kPer16B = 8;
  __device__ static float to_float(__half v) { return __half2float(v); }
};
template <>
struct FloatElem<TensorType::kBF16> {
  using type = __nv_bfloat16;
  static constexpr int kPer16B = 8;
  __device__ static float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }
};

// Unpacks a 16-byte vector into FloatElem<T>::kPer16B floats.
template <TensorType T>
__device__ __forceinline__ void unpack16(const int4& v, float* out) {
  if constexpr (T == TensorType::kF32) {
    out[0] = __int_as_float(v.x);
    out[1] = __int_as_float(v.y);
    out[2] = __int_as_float(v.z);
    out[3] = __int_as_float(v.w);
  } else {
    using E = typename FloatElem<T>::type;
    const E* e = reinterpret_cast<const E*>(&v);
#pragma unroll
    for (int i = 0; i < 8; ++i) out[i] = FloatElem<T>::to_float(e[i]);
  }
}

}  // namespace tpnode::cuda
