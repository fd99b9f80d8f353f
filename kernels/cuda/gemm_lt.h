// BF16 GEMM through cuBLASLt: y[m, n] (F32) = x[m, k] (BF16) · W[n, k]ᵀ (BF16), F32
// accumulation. Plans (descriptors + an algorithm) are cached per shape. The algorithm is the
// heuristic's first, or for shapes of at most autotune_max_m rows the fastest of its first
// kAutotuneCandidates, timed on the call's own buffers the first time the shape runs outside
// graph capture (that call waits for the GPU once; a shape first met inside a capture keeps
// the heuristic's first).
#pragma once

#include <cublasLt.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <map>
#include <tuple>

namespace tpnode::cuda {

struct GemmArgs {
  const __nv_bfloat16* w = nullptr;  // [n, k]
  const __nv_bfloat16* x = nullptr;  // [m, k]
  float* y = nullptr;                // [m, ldy]: columns [0, n) written
  int64_t m = 0, n = 0, k = 0;
  int64_t ldy = 0;                   // 0 = n
};

inline constexpr int kAutotuneCandidates = 8;

class GemmLt {
 public:
  // `workspace` is device memory of `workspace_bytes`, owned by the caller.
  // With autotune_max_m > 0, shapes of at most that many rows (m) are autotuned.
  GemmLt(void* workspace, size_t workspace_bytes, int64_t autotune_max_m = 0);
  ~GemmLt();
  GemmLt(const GemmLt&) = delete;
  GemmLt& operator=(const GemmLt&) = delete;

  void run(const GemmArgs& a, cudaStream_t stream);

 private:
  struct Plan {
    cublasLtMatmulDesc_t op = nullptr;
    cublasLtMatrixLayout_t w = nullptr, x = nullptr, y = nullptr;
    cublasLtMatmulAlgo_t algo{};
  };
  const Plan& plan(const GemmArgs& a, int64_t ldy, cudaStream_t stream);
  // One product a with plan p and `algo`, on stream.
  cublasStatus_t matmul(const Plan& p, const GemmArgs& a, const cublasLtMatmulAlgo_t& algo,
                        cudaStream_t stream);
  // The fastest of `algos` for a on stream (the GPU is waited for); -1: none ran.
  int fastest(const Plan& p, const GemmArgs& a, const cublasLtMatmulAlgo_t* algos, int n_algos,
              cudaStream_t stream);

  cublasLtHandle_t handle_ = nullptr;
  void* workspace_;
  size_t workspace_bytes_;
  int64_t autotune_max_m_;
  std::map<std::tuple<int64_t, int64_t, int64_t, int64_t>, Plan> plans_;
};

}  // namespace tpnode::cuda
