// Decode GEMVs over float weights (F32, F16, BF16 W; F32 x and y): y_i[m, rows_i] =
// x[m, cols] · W_iᵀ for up to kMaxGemvGroup matrices of one type and width that share x
// (q/k/v, gate/up), in one launch. Every weight byte is read once for all m columns.
//
// Two kernels:
// - pipelined (m <= kFloatGemvBestBatch): a grid of exactly the resident CTAs whose warps
//   walk their row groups step after step, issuing the next step's 16-byte weight loads
//   before the current step's dot products, so that loads are always in flight;
// - one warp per row (any m <= kGemvMaxBatch): a grid over the rows; each lane loads U items,
//   then uses them.
// Both sum a row in a fixed order: the same inputs give the same bits on every run.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <vector>

#include "kernels/cuda/gemv.h"  // GemvOut, GemvGeometry, kMaxGemvGroup, kFloatGemvBestBatch
#include "kernels/cuda/quant_layout.h"

namespace tpnode::cuda {

struct GemvFloatGroupParams {
  GemvOut outs[kMaxGemvGroup];  // outs[i].w [rows_i, cols]; outs[i].y [m, rows_i]
  int n = 0;
  int64_t cols = 0;             // a multiple of 8
  int64_t total_rows = 0;       // sum of outs[i].w.rows
  const float* x = nullptr;     // [m, cols], 16-byte aligned
  int64_t m = 0;                // 1..kGemvMaxBatch; pipelined geometries 1..kFloatGemvBestBatch
};

// The one-warp-per-row kernel's geometry at batch m (its items per lane depend on m).
GemvGeometry gemv_float_rowwise_geometry(int64_t m);
// The default for this group: a pipelined geometry for m <= kFloatGemvBestBatch, the
// one-warp-per-row kernel above.
GemvGeometry gemv_float_group_geometry(const GemvFloatGroupParams& p);
// Every geometry compiled for batch m (the same for the three float types): the
// one-warp-per-row kernel first, then the pipelined ones where m <= kFloatGemvBestBatch.
std::vector<GemvGeometry> gemv_float_group_geometries(int64_t m);

// No host synchronisation; capturable in a CUDA graph; launched with PDL (the pipelined
// kernel loads its first weights before waiting for the kernel that writes x). Throws a
// tpnode::Error for a group that does not fit (types, widths, row counts, alignment, batch)
// or a geometry not compiled for it.
void gemv_float_group(const GemvFloatGroupParams& p, const GemvGeometry& g, cudaStream_t stream);
void gemv_float_group(const GemvFloatGroupParams& p, cudaStream_t stream);

// The group over mats[0..n) (one float type and width) whose outputs follow each other from
// y: [m, mats[0].rows] first, then [m, mats[1].rows], ...
GemvFloatGroupParams stacked_gemv_float_group(const DeviceMatrix* mats, int n, const float* x,
                                              int64_t m, float* y);

// gemv() for float W: one matrix, the default geometry.
void gemv_float(const GemvParams& p, cudaStream_t stream);

// Whether the float kernels take this matrix (a float type, cols a multiple of 8).
bool gemv_float_supports(const DeviceMatrix& w);

}  // namespace tpnode::cuda
