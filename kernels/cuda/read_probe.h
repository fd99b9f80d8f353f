// Pure-read probe kernels: they load a device buffer with a chosen access pattern and do
// nothing with the bytes but fold them into a register, so that timing them separates the
// cost of a memory-bound kernel's access pattern from the cost of its arithmetic. Used by
// `tpnode bench-gemv` to explain the batch-1 GEMVs' bandwidth.
//
// Each kernel folds every 16-byte word it reads into two 64-bit values: the XOR and the sum
// (mod 2^64) of the word's two halves. In checksum mode these are reduced into sink[0]
// (atomicXor) and sink[1] (atomicAdd), both order-independent, so a test can check that
// every byte was read exactly once; otherwise the only store is one that never happens in
// practice (its condition depends on the data), which keeps the loads alive.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

namespace tpnode::cuda {

struct ReadProbeBuffer {
  const uint8_t* data = nullptr;  // [bytes], 16-byte aligned
  size_t bytes = 0;               // a multiple of 16
  uint64_t* sink = nullptr;       // [2] device words: {xor, sum}; never null
  bool checksum = false;          // reduce into sink (the caller zeroes it first)
};

// The whole GPU sweeps contiguous addresses, as a device copy does: `ctas` CTAs of 256
// threads (0: 4 per SM), grid-stride over 16-byte words, 4 loads in flight per thread.
struct ReadSweepShape {
  int ctas = 0;
};
void read_sweep(const ReadProbeBuffer& buf, const ReadSweepShape& shape, cudaStream_t stream);

// The buffer seen as `rows` rows of `row_bytes` (rows * row_bytes == bytes), read with the
// geometry of the batch-1 GEMV (gemv_group): CTAs of 4 warps; `warps_per_row` warps (1 or 4)
// share a row, each group of them owns `rows_per_warp` consecutive rows (1 or 2; or 4 with one
// warp per row, as the pipelined Q6_K GEMV, which spills a few registers at 8 items per lane),
// CTA c owning rows from c * rows_per_cta on. A row's lanes read 16-byte items
// t*16 + i*lanes*16 (t the lane within the row's lanes), `items_per_lane` (1, 2, 4 or 8) of
// each row issued before any is used.
struct ReadRowsShape {
  int64_t rows = 0;
  int64_t row_bytes = 0;  // a multiple of 16
  int rows_per_warp = 1;
  int warps_per_row = 1;
  int items_per_lane = 2;
};
int64_t read_rows_per_cta(const ReadRowsShape& shape);

// Rows in their natural layout: each group of warps walks its own rows.
void read_rows(const ReadProbeBuffer& buf, const ReadRowsShape& shape, cudaStream_t stream);

// The same loads per warp and lane, over a "k-major tiled" layout: the rows of one CTA are
// stored chunk-interleaved (chunk i of each of its rows, then chunk i+1, ...; a chunk being
// one step of the row's lanes), so the CTA's warps read one contiguous span per step. With
// warps_per_row = 4 a CTA owns one row and both layouts coincide.
void read_rows_interleaved(const ReadProbeBuffer& buf, const ReadRowsShape& shape,
                           cudaStream_t stream);

}  // namespace tpnode::cuda
