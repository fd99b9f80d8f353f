// Small elementwise kernels over F32 activations, and the 16-bit float conversions the CPU
// backend uses for F16/BF16 vectors and an F16 KV cache.
#pragma once

#include <cstdint>

#include "kernels/cpu/thread_pool.h"

namespace tpnode::cpu {

// IEEE half <-> float, round to nearest even; NaN and infinities preserved.
float fp16_to_f32(uint16_t h);
uint16_t f32_to_fp16(float f);
// bfloat16 is the top half of a float.
float bf16_to_f32(uint16_t b);

void fp16_to_f32_row(const uint16_t* src, float* dst, int64_t n);
void f32_to_fp16_row(const float* src, uint16_t* dst, int64_t n);
void bf16_to_f32_row(const uint16_t* src, float* dst, int64_t n);

// out[i] = x[i] + y[i], i < n (out may be x)
void add(const float* x, const float* y, float* out, int64_t n, ThreadPool& pool);
// y[r, c] += b[c]   y: [m, n], b: [n]
void add_bias(float* y, const float* b, int64_t m, int64_t n, ThreadPool& pool);
// out[j, :] = x[rows[j], :]   x: [*, row_len], out: [n_rows, row_len]; rows already checked
void gather_rows(const float* x, const int32_t* rows, int64_t n_rows, int64_t row_len, float* out);

}  // namespace tpnode::cpu
