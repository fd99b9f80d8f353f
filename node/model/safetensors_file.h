// safetensors header parser over a byte span: 8-byte little-endian header length, a JSON
// header of {name: {dtype, shape, data_offsets}}, then the data section. Every length and
// offset is checked against the bytes present before use.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "node/model/tensor_type.h"

namespace tpnode {

// A header larger than this is hostile (real ones are well under 1 MB per shard).
inline constexpr uint64_t kSafetensorsMaxHeaderBytes = uint64_t{100} << 20;

struct SafetensorsTensor {
  std::string name;
  std::string dtype;               // as written: "F32", "BF16", "I64", ...
  std::optional<TensorType> type;  // nullopt for dtypes we do not load (only F32, F16, BF16)
  std::vector<int64_t> shape;      // row-major: shape.back() is contiguous (Hugging Face order)
  uint64_t begin = 0;              // byte range [begin, end) within the data section
  uint64_t end = 0;
};

struct SafetensorsHeader {
  uint64_t data_offset = 0;                // absolute start of the data section: 8 + header length
  std::vector<SafetensorsTensor> tensors;  // in header order
};

// Throws tpnode::Error naming `source` and the problem: header length past the file or
// above the cap, malformed JSON, unknown dtype, offsets outside the data section, a byte
// range that does not match shape * dtype size. __metadata__ is ignored.
SafetensorsHeader parse_safetensors(std::span<const uint8_t> bytes, const std::string& source);

}  // namespace tpnode
