// Programmatic dependent launch (Hopper and later). A kernel started with launch_pdl() may
// begin while the previous kernel of its stream is still finishing, so its launch latency
// and its first weight reads overlap that kernel's tail. The contract for such a kernel:
// before pdl_wait() it touches only memory no kernel of the step writes (weights); it calls
// pdl_wait() on every path before reading or writing anything else. pdl_wait() returns once
// the previous kernel has completed and its writes are visible, so the chain stays ordered
// even across kernels launched without PDL.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <utility>

#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/pdl.h"

namespace tpnode::cuda {

__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

// Lets the next kernel of the stream start its CTAs (it still waits in pdl_wait()).
__device__ __forceinline__ void pdl_launch_dependents() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

// Starts fetching a global line into L2 (no register result, nothing to wait for).
__device__ __forceinline__ void prefetch_l2(const void* p) {
  asm volatile("prefetch.global.L2 [%0];" ::"l"(p));
}

// A launch's grid, CTA, cluster (1 x 1 x 1: none) and dynamic shared memory.
struct LaunchShape {
  dim3 grid;
  dim3 block;
  dim3 cluster{1, 1, 1};
  size_t smem = 0;
};

template <typename... KArgs, typename... Args>
void launch_pdl(void (*kernel)(KArgs...), const LaunchShape& shape, cudaStream_t stream,
                Args&&... args) {
  cudaLaunchConfig_t cfg{};
  cfg.gridDim = shape.grid;
  cfg.blockDim = shape.block;
  cfg.dynamicSmemBytes = shape.smem;
  cfg.stream = stream;
  cudaLaunchAttribute attr[2];
  unsigned n = 0;
  if (pdl_enabled()) {
    attr[n].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr[n].val.programmaticStreamSerializationAllowed = 1;
    ++n;
  }
  if (shape.cluster.x * shape.cluster.y * shape.cluster.z > 1) {
    attr[n].id = cudaLaunchAttributeClusterDimension;
    attr[n].val.clusterDim.x = shape.cluster.x;
    attr[n].val.clusterDim.y = shape.cluster.y;
    attr[n].val.clusterDim.z = shape.cluster.z;
    ++n;
  }
  cfg.attrs = attr;
  cfg.numAttrs = n;
  TPNODE_CUDA_CHECK(cudaLaunchKernelEx(&cfg, kernel, std::forward<Args>(args)...));
}

template <typename... KArgs, typename... Args>
void launch_pdl(void (*kernel)(KArgs...), dim3 grid, dim3 block, size_t smem,
                cudaStream_t stream, Args&&... args) {
  launch_pdl(kernel, LaunchShape{.grid = grid, .block = block, .smem = smem}, stream,
             std::forward<Args>(args)...);
}

}  // namespace tpnode::cuda
