// Random weights generated on the device (benchmarks of shapes without a file): a 70B
// model in BF16 never passes through host memory.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/cuda/quant_layout.h"

namespace tpnode::cuda {

struct SynthParams {
  TensorType type = TensorType::kBF16;
  int64_t rows = 0;
  int64_t cols = 0;
  uint64_t seed = 0;
  uint8_t* out = nullptr;  // split_matrix_bytes(type, rows, cols)
};
// Values of scale ~1/sqrt(cols); quantized blocks get sane scales and mins.
void synth_matrix(const SynthParams& p, cudaStream_t stream);

struct FillParams {
  float* out = nullptr;
  int64_t n = 0;
  float value = 0.0f;
};
void fill(const FillParams& p, cudaStream_t stream);

}  // namespace tpnode::cuda
