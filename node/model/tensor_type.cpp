#include "node/model/tensor_type.h"

#include <algorithm>
#include <array>

#include "kernels/cpu/dequantize.h"
#include "kernels/cpu/quants.h"
#include "node/common/error.h"

namespace tpnode {
namespace {

constexpr TypeTraits make_traits(TensorType t, std::string_view name) {
  const cpu::BlockGeometry g = cpu::block_geometry(t);
  return TypeTraits{name, g.block_size, g.block_bytes, g.block_size > 1};
}

// Every weight type we load; the activation-only Q8_1 / Q8_K are deliberately absent.
constexpr std::array<std::pair<TensorType, TypeTraits>, 11> kTraits{{
    {TensorType::kF32, make_traits(TensorType::kF32, "F32")},
    {TensorType::kF16, make_traits(TensorType::kF16, "F16")},
    {TensorType::kBF16, make_traits(TensorType::kBF16, "BF16")},
    {TensorType::kQ8_0, make_traits(TensorType::kQ8_0, "Q8_0")},
    {TensorType::kQ4_0, make_traits(TensorType::kQ4_0, "Q4_0")},
    {TensorType::kQ4_1, make_traits(TensorType::kQ4_1, "Q4_1")},
    {TensorType::kQ5_0, make_traits(TensorType::kQ5_0, "Q5_0")},
    {TensorType::kQ5_1, make_traits(TensorType::kQ5_1, "Q5_1")},
    {TensorType::kQ4_K, make_traits(TensorType::kQ4_K, "Q4_K")},
    {TensorType::kQ5_K, make_traits(TensorType::kQ5_K, "Q5_K")},
    {TensorType::kQ6_K, make_traits(TensorType::kQ6_K, "Q6_K")},
}};

const TypeTraits* find_traits(TensorType type) {
  for (const auto& [t, traits] : kTraits) {
    if (t == type) return &traits;
  }
  return nullptr;
}

}  // namespace

const TypeTraits& type_traits(TensorType type) {
  const TypeTraits* traits = find_traits(type);
  TPNODE_CHECK_KIND(traits != nullptr, ErrorKind::kUnsupported,
                    "tensor type {} ({}) is not a supported weight type", type_name(type),
                    static_cast<uint32_t>(type));
  return *traits;
}

std::optional<TensorType> tensor_type_from_gguf(uint32_t raw) {
  const auto type = static_cast<TensorType>(raw);
  if (find_traits(type) == nullptr) return std::nullopt;
  return type;
}

std::string_view type_name(TensorType type) {
  if (const TypeTraits* traits = find_traits(type)) return traits->name;
  switch (type) {
    case TensorType::kQ8_1: return "Q8_1";
    case TensorType::kQ8_K: return "Q8_K";
    default: return "unknown";
  }
}

std::optional<TensorType> tensor_type_from_name(std::string_view name) {
  auto lower = [](char c) { return (c >= 'A' && c <= 'Z') ? static_cast<char>(c - 'A' + 'a') : c; };
  for (const auto& [t, traits] : kTraits) {
    if (std::ranges::equal(traits.name, name, {}, lower, lower)) return t;
  }
  return std::nullopt;
}

size_t row_bytes(TensorType type, int64_t n) {
  const TypeTraits& traits = type_traits(type);
  TPNODE_CHECK(n >= 0 && n % traits.block_size == 0,
               "row of {} elements is not a multiple of the {} block size {}", n, traits.name,
               traits.block_size);
  return static_cast<size_t>(n / traits.block_size) * traits.block_bytes;
}

void dequantize_row(TensorType type, const void* src, float* dst, int64_t n) {
  const TypeTraits& traits = type_traits(type);
  TPNODE_CHECK(n >= 0 && n % traits.block_size == 0,
               "dequantize_row: {} elements is not a multiple of the {} block size {}", n,
               traits.name, traits.block_size);
  cpu::dequantize_row(type, src, dst, n);
}

}  // namespace tpnode
