// y[m, n] = x[m, k] · Wᵀ for W [n, k] in any supported weight type.
// Quantized W: x rows are first quantized to 8-bit blocks (Q8_0 for the 32-blocks, Q8_K for
// the K-quants) and dotted with integer arithmetic, as ggml does. F32/F16/BF16 W: float dot.
// AVX2/FMA paths are chosen at run time when the CPU has them; a scalar path otherwise.
#pragma once

#include <cstddef>
#include <cstdint>

#include "kernels/cpu/thread_pool.h"
#include "node/model/tensor_type.h"

namespace tpnode::cpu {

struct MatmulArgs {
  TensorType w_type = TensorType::kF32;
  const void* w = nullptr;  // [n, k]
  size_t w_row_stride = 0;  // bytes between rows of W
  int64_t n = 0;            // output features (rows of W)
  int64_t k = 0;            // input features; a multiple of the type's block size
  const float* x = nullptr; // [m, k] row-major
  int64_t m = 0;
  float* y = nullptr;       // [m, n] row-major
  // Quantized W only: dequantize W rows and dot them with the F32 x, without rounding x to
  // 8 bits. Slower; for comparisons that must not see activation rounding (tensor-parallel
  // vs single-rank logits).
  bool exact = false;
};

void matmul(const MatmulArgs& args, ThreadPool& pool);

// Whether the AVX2/FMA paths are in use (reported by `tpnode generate` / bench).
bool cpu_has_avx2();

// The instruction set matmul uses on this CPU: "avx512vnni", "avx2" or "scalar".
const char* cpu_matmul_isa();

}  // namespace tpnode::cpu
