// One check family for CUDA runtime and cuBLAS(Lt) return codes: every failure becomes a
// tpnode::Error(kRuntime) through tpnode::raise_api_error, carrying call, file and line.
#pragma once

#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include "node/common/error.h"

namespace tpnode::cuda {

const char* cublas_status_name(cublasStatus_t status);

}  // namespace tpnode::cuda

#define TPNODE_CUDA_CHECK(call)                                                        \
  do {                                                                                 \
    const cudaError_t tpnode_err_ = (call);                                            \
    if (tpnode_err_ != cudaSuccess)                                                    \
      ::tpnode::raise_api_error("CUDA", #call, cudaGetErrorString(tpnode_err_), __FILE__, \
                                __LINE__);                                             \
  } while (0)

#define TPNODE_CUBLAS_CHECK(call)                                                       \
  do {                                                                                  \
    const cublasStatus_t tpnode_st_ = (call);                                           \
    if (tpnode_st_ != CUBLAS_STATUS_SUCCESS)                                            \
      ::tpnode::raise_api_error("cuBLAS", #call, ::tpnode::cuda::cublas_status_name(tpnode_st_), \
                                __FILE__, __LINE__);                                    \
  } while (0)

// After a kernel launch: reports a bad launch configuration at its call site.
#define TPNODE_CUDA_CHECK_LAUNCH() TPNODE_CUDA_CHECK(cudaGetLastError())
