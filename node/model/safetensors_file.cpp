#include "node/model/safetensors_file.h"

#include <boost/json.hpp>
#include <cstring>
#include <limits>
#include <set>
#include <string_view>

#include "node/common/error.h"

namespace tpnode {

namespace {

namespace json = boost::json;

struct Dtype {
  std::string_view name;
  uint64_t size;
  std::optional<TensorType> type;
};

// Every dtype the format defines, so sizes are checked even for tensors we will not load.
constexpr Dtype kDtypes[] = {
    {"F32", 4, TensorType::kF32}, {"F16", 2, TensorType::kF16}, {"BF16", 2, TensorType::kBF16},
    {"F64", 8, std::nullopt},     {"I64", 8, std::nullopt},     {"U64", 8, std::nullopt},
    {"I32", 4, std::nullopt},     {"U32", 4, std::nullopt},     {"I16", 2, std::nullopt},
    {"U16", 2, std::nullopt},     {"I8", 1, std::nullopt},      {"U8", 1, std::nullopt},
    {"BOOL", 1, std::nullopt},    {"F8_E4M3", 1, std::nullopt}, {"F8_E5M2", 1, std::nullopt},
};

const Dtype* find_dtype(std::string_view name) {
  for (const Dtype& d : kDtypes) {
    if (d.name == name) return &d;
  }
  return nullptr;
}

// A non-negative JSON integer, or nullopt.
std::optional<uint64_t> as_count(const json::value& v) {
  if (v.is_int64() && v.get_int64() >= 0) return static_cast<uint64_t>(v.get_int64());
  if (v.is_uint64()) return v.get_uint64();
  return std::nullopt;
}

class HeaderParser {
 public:
  HeaderParser(const std::string& source, uint64_t data_bytes)
      : source_(source), data_bytes_(data_bytes) {}

  SafetensorsTensor tensor(std::string_view name, const json::value& entry) const {
    SafetensorsTensor t;
    t.name = std::string(name);
    const json::object* obj = entry.if_object();
    TPNODE_CHECK(obj != nullptr, "{}: tensor '{}': header entry is not an object", source_, name);

    const json::value* dtype = obj->if_contains("dtype");
    TPNODE_CHECK(dtype != nullptr && dtype->is_string(),
                 "{}: tensor '{}': missing or non-string dtype", source_, name);
    t.dtype = std::string(dtype->get_string());
    const Dtype* d = find_dtype(t.dtype);
    TPNODE_CHECK_KIND(d != nullptr, ErrorKind::kUnsupported, "{}: tensor '{}': unknown dtype '{}'",
                      source_, name, t.dtype);
    t.type = d->type;

    const json::value* shape = obj->if_contains("shape");
    TPNODE_CHECK(shape != nullptr && shape->is_array(),
                 "{}: tensor '{}': missing or non-array shape", source_, name);
    uint64_t elements = 1;
    bool overflow = false;
    for (const json::value& dim : shape->get_array()) {
      std::optional<uint64_t> n = as_count(dim);
      TPNODE_CHECK(
          n.has_value() && *n <= static_cast<uint64_t>(std::numeric_limits<int64_t>::max()),
          "{}: tensor '{}': shape holds {}, not a dimension", source_, name, json::serialize(dim));
      t.shape.push_back(static_cast<int64_t>(*n));
      overflow |= __builtin_mul_overflow(elements, *n, &elements);
    }
    uint64_t nbytes = 0;
    overflow |= __builtin_mul_overflow(elements, d->size, &nbytes);
    TPNODE_CHECK(
        !overflow && elements <= static_cast<uint64_t>(std::numeric_limits<int64_t>::max()),
        "{}: tensor '{}': element count of shape {} overflows", source_, name,
        json::serialize(*shape));

    const json::value* offsets = obj->if_contains("data_offsets");
    const json::array* arr = offsets != nullptr ? offsets->if_array() : nullptr;
    TPNODE_CHECK(arr != nullptr && arr->size() == 2,
                 "{}: tensor '{}': data_offsets is not [begin, end]", source_, name);
    std::optional<uint64_t> begin = as_count((*arr)[0]);
    std::optional<uint64_t> end = as_count((*arr)[1]);
    TPNODE_CHECK(begin && end && *begin <= *end, "{}: tensor '{}': data_offsets {} are not a range",
                 source_, name, json::serialize(*offsets));
    TPNODE_CHECK(*end <= data_bytes_,
                 "{}: tensor '{}': data_offsets {} lie past the end of the {}-byte data section",
                 source_, name, json::serialize(*offsets), data_bytes_);
    TPNODE_CHECK(*end - *begin == nbytes,
                 "{}: tensor '{}': data_offsets {} hold {} bytes, but shape {} of {} needs {}",
                 source_, name, json::serialize(*offsets), *end - *begin, json::serialize(*shape),
                 t.dtype, nbytes);
    t.begin = *begin;
    t.end = *end;
    return t;
  }

 private:
  const std::string& source_;
  uint64_t data_bytes_;
};

}  // namespace

SafetensorsHeader parse_safetensors(std::span<const uint8_t> bytes, const std::string& source) {
  TPNODE_CHECK(bytes.size() >= 8,
               "{}: truncated: {} bytes is too short for a safetensors header length", source,
               bytes.size());
  uint64_t header_len = 0;
  std::memcpy(&header_len, bytes.data(), 8);  // little-endian, as the format specifies
  TPNODE_CHECK(header_len <= kSafetensorsMaxHeaderBytes,
               "{}: safetensors header length {} exceeds the {}-byte cap", source, header_len,
               kSafetensorsMaxHeaderBytes);
  TPNODE_CHECK(header_len <= bytes.size() - 8,
               "{}: truncated: safetensors header length {} exceeds the {} bytes left", source,
               header_len, bytes.size() - 8);
  SafetensorsHeader h;
  h.data_offset = 8 + header_len;

  std::string_view text(reinterpret_cast<const char*>(bytes.data() + 8), header_len);
  boost::system::error_code ec;
  json::value root = json::parse(text, ec);
  TPNODE_CHECK(!ec, "{}: safetensors header is not valid JSON: {}", source, ec.message());
  const json::object* obj = root.if_object();
  TPNODE_CHECK(obj != nullptr, "{}: safetensors header is not a JSON object", source);

  HeaderParser parser(source, bytes.size() - h.data_offset);
  std::set<std::string_view> seen;
  h.tensors.reserve(obj->size());
  for (const auto& kv : *obj) {
    if (kv.key() == "__metadata__") continue;
    TPNODE_CHECK(seen.insert(kv.key()).second, "{}: duplicate tensor name '{}'", source,
                 std::string_view(kv.key()));
    h.tensors.push_back(parser.tensor(kv.key(), kv.value()));
  }
  return h;
}

}  // namespace tpnode
