// Runtime values -> compile-time constants in one place; an unsupported value throws.
#pragma once

#include "node/common/error.h"
#include "kernels/cuda/quant_layout.h"
#include "node/model/tensor_type.h"

// Runs the braced body with `T` bound to the constexpr TensorType of a quantized type.
#define TPNODE_DISPATCH_QUANT_TYPE(type, T, ...)                                          \
  switch (type) {                                                                         \
    case ::tpnode::TensorType::kQ4_0: { constexpr auto T = ::tpnode::TensorType::kQ4_0; __VA_ARGS__ } break; \
    case ::tpnode::TensorType::kQ4_1: { constexpr auto T = ::tpnode::TensorType::kQ4_1; __VA_ARGS__ } break; \
    case ::tpnode::TensorType::kQ5_0: { constexpr auto T = ::tpnode::TensorType::kQ5_0; __VA_ARGS__ } break; \
    case ::tpnode::TensorType::kQ5_1: { constexpr auto T = ::tpnode::TensorType::kQ5_1; __VA_ARGS__ } break; \
    case ::tpnode::TensorType::kQ8_0: { constexpr auto T = ::tpnode::TensorType::kQ8_0; __VA_ARGS__ } break; \
    case ::tpnode::TensorType::kQ4_K: { constexpr auto T = ::tpnode::TensorType::kQ4_K; __VA_ARGS__ } break; \
    case ::tpnode::TensorType::kQ5_K: { constexpr auto T = ::tpnode::TensorType::kQ5_K; __VA_ARGS__ } break; \
    case ::tpnode::TensorType::kQ6_K: { constexpr auto T = ::tpnode::TensorType::kQ6_K; __VA_ARGS__ } break; \
    default:                                                                              \
      TPNODE_THROW(::tpnode::ErrorKind::kUnsupported, "no CUDA kernel for weight type {}",  \
                   ::tpnode::cuda::weight_type_label(type));                                            \
  }

#define TPNODE_DISPATCH_FLOAT_TYPE(type, T, ...)                                          \
  switch (type) {                                                                         \
    case ::tpnode::TensorType::kF32: { constexpr auto T = ::tpnode::TensorType::kF32; __VA_ARGS__ } break; \
    case ::tpnode::TensorType::kF16: { constexpr auto T = ::tpnode::TensorType::kF16; __VA_ARGS__ } break; \
    case ::tpnode::TensorType::kBF16: { constexpr auto T = ::tpnode::TensorType::kBF16; __VA_ARGS__ } break; \
    default:                                                                              \
      TPNODE_THROW(::tpnode::ErrorKind::kUnsupported, "not a float weight type: {}",        \
                   ::tpnode::cuda::weight_type_label(type));                                            \
  }

// Batch columns of the GEMV kernels: the smallest instantiated count >= m.
#define TPNODE_DISPATCH_GEMV_COLS(m, NC, ...)                                             \
  if ((m) <= 1) { constexpr int NC = 1; __VA_ARGS__ }                                      \
  else if ((m) <= 2) { constexpr int NC = 2; __VA_ARGS__ }                                 \
  else if ((m) <= 4) { constexpr int NC = 4; __VA_ARGS__ }                                 \
  else if ((m) <= 8) { constexpr int NC = 8; __VA_ARGS__ }                                 \
  else if ((m) <= 16) { constexpr int NC = 16; __VA_ARGS__ }                               \
  else { TPNODE_THROW(::tpnode::ErrorKind::kUnsupported, "GEMV batch {} > 16", (m)); }
