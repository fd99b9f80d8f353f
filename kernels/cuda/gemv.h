// Decode matrix-vector products y[m, rows] = x[m, cols] · Wᵀ for small batches (m <= 16):
// every weight byte is read once for all m columns. Quantized W uses 8-bit activations
// (quantize_acts) and dp4a; F32/F16/BF16 W uses F32 activations.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/cuda/gemv_mma.h"  // gemv_mma: the quantized path for m >= 2
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
  int64_t m = 0;             // 1..kGemvMaxBatch (float W), 1..kGemvMmaMaxBatch (quantized W)
};
void gemv(const GemvParams& p, cudaStream_t stream);

// m = 1 against several quantized matrices of one type and width that share x (q/k/v,
// gate/up): one launch, outs[i].y[outs[i].w.rows] = x · W_iᵀ.
inline constexpr int kMaxGemvGroup = 3;
struct GemvOut {
  DeviceMatrix w;
  float* y = nullptr;
};
struct GemvGroupParams {
  GemvOut outs[kMaxGemvGroup];
  int n = 0;
  int64_t cols = 0;
  int64_t total_rows = 0;  // sum of outs[i].w.rows
  QuantActs xq;            // x quantized, [cols]
};
void gemv_group(const GemvGroupParams& p, cudaStream_t stream);
// The group over mats[0..n) (one quantized type and width, n <= kMaxGemvGroup) whose outputs
// follow each other from y: the rows of mats[0] first.
GemvGroupParams stacked_gemv_group(const DeviceMatrix* mats, int n, float* y, QuantActs xq);

// Whether gemv() handles this matrix (float W needs cols % 8 == 0).
bool gemv_supports(const DeviceMatrix& w);

}  // namespace tpnode::cuda
