// LL words of the one-shot all-reduce (allreduce.h): a float and the epoch of the call that
// wrote it in one 8-byte store, which lands whole, so a reader that sees the epoch sees the
// value. Stored through L2 (volatile: never kept in L1).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace tpnode::cuda {

__device__ __forceinline__ void store_ll2(uint2* p, float a, float b, uint32_t epoch) {
  asm volatile("st.volatile.global.v4.u32 [%0], {%1, %2, %3, %4};" ::"l"(p),
               "r"(__float_as_uint(a)), "r"(epoch), "r"(__float_as_uint(b)), "r"(epoch)
               : "memory");
}
__device__ __forceinline__ void store_ll1(uint2* p, float a, uint32_t epoch) {
  asm volatile("st.volatile.global.v2.u32 [%0], {%1, %2};" ::"l"(p), "r"(__float_as_uint(a)),
               "r"(epoch)
               : "memory");
}

}  // namespace tpnode::cuda
