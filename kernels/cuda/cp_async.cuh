// cp.async (compute capability >= 8.0): copies from global into shared memory that run beside
// the issuing thread until it waits for their commit group.
#pragma once

#include <cuda_runtime.h>

namespace tpnode::cuda {

// 16 bytes, cached in L2 only.
__device__ __forceinline__ void cp_async16(void* dst, const void* src) {
  const auto d = static_cast<unsigned>(__cvta_generic_to_shared(dst));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(d), "l"(src));
}
// 4 bytes (through L1: the 16-byte form's bypass needs 16).
__device__ __forceinline__ void cp_async4(void* dst, const void* src) {
  const auto d = static_cast<unsigned>(__cvta_generic_to_shared(dst));
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4;\n" ::"r"(d), "l"(src));
}
// Closes the thread's current group of copies.
__device__ __forceinline__ void cp_async_commit() {
  asm volatile("cp.async.commit_group;\n" ::: "memory");
}
// Returns once at most N of the thread's groups are still in flight.
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

}  // namespace tpnode::cuda
