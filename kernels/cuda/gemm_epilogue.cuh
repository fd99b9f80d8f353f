// The epilogue of the tensor-core GEMMs of decode batches (gemm_dq, gemm_kq): a warp holds a
// 16-row tile of the output in MMA fragments, NB n-tiles of 4 values per lane (lane: g =
// lane / 4 rows g and g + 8, t = lane % 4 tokens 2t and 2t + 1 of each n-tile).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace tpnode::cuda {

// Where a tile goes: y [m, ldy], columns [0, rows) written.
struct TileOut {
  float* y;
  int64_t ldy;
  int64_t rows;
  int m;
};

// Writes the warp's 16-row tile: rows row_base + g (+8), tokens tok0 + 8nt + 2t (+1), those
// inside the matrix and the batch.
template <int NB>
__device__ __forceinline__ void store_tile(const TileOut& out, const float (&v)[NB][4],
                                           int64_t row_base, int tok0) {
  const int lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
#pragma unroll
  for (int nt = 0; nt < NB; ++nt) {
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int64_t row = row_base + g + 8 * (i >> 1);
      const int tok = tok0 + nt * 8 + 2 * t + (i & 1);
      if (row < out.rows && tok < out.m) out.y[tok * out.ldy + row] = v[nt][i];
    }
  }
}

// Parts of one output tile computed by several CTAs (k splits, or the segments of a tile that
// a stream-K launch spread over CTAs): every CTA leaves its values at slot(own) (the lane's
// place in its part: values 32 floats apart, coalesced) and the last to arrive on the tile's
// counter adds the n parts in part order (its own from registers, bitwise the same) into
// `sum`. Returns whether this CTA is that last one (the caller then stores `sum` and resets
// the counter). Every thread of the CTA must call it; s_last is a __shared__ int of the kernel.
template <int NB, typename SlotOf>
__device__ __forceinline__ bool sum_parts(const float (&v)[NB][4], SlotOf slot, int own, int n,
                                          unsigned* counter, int& s_last, float (&sum)[NB][4]) {
  float* mine = slot(own);
#pragma unroll
  for (int nt = 0; nt < NB; ++nt) {
#pragma unroll
    for (int i = 0; i < 4; ++i) mine[(nt * 4 + i) * 32] = v[nt][i];
  }
  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0) {
    const unsigned prev = atomicAdd(counter, 1u);
    s_last = prev == static_cast<unsigned>(n - 1);
  }
  __syncthreads();
  if (!s_last) return false;
  __threadfence();
#pragma unroll
  for (int nt = 0; nt < NB; ++nt) {
#pragma unroll
    for (int i = 0; i < 4; ++i) sum[nt][i] = 0.0f;
  }
#pragma unroll 1
  for (int s = 0; s < n; ++s) {
    const float* src = slot(s);
#pragma unroll
    for (int nt = 0; nt < NB; ++nt) {
#pragma unroll
      for (int i = 0; i < 4; ++i)
        sum[nt][i] += s == own ? v[nt][i] : __ldcg(src + (nt * 4 + i) * 32);
    }
  }
  return true;
}

// The k split: split s of the tile leaves its part at part + s * split_floats (`part`: the
// lane's slot of split 0).
template <int NB>
__device__ __forceinline__ bool sum_splits(const float (&v)[NB][4], float* part,
                                           int64_t split_floats, int split, int splits,
                                           unsigned* counter, int& s_last, float (&sum)[NB][4]) {
  return sum_parts<NB>(v, [&](int s) { return part + s * split_floats; }, split, splits, counter,
                       s_last, sum);
}

}  // namespace tpnode::cuda
