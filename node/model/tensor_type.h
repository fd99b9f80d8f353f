// Tensor element types as GGUF numbers them, with block geometry and dequantization.
// Quantized types store a row as consecutive blocks along the row (the inner dimension).
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string_view>

namespace tpnode {

enum class TensorType : uint32_t {
  kF32 = 0,
  kF16 = 1,
  kQ4_0 = 2,
  kQ4_1 = 3,
  kQ5_0 = 6,
  kQ5_1 = 7,
  kQ8_0 = 8,
  kQ8_1 = 9,  // activation-side only, never a weight type we load
  kQ4_K = 12,
  kQ5_K = 13,
  kQ6_K = 14,
  kQ8_K = 15,  // activation-side only
  kBF16 = 30,
};

struct TypeTraits {
  std::string_view name;
  int64_t block_size;   // elements per block (1 for plain floats)
  size_t block_bytes;   // bytes per block
  bool quantized;
};

// Traits of a supported type; throws tpnode::Error for the activation-only types.
const TypeTraits& type_traits(TensorType type);

// Maps a raw GGUF type number to a supported weight type; nullopt when unsupported.
std::optional<TensorType> tensor_type_from_gguf(uint32_t raw);

std::string_view type_name(TensorType type);

// The weight type named `name` as type_name spells it, in any case ("q4_1", "BF16"); nullopt
// when no supported weight type has that name.
std::optional<TensorType> tensor_type_from_name(std::string_view name);

// Bytes of a row of n elements; throws when n is not a multiple of the block size.
size_t row_bytes(TensorType type, int64_t n);

// Dequantizes n elements (a multiple of the block size) from src into dst.
// Bit-exact with gguf-py's reference dequantization.
void dequantize_row(TensorType type, const void* src, float* dst, int64_t n);

}  // namespace tpnode
