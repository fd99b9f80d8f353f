// Decode matrix-vector products y[m, rows] = x[m, cols] · Wᵀ for small batches (m <= 16):
// every weight byte is read once for all m columns. Quantized W uses 8-bit activations
// (quantize_acts) and dp4a; F32/F16/BF16 W uses F32 activations.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/cuda/quant_layout.h"

namespace tpnode::cuda {

inline constexpr int64_t kGemvMaxBatch = 16;

// x quantized in chunks of 32: q [m][k] int8, d and s [m][k/32] (s = d * sum(q)).
struct QuantActs {
  int8_t* q = nullptr;
  float* d = nullptr;
  float* s = nullptr;
};

struct QuantizeActsParams {
  const float* x = nullptr;  // [m, k]
  int64_t m = 0;
  int64_t k = 0;             // a multiple of 32
  QuantActs out;
};
void quantize_acts(const QuantizeActsParams& p, cudaStream_t stream);

struct GemvParams {
  DeviceMatrix w;            // [rows, cols]
  const float* x = nullptr;  // [m, cols], for float W
  QuantActs xq;              // for quantized W
  float* y = nullptr;        // [m, rows]
  int64_t m = 0;             // 1..kGemvMaxBatch
};
void gemv(const GemvParams& p, cudaStream_t stream);
// The quantized path for m >= 2 (gemv_mma.cu); gemv() dispatches to it.
void gemv_mma(const GemvParams& p, cudaStream_t stream);

// Whether gemv() handles this matrix (float W needs cols % 8 == 0).
bool gemv_supports(const DeviceMatrix& w);

}  // namespace tpnode::cuda
