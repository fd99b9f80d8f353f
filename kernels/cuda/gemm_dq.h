// Quantized GEMM for decode batches y[m, rows] = x[m, cols] · Wᵀ with W dequantized to BF16 inside
// the kernel (mma.sync m16n8k16, BF16 x BF16 -> F32): every weight byte is read from memory
// once per 64 batch rows and its dequantization is shared by all of them, so the cost per
// step is the weight bytes plus the tensor-core work, not a BF16 copy of the weights.
// W in the split layout (quant_layout.h) of Q4_K, Q6_K, Q5_K, Q8_0, Q4_0, Q4_1, Q5_0 or Q5_1;
// x BF16. Results are bitwise repeatable for a given plan: fixed summation order, no float
// atomics.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/cuda/quant_layout.h"

namespace tpnode::cuda {

inline constexpr int64_t kGemmDqMaxBatch = 128;
inline constexpr int kGemmDqMaxSplits = 8;

// Scratch for splitting k over several CTAs (shapes with fewer row tiles than SMs): partial
// sums and one arrival counter per output tile. Counters must be zero before the first launch;
// every launch leaves them zero. One workspace serves one stream at a time.
struct GemmDqWorkspace {
  float* partials = nullptr;  // [partial_floats]
  int64_t partial_floats = 0;
  unsigned* counters = nullptr;  // [n_counters]
  int64_t n_counters = 0;
};

// Sizes of a workspace that allows every split the default plan picks on the current device.
struct GemmDqWorkspaceSize {
  int64_t partial_floats = 0;
  int64_t n_counters = 0;
};
GemmDqWorkspaceSize gemm_dq_workspace_size();

struct GemmDqParams {
  DeviceMatrix w;                    // [rows, cols], quantized (gemm_dq_supports)
  const __nv_bfloat16* x = nullptr;  // [m, cols], 16-byte aligned
  float* y = nullptr;                // [m, ldy]: columns [0, rows) written
  int64_t m = 0;                     // 1..kGemmDqMaxBatch
  int64_t ldy = 0;                   // row stride of y in elements; 0 = w.rows
  GemmDqWorkspace ws;                // optional: without it k is never split
};

// How a launch divides the work: k_splits CTAs share each 128-row x (up to) 64-token tile,
// each summing a contiguous range of 256-value k stages; the last to finish adds the partial
// sums in split order.
struct GemmDqPlan {
  int k_splits = 1;  // 1..kGemmDqMaxSplits
};

// The plan gemm_dq uses: enough CTAs for the SMs, within what the workspace holds.
GemmDqPlan gemm_dq_plan(const GemmDqParams& p);

// Whether gemm_dq handles this matrix: a supported quantized type, cols a multiple of 256.
bool gemm_dq_supports(const DeviceMatrix& w);

// Raises the kernels' shared-memory limit (> 48 KB) on the current device. Call once at set-up,
// outside graph capture; gemm_dq does it itself when it is not capturing.
void gemm_dq_init();

void gemm_dq(const GemmDqParams& p, cudaStream_t stream);
void gemm_dq(const GemmDqParams& p, const GemmDqPlan& plan, cudaStream_t stream);

}  // namespace tpnode::cuda
