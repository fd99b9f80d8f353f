// The per-type kernels behind cpu::matmul: what x is turned into for a weight type, and
// functions that compute y for a range of W's rows against every row of x.
#pragma once

#include <cstddef>
#include <cstdint>

#include "node/model/tensor_type.h"

namespace tpnode::cpu {

// The form x takes before the dot products.
enum class ActFormat {
  kF32,  // plain floats (F32/F16/BF16 weights)
  kQ8A,  // BlockQ8A per 32 elements (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0)
  kQ8K,  // BlockQ8K per 256 elements (Q4_K, Q5_K, Q6_K)
};

ActFormat act_format(TensorType w_type);
// Bytes of one row of k elements of x in `format` (k a multiple of its block size).
size_t act_row_bytes(ActFormat format, int64_t k);
// Converts one row of k floats into `format` (a copy for kF32).
void quantize_act_row(ActFormat format, const float* x, void* dst, int64_t k);
// The same with AVX2, bit-identical output. Only call when the CPU has AVX2/FMA/F16C.
void avx2_quantize_act_row(ActFormat format, const float* x, void* dst, int64_t k);

struct GemmTask {
  const uint8_t* w = nullptr;  // [n, k] in the weight type
  size_t w_stride = 0;         // bytes between rows of W
  int64_t k = 0;
  const uint8_t* x = nullptr;  // [m] rows in act_format(w_type)
  size_t x_stride = 0;         // bytes between rows of x
  int64_t m = 0;
  float* y = nullptr;          // y[i * ldy + j]
  int64_t ldy = 0;
};

// Computes y[:, r0:r1] = x · W[r0:r1]ᵀ. Every y element is computed the same way whatever
// the row range, the number of rows of x or its position among them.
using GemmRowsFn = void (*)(const GemmTask& task, int64_t r0, int64_t r1);

// Kernels for every weight type, portable code.
GemmRowsFn scalar_gemm_rows(TensorType w_type);
// AVX2/FMA kernels; nullptr for the types that have none (they use the scalar one).
// Only call when the CPU has AVX2 and FMA.
GemmRowsFn avx2_gemm_rows(TensorType w_type);
// The AVX2 kernels with AVX512-VNNI byte dot products (bit-identical results to
// avx2_gemm_rows). Only call when the CPU also has AVX512VL and AVX512-VNNI.
GemmRowsFn vnni_gemm_rows(TensorType w_type);

}  // namespace tpnode::cpu
