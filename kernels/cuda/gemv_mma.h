// Quantized matrix products y[m, rows] = x[m, cols] · Wᵀ for batches m = 2..kGemvMmaMaxBatch on
// int8 tensor cores (mma.sync m16n8k32): every weight byte is read once for all m columns.
// x comes as 8-bit chunks of 32 (quantize_acts, gemv.h QuantActs); W in the split layout
// (quant_layout.h) of Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K or Q6_K. Results are bitwise
// repeatable for a given plan: fixed summation order, no atomics.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "node/model/tensor_type.h"

namespace tpnode::cuda {

struct GemvParams;  // gemv.h

inline constexpr int64_t kGemvMmaMaxBatch = 64;

// How a launch divides the work. A CTA of 4 warps owns 64 * row_tiles_per_warp rows of W; the
// k axis is split over k_splits CTAs of one thread-block cluster (sm_90), which add their
// partial sums in rank order through distributed shared memory.
struct GemvMmaPlan {
  int row_tiles_per_warp = 1;  // 16-row tiles per warp: 1 or 2
  int k_splits = 1;            // 1, 2, 4 or 8; > 1 needs compute capability 9.0
};

// The plan gemv_mma uses for this shape on the current device: enough CTAs to fill the SMs.
GemvMmaPlan gemv_mma_plan(const GemvParams& p);

// The weight types whose 256-value blocks gemv_mma can add up in integers before converting
// them, given activations quantized in groups of 256 (QuantActs::group).
constexpr bool gemv_mma_block_type(TensorType t) {
  return t == TensorType::kQ4_K || t == TensorType::kQ5_K || t == TensorType::kQ6_K;
}

// Whether gemv_mma adds each 256-value block's chunk products in integers before converting
// them (a gemv_mma_block_type with activations in groups of 256): one conversion per block
// instead of per chunk, for batches where the tensor cores, not the weight reads, would
// otherwise wait on the scale arithmetic.
bool gemv_mma_block_accumulates(const GemvParams& p);

// Needs a quantized p.w, p.m in 2..kGemvMmaMaxBatch, p.xq from quantize_acts (16-byte aligned).
void gemv_mma(const GemvParams& p, cudaStream_t stream);
void gemv_mma(const GemvParams& p, const GemvMmaPlan& plan, cudaStream_t stream);

}  // namespace tpnode::cuda
