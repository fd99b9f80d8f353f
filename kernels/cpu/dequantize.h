// Row dequantization of every weight type, bit-exact with gguf-py's reference (the same
// float32 operations in the same order, no fused multiply-add).
#pragma once

#include <cstdint>

#include "node/model/tensor_type.h"

namespace tpnode::cpu {

// Dequantizes n elements (a multiple of the type's block size) from src into dst.
void dequantize_row(TensorType type, const void* src, float* dst, int64_t n);

}  // namespace tpnode::cpu
