// Row lookup shared by the batch-1 GEMV kernels: the rows of a GemvGroupParams group (up to
// kMaxGemvGroup matrices sharing x, e.g. q/k/v) are counted one after the other.
#pragma once

#include <cstdint>

#include "kernels/cuda/gemv.h"

namespace tpnode::cuda {

struct RowRef {
  const uint8_t* q;  // the row's quant bytes
  const uint8_t* s;  // its scale bytes (null without a scale region)
  float* y;          // its output
};

// The matrix (of n) that group row `row` falls in; `row` becomes the row within it.
__device__ __forceinline__ int group_part(const GemvOut* outs, int n, int64_t& row) {
  int part = 0;
#pragma unroll
  for (int i = 0; i + 1 < kMaxGemvGroup; ++i) {
    if (part + 1 < n && row >= outs[part].w.rows) {
      row -= outs[part].w.rows;
      ++part;
    }
  }
  return part;
}

// A warp's place in its walk over row groups (the pipelined GEMVs): group g, step `it` of a
// row's `iters`; after a row's last step the walk moves `stride` groups on.
struct WalkStep {
  int64_t g;
  int it;
};
__device__ __forceinline__ WalkStep next_walk_step(WalkStep w, int iters, int64_t stride) {
  return w.it + 1 == iters ? WalkStep{w.g + stride, 0} : WalkStep{w.g, w.it + 1};
}

__device__ __forceinline__ RowRef group_row(const GemvGroupParams& p, int64_t row) {
  const GemvOut& o = p.outs[group_part(p.outs, p.n, row)];
  return {o.w.q + row * o.w.q_row_bytes, o.w.s ? o.w.s + row * o.w.s_row_bytes : nullptr,
          o.y + row};
}

}  // namespace tpnode::cuda
