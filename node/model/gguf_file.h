// GGUF v2/v3 parser over a byte span: header, typed metadata, tensor infos, data section.
// The file is hostile input: every count, length, dimension, offset and size is checked
// against the bytes remaining and against overflow before it is used or allocated for.
// Strings and packed arrays are views into the parsed bytes, which must outlive the GgufFile.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "node/model/tensor_type.h"

namespace tpnode {

inline constexpr uint32_t kGgufMagic = 0x46554747;  // "GGUF" read as little-endian u32
inline constexpr uint64_t kGgufDefaultAlignment = 32;
inline constexpr int kGgufMaxDims = 4;

enum class GgufType : uint32_t {
  kU8 = 0,
  kI8 = 1,
  kU16 = 2,
  kI16 = 3,
  kU32 = 4,
  kI32 = 5,
  kF32 = 6,
  kBool = 7,
  kString = 8,
  kArray = 9,
  kU64 = 10,
  kI64 = 11,
  kF64 = 12,
};

std::string_view gguf_type_name(GgufType type);
// Bytes of one packed element (0 for string and array, whose size varies).
size_t gguf_type_size(GgufType type);

// The GGUF type that stores a C++ value type; the typed getters accept exactly that one.
template <class T>
struct GgufTypeOf;
// clang-format off
template <> struct GgufTypeOf<uint8_t> { static constexpr GgufType value = GgufType::kU8; };
template <> struct GgufTypeOf<int8_t> { static constexpr GgufType value = GgufType::kI8; };
template <> struct GgufTypeOf<uint16_t> { static constexpr GgufType value = GgufType::kU16; };
template <> struct GgufTypeOf<int16_t> { static constexpr GgufType value = GgufType::kI16; };
template <> struct GgufTypeOf<uint32_t> { static constexpr GgufType value = GgufType::kU32; };
template <> struct GgufTypeOf<int32_t> { static constexpr GgufType value = GgufType::kI32; };
template <> struct GgufTypeOf<float> { static constexpr GgufType value = GgufType::kF32; };
template <> struct GgufTypeOf<bool> { static constexpr GgufType value = GgufType::kBool; };
template <> struct GgufTypeOf<std::string> { static constexpr GgufType value = GgufType::kString; };
template <> struct GgufTypeOf<uint64_t> { static constexpr GgufType value = GgufType::kU64; };
template <> struct GgufTypeOf<int64_t> { static constexpr GgufType value = GgufType::kI64; };
template <> struct GgufTypeOf<double> { static constexpr GgufType value = GgufType::kF64; };
// clang-format on

// One metadata value. Scalars keep their little-endian payload in `bits`; arrays keep their
// elements packed (numbers, bools), as views (strings) or parsed (nested arrays).
struct GgufValue {
  GgufType type = GgufType::kU8;
  uint64_t bits = 0;     // numbers and bools, zero-extended raw bytes
  std::string_view str;  // kString

  GgufType elem_type = GgufType::kU8;     // kArray
  uint64_t count = 0;                     // kArray: number of elements
  std::span<const uint8_t> packed;        // kArray of numbers/bools: count * size bytes
  std::vector<std::string_view> strings;  // kArray of strings
  std::vector<GgufValue> arrays;          // kArray of arrays

  bool is_integer() const;
  // The value when it is exactly T's GGUF type, else nullopt.
  template <class T>
  std::optional<T> get() const;
  // Any integer type, when it fits int64_t.
  std::optional<int64_t> get_integer() const;
  // All elements when this is an array of exactly T's GGUF type, else nullopt.
  template <class T>
  std::optional<std::vector<T>> get_array() const;
};

struct GgufTensorInfo {
  std::string name;
  std::vector<int64_t> shape;  // shape[0] is the contiguous dimension
  TensorType type = TensorType::kF32;
  uint64_t offset = 0;  // from the start of the data section
  uint64_t nbytes = 0;
};

class GgufFile {
 public:
  // Parses `bytes`; `source` (a path, or a label for memory input) names it in errors.
  // Throws tpnode::Error naming the source, the offset and what is wrong.
  static GgufFile parse(std::span<const uint8_t> bytes, std::string source);

  const std::string& source() const { return source_; }
  uint32_t version() const { return version_; }
  uint64_t alignment() const { return alignment_; }
  uint64_t data_offset() const { return data_offset_; }  // absolute start of tensor data

  // Metadata in file order.
  const std::vector<std::pair<std::string, GgufValue>>& metadata() const { return kv_; }
  const GgufValue* find(std::string_view key) const;
  bool has(std::string_view key) const { return find(key) != nullptr; }

  // Typed getters: throw naming the source and key when it is missing or of another type.
  template <class T>
  T get(std::string_view key) const;
  template <class T>
  std::optional<T> get_optional(std::string_view key) const;  // nullopt only when missing
  template <class T>
  std::vector<T> get_array(std::string_view key) const;
  // Any integer type (u8..i64) that fits int64_t.
  int64_t get_integer(std::string_view key) const;
  std::optional<int64_t> get_integer_optional(std::string_view key) const;

  const std::vector<GgufTensorInfo>& tensors() const { return tensors_; }
  const GgufTensorInfo* find_tensor(std::string_view name) const;
  // The tensor's bytes inside the parsed span (checked at parse time).
  std::span<const uint8_t> tensor_bytes(const GgufTensorInfo& t) const;

 private:
  std::string source_;
  std::span<const uint8_t> bytes_;
  uint32_t version_ = 0;
  uint64_t alignment_ = kGgufDefaultAlignment;
  uint64_t data_offset_ = 0;
  std::vector<std::pair<std::string, GgufValue>> kv_;
  std::map<std::string, size_t, std::less<>> kv_index_;
  std::vector<GgufTensorInfo> tensors_;
  std::map<std::string, size_t, std::less<>> tensor_index_;

  friend class GgufParser;
};

// Short human-readable rendering: strings quoted and clipped, arrays as "[N items: a, b, ...]".
std::string gguf_value_summary(const GgufValue& v);

}  // namespace tpnode
