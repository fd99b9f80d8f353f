// Quantized GEMM for decode batches y[m, rows] = x[m, cols] · Wᵀ with W dequantized to BF16 inside
// the kernel (BF16 x BF16 -> F32 on tensor cores: warpgroup MMAs, wgmma, where the build has
// sm_90a; mma.sync m16n8k16 elsewhere): every weight byte is read from memory once per 64
// batch rows and its dequantization is shared by all of them, so the cost per step is the
// weight bytes plus the tensor-core work, not a BF16 copy of the weights.
// W in the split layout (quant_layout.h) of Q4_K, Q6_K, Q5_K, Q8_0, Q4_0, Q4_1, Q5_0 or Q5_1;
// x BF16 in gemm_dq_acts' layout. Results are bitwise repeatable for a given plan: fixed
// summation order, no float atomics.
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

// The activation layout gemm_dq reads: BF16 as [cols / 256 stages][ceil(m / 8) groups of 8
// tokens][32 pieces][8 tokens][8 values], tokens past m zero. Piece j of a stage holds 8 values
// of its 32-value chunk j / 4 in the order the MMA fragments take them: values 2i, 2i+1,
// 2i+8, 2i+9, 2i+16, 2i+17, 2i+24, 2i+25 with i = j % 4. So one stage of a token tile is one
// contiguous block that lands in shared memory as the 8x8 core matrices a tensor-core operand
// is made of (one bulk copy per stage).
inline constexpr int kGemmDqChunk = 32;
inline int gemm_dq_chunk_source(int pos) {  // which value of its chunk position pos holds
  const int j = pos / 8, i = pos % 8;
  return 8 * (i / 2) + 2 * j + (i % 2);
}
// Where value c of token n of [m, cols] lands in that layout (an element index).
__host__ __device__ inline int64_t gemm_dq_act_index(int64_t m, int64_t n, int64_t c) {
  const int64_t groups = (m + 7) / 8, st = c / 256, cc = c % 256, r = cc % 32;
  const int64_t j = cc / 32 * 4 + r % 8 / 2, i = 2 * (r / 8) + r % 2;
  return (((st * groups + n / 8) * 32 + j) * 8 + n % 8) * 8 + i;
}
inline int64_t gemm_dq_acts_elems(int64_t m, int64_t cols) { return (m + 7) / 8 * 8 * cols; }

struct GemmDqActsParams {
  const float* x = nullptr;     // [m, cols]
  __nv_bfloat16* y = nullptr;   // gemm_dq_acts_elems(m, cols), 16-byte aligned
  int64_t m = 0;
  int64_t cols = 0;             // a multiple of 256
};
// Rounds x to BF16 (nearest even) into the layout above.
void gemm_dq_acts(const GemmDqActsParams& p, cudaStream_t stream);

struct GemmDqParams {
  DeviceMatrix w;                    // [rows, cols], quantized (gemm_dq_supports)
  const __nv_bfloat16* x = nullptr;  // gemm_dq_acts' layout of [m, cols], 16-byte aligned
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
