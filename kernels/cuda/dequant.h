// Weight rows as floats: BF16 staging for cuBLASLt GEMMs, F32 rows for the embedding.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/cuda/quant_layout.h"

namespace tpnode::cuda {

struct DequantParams {
  DeviceMatrix w;                  // [rows, cols]
  int64_t row0 = 0;                // first row to convert
  int64_t rows = 0;                // rows to convert
  __nv_bfloat16* out = nullptr;    // [rows, cols]
};
void dequant_to_bf16(const DequantParams& p, cudaStream_t stream);

// x[i, :] = table[ids[i], :] as F32. An id -1 - j < 0 stands for chained[j] (a token the
// previous step drew on the device). Ids outside [0, rows) give a row of zeros.
struct GatherRowsParams {
  DeviceMatrix table;              // [rows, cols]
  const int32_t* ids = nullptr;    // [n] device
  const int32_t* chained = nullptr;  // device, or null: negative ids then give zeros
  int64_t n = 0;
  float* out = nullptr;            // [n, cols]
};
void gather_weight_rows(const GatherRowsParams& p, cudaStream_t stream);

struct ToBf16Params {
  const float* x = nullptr;        // [n]
  __nv_bfloat16* y = nullptr;      // [n]
  int64_t n = 0;
};
void f32_to_bf16(const ToBf16Params& p, cudaStream_t stream);

}  // namespace tpnode::cuda
