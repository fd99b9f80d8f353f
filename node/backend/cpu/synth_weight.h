// Random weights written straight into memory, for shapes that have no model file.
// Float types get N(0, 1/sqrt(cols)); quantized types get random quants and block scales
// chosen so the dequantized values have about that spread and zero mean.
#pragma once

#include <cstdint>

#include "kernels/cpu/thread_pool.h"
#include "node/model/tensor_type.h"

namespace tpnode {

struct SynthSpec {
  TensorType type = TensorType::kF32;
  int64_t rows = 0;
  int64_t cols = 0;  // a multiple of the type's block size
  uint64_t seed = 0;
};

// Fills dst [rows, row_bytes(type, cols)] packed. Each row draws from its own stream, so
// the result depends only on the spec, not on the thread count.
void synth_fill(const SynthSpec& spec, void* dst, cpu::ThreadPool& pool);

}  // namespace tpnode
