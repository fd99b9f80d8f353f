#include "node/model/gguf_file.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <bit>
#include <cstring>
#include <limits>

#include "node/common/error.h"

namespace tpnode {

static_assert(std::endian::native == std::endian::little,
              "GGUF values are read by memcpy: little-endian hosts only");

namespace {

constexpr int kMaxArrayDepth = 8;  // nested arrays deeper than this are hostile, not models
// Smallest encodings, used to bound counts by the bytes left before reserving.
constexpr uint64_t kMinKvBytes = 8 + 4 + 1;                  // key length, type, a u8 value
constexpr uint64_t kMinTensorInfoBytes = 8 + 4 + 8 + 4 + 8;  // name, n_dims, 1 dim, type, offset
constexpr uint64_t kMinStringBytes = 8;
constexpr uint64_t kMinArrayBytes = 4 + 8;

bool valid_type(uint32_t raw) { return raw <= static_cast<uint32_t>(GgufType::kF64); }

template <class T>
T load(const uint8_t* p) {
  T v;
  std::memcpy(&v, p, sizeof(T));
  return v;
}

}  // namespace

std::string_view gguf_type_name(GgufType type) {
  switch (type) {
    case GgufType::kU8:
      return "u8";
    case GgufType::kI8:
      return "i8";
    case GgufType::kU16:
      return "u16";
    case GgufType::kI16:
      return "i16";
    case GgufType::kU32:
      return "u32";
    case GgufType::kI32:
      return "i32";
    case GgufType::kF32:
      return "f32";
    case GgufType::kBool:
      return "bool";
    case GgufType::kString:
      return "string";
    case GgufType::kArray:
      return "array";
    case GgufType::kU64:
      return "u64";
    case GgufType::kI64:
      return "i64";
    case GgufType::kF64:
      return "f64";
  }
  return "unknown";
}

size_t gguf_type_size(GgufType type) {
  switch (type) {
    case GgufType::kU8:
    case GgufType::kI8:
    case GgufType::kBool:
      return 1;
    case GgufType::kU16:
    case GgufType::kI16:
      return 2;
    case GgufType::kU32:
    case GgufType::kI32:
    case GgufType::kF32:
      return 4;
    case GgufType::kU64:
    case GgufType::kI64:
    case GgufType::kF64:
      return 8;
    case GgufType::kString:
    case GgufType::kArray:
      return 0;
  }
  return 0;
}

// ---------------------------------------------------------------------------------------------
// GgufValue

bool GgufValue::is_integer() const {
  switch (type) {
    case GgufType::kU8:
    case GgufType::kI8:
    case GgufType::kU16:
    case GgufType::kI16:
    case GgufType::kU32:
    case GgufType::kI32:
    case GgufType::kU64:
    case GgufType::kI64:
      return true;
    default:
      return false;
  }
}

template <class T>
std::optional<T> GgufValue::get() const {
  if (type != GgufTypeOf<T>::value) return std::nullopt;
  if constexpr (std::is_same_v<T, std::string>) {
    return std::string(str);
  } else if constexpr (std::is_same_v<T, bool>) {
    return bits != 0;
  } else {
    T v;
    std::memcpy(&v, &bits, sizeof(T));  // little-endian: the low bytes hold the payload
    return v;
  }
}

std::optional<int64_t> GgufValue::get_integer() const {
  switch (type) {
    case GgufType::kU8:
      return static_cast<int64_t>(*get<uint8_t>());
    case GgufType::kI8:
      return static_cast<int64_t>(*get<int8_t>());
    case GgufType::kU16:
      return static_cast<int64_t>(*get<uint16_t>());
    case GgufType::kI16:
      return static_cast<int64_t>(*get<int16_t>());
    case GgufType::kU32:
      return static_cast<int64_t>(*get<uint32_t>());
    case GgufType::kI32:
      return static_cast<int64_t>(*get<int32_t>());
    case GgufType::kI64:
      return *get<int64_t>();
    case GgufType::kU64: {
      uint64_t u = *get<uint64_t>();
      if (u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) return std::nullopt;
      return static_cast<int64_t>(u);
    }
    default:
      return std::nullopt;
  }
}

template <class T>
std::optional<std::vector<T>> GgufValue::get_array() const {
  if (type != GgufType::kArray || elem_type != GgufTypeOf<T>::value) return std::nullopt;
  std::vector<T> out;
  if constexpr (std::is_same_v<T, std::string>) {
    out.assign(strings.begin(), strings.end());
  } else {
    out.resize(count);
    for (uint64_t i = 0; i < count; ++i) {
      if constexpr (std::is_same_v<T, bool>) {
        out[i] = packed[i] != 0;
      } else {
        out[i] = load<T>(packed.data() + i * sizeof(T));
      }
    }
  }
  return out;
}

// clang-format off
#define TPNODE_GGUF_VALUE_TYPES(X)                                                      \
  X(uint8_t) X(int8_t) X(uint16_t) X(int16_t) X(uint32_t) X(int32_t) X(uint64_t)        \
  X(int64_t) X(float) X(double) X(bool) X(std::string)
// clang-format on

#define TPNODE_INSTANTIATE_VALUE(T)                    \
  template std::optional<T> GgufValue::get<T>() const; \
  template std::optional<std::vector<T>> GgufValue::get_array<T>() const;
TPNODE_GGUF_VALUE_TYPES(TPNODE_INSTANTIATE_VALUE)
#undef TPNODE_INSTANTIATE_VALUE

// ---------------------------------------------------------------------------------------------
// Parser

class GgufParser {
 public:
  GgufParser(std::span<const uint8_t> bytes, GgufFile& out) : b_(bytes), out_(out) {}

  void run() {
    read_header();
    uint64_t n_tensors = read<uint64_t>("tensor count");
    uint64_t n_kv = read<uint64_t>("metadata count");
    if (n_kv > remaining() / kMinKvBytes) {
      fail("metadata count {} cannot fit in the {} bytes left", n_kv, remaining());
    }
    read_metadata(n_kv);
    read_alignment();
    if (n_tensors > remaining() / kMinTensorInfoBytes) {
      fail("tensor count {} cannot fit in the {} bytes left", n_tensors, remaining());
    }
    read_tensor_infos(n_tensors);
    place_data();
  }

 private:
  size_t remaining() const { return b_.size() - pos_; }

  template <class... Args>
  [[noreturn]] void fail(fmt::format_string<Args...> f, Args&&... args) const {
    TPNODE_THROW(ErrorKind::kInvalidInput, "{}: {} (at offset {})", out_.source_,
                 fmt::format(f, std::forward<Args>(args)...), pos_);
  }

  void need(uint64_t n, std::string_view what) const {
    if (n > remaining()) fail("truncated: {} needs {} bytes, {} left", what, n, remaining());
  }

  template <class T>
  T read(std::string_view what) {
    need(sizeof(T), what);
    T v = load<T>(b_.data() + pos_);
    pos_ += sizeof(T);
    return v;
  }

  std::string_view read_string(std::string_view what) {
    uint64_t n = read<uint64_t>(what);
    if (n > remaining()) {
      fail("truncated: {} of length {} exceeds the {} bytes left", what, n, remaining());
    }
    std::string_view s(reinterpret_cast<const char*>(b_.data() + pos_), n);
    pos_ += n;
    return s;
  }

  void read_header() {
    if (b_.size() < 4) fail("truncated: {} bytes is too short for a GGUF header", b_.size());
    uint32_t magic = read<uint32_t>("magic");
    if (magic != kGgufMagic)
      fail("not a GGUF file (magic 0x{:08x}, expected 0x{:08x})", magic, kGgufMagic);
    uint32_t version = read<uint32_t>("version");
    if (version == 2 || version == 3) {
      out_.version_ = version;
      return;
    }
    if (version == 1) fail("GGUF version 1 is not supported (only 2 and 3)");
    uint32_t swapped = __builtin_bswap32(version);
    if (swapped == 2 || swapped == 3)
      fail("big-endian GGUF (version {}) is not supported", swapped);
    fail("unsupported GGUF version {} (only 2 and 3)", version);
  }

  GgufValue read_value(GgufType type, std::string_view key, int depth) {
    GgufValue v;
    v.type = type;
    if (size_t s = gguf_type_size(type); s != 0) {
      need(s, "metadata value");
      std::memcpy(&v.bits, b_.data() + pos_, s);
      pos_ += s;
      return v;
    }
    if (type == GgufType::kString) {
      v.str = read_string("string value");
      return v;
    }
    if (depth >= kMaxArrayDepth)
      fail("key '{}': arrays nested deeper than {}", key, kMaxArrayDepth);
    uint32_t raw = read<uint32_t>("array element type");
    if (!valid_type(raw)) fail("key '{}': unknown array element type {}", key, raw);
    v.elem_type = static_cast<GgufType>(raw);
    v.count = read<uint64_t>("array length");
    uint64_t n = v.count;
    if (size_t es = gguf_type_size(v.elem_type); es != 0) {
      if (n > remaining() / es) {
        fail("key '{}': array of {} {} exceeds the {} bytes left", key, n,
             gguf_type_name(v.elem_type), remaining());
      }
      v.packed = b_.subspan(pos_, n * es);
      pos_ += n * es;
    } else if (v.elem_type == GgufType::kString) {
      if (n > remaining() / kMinStringBytes) {
        fail("key '{}': array of {} strings exceeds the {} bytes left", key, n, remaining());
      }
      v.strings.reserve(n);
      for (uint64_t i = 0; i < n; ++i) v.strings.push_back(read_string("array string"));
    } else {
      if (n > remaining() / kMinArrayBytes) {
        fail("key '{}': array of {} arrays exceeds the {} bytes left", key, n, remaining());
      }
      v.arrays.reserve(n);
      for (uint64_t i = 0; i < n; ++i)
        v.arrays.push_back(read_value(GgufType::kArray, key, depth + 1));
    }
    return v;
  }

  void read_metadata(uint64_t n_kv) {
    out_.kv_.reserve(n_kv);
    for (uint64_t i = 0; i < n_kv; ++i) {
      std::string key(read_string("metadata key"));
      if (out_.kv_index_.count(key) != 0) fail("duplicate metadata key '{}'", key);
      uint32_t raw = read<uint32_t>("metadata value type");
      if (!valid_type(raw)) fail("key '{}': unknown value type {}", key, raw);
      GgufValue v = read_value(static_cast<GgufType>(raw), key, 0);
      out_.kv_index_.emplace(key, out_.kv_.size());
      out_.kv_.emplace_back(std::move(key), std::move(v));
    }
  }

  void read_alignment() {
    const GgufValue* a = out_.find("general.alignment");
    if (a == nullptr) return;
    std::optional<uint32_t> v = a->get<uint32_t>();
    if (!v) fail("general.alignment must be u32, got {}", gguf_type_name(a->type));
    if (*v == 0 || !std::has_single_bit(*v)) fail("general.alignment {} is not a power of two", *v);
    out_.alignment_ = *v;
  }

  void read_tensor_infos(uint64_t n_tensors) {
    out_.tensors_.reserve(n_tensors);
    for (uint64_t i = 0; i < n_tensors; ++i) {
      GgufTensorInfo t;
      t.name = std::string(read_string("tensor name"));
      if (out_.tensor_index_.count(t.name) != 0) fail("duplicate tensor name '{}'", t.name);
      uint32_t n_dims = read<uint32_t>("tensor n_dims");
      if (n_dims < 1 || n_dims > kGgufMaxDims) {
        fail("tensor '{}': n_dims {} is not in 1..{}", t.name, n_dims, kGgufMaxDims);
      }
      for (uint32_t d = 0; d < n_dims; ++d) {
        uint64_t ne = read<uint64_t>("tensor dimension");
        if (ne > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
          fail("tensor '{}': dimension {} is {}, too large", t.name, d, ne);
        }
        t.shape.push_back(static_cast<int64_t>(ne));
      }
      uint32_t raw_type = read<uint32_t>("tensor type");
      std::optional<TensorType> type = tensor_type_from_gguf(raw_type);
      if (!type) {
        TPNODE_THROW(ErrorKind::kUnsupported, "{}: tensor '{}' has unknown or unsupported type {}",
                     out_.source_, t.name, raw_type);
      }
      t.type = *type;
      t.offset = read<uint64_t>("tensor offset");
      t.nbytes = tensor_nbytes(t);
      out_.tensor_index_.emplace(t.name, out_.tensors_.size());
      out_.tensors_.push_back(std::move(t));
    }
  }

  uint64_t tensor_nbytes(const GgufTensorInfo& t) const {
    const TypeTraits& tr = type_traits(t.type);
    int64_t ne0 = t.shape[0];
    if (ne0 % tr.block_size != 0) {
      fail("tensor '{}': row of {} elements is not a multiple of the {} block size {}", t.name, ne0,
           tr.name, tr.block_size);
    }
    uint64_t rows = 1;
    uint64_t row_bytes = 0;
    bool overflow = __builtin_mul_overflow(static_cast<uint64_t>(ne0 / tr.block_size),
                                           static_cast<uint64_t>(tr.block_bytes), &row_bytes);
    uint64_t elements = static_cast<uint64_t>(ne0);
    for (size_t d = 1; d < t.shape.size(); ++d) {
      overflow |= __builtin_mul_overflow(rows, static_cast<uint64_t>(t.shape[d]), &rows);
      overflow |= __builtin_mul_overflow(elements, static_cast<uint64_t>(t.shape[d]), &elements);
    }
    uint64_t nbytes = 0;
    overflow |= __builtin_mul_overflow(row_bytes, rows, &nbytes);
    if (overflow || elements > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
      fail("tensor '{}': element count or byte size overflows", t.name);
    }
    return nbytes;
  }

  void place_data() {
    uint64_t a = out_.alignment_;
    uint64_t data = (static_cast<uint64_t>(pos_) + a - 1) / a * a;
    out_.data_offset_ = data;
    if (out_.tensors_.empty()) return;
    uint64_t size = b_.size();
    if (data > size) {
      fail("truncated: tensor data section starts at {} but the file is {} bytes", data, size);
    }
    uint64_t room = size - data;
    for (const GgufTensorInfo& t : out_.tensors_) {
      if (t.offset % a != 0) {
        fail("tensor '{}': data offset {} is not a multiple of the alignment {}", t.name, t.offset,
             a);
      }
      if (t.offset > room || t.nbytes > room - t.offset) {
        fail("tensor '{}': data at offset {} + {} bytes lies past the end of the file ({} bytes)",
             t.name, data + t.offset, t.nbytes, size);
      }
    }
  }

  std::span<const uint8_t> b_;
  GgufFile& out_;
  size_t pos_ = 0;
};

// ---------------------------------------------------------------------------------------------
// GgufFile

GgufFile GgufFile::parse(std::span<const uint8_t> bytes, std::string source) {
  GgufFile f;
  f.source_ = std::move(source);
  f.bytes_ = bytes;
  GgufParser(bytes, f).run();
  return f;
}

const GgufValue* GgufFile::find(std::string_view key) const {
  auto it = kv_index_.find(key);
  return it == kv_index_.end() ? nullptr : &kv_[it->second].second;
}

const GgufTensorInfo* GgufFile::find_tensor(std::string_view name) const {
  auto it = tensor_index_.find(name);
  return it == tensor_index_.end() ? nullptr : &tensors_[it->second];
}

std::span<const uint8_t> GgufFile::tensor_bytes(const GgufTensorInfo& t) const {
  return bytes_.subspan(data_offset_ + t.offset, t.nbytes);
}

namespace {

std::string describe_type(const GgufValue& v) {
  if (v.type != GgufType::kArray) return std::string(gguf_type_name(v.type));
  return fmt::format("array of {}", gguf_type_name(v.elem_type));
}

}  // namespace

template <class T>
std::optional<T> GgufFile::get_optional(std::string_view key) const {
  const GgufValue* v = find(key);
  if (v == nullptr) return std::nullopt;
  std::optional<T> r = v->get<T>();
  if (!r) {
    TPNODE_THROW(ErrorKind::kInvalidInput, "{}: metadata key '{}' is {}, expected {}", source_, key,
                 describe_type(*v), gguf_type_name(GgufTypeOf<T>::value));
  }
  return r;
}

template <class T>
T GgufFile::get(std::string_view key) const {
  std::optional<T> r = get_optional<T>(key);
  TPNODE_CHECK(r.has_value(), "{}: missing metadata key '{}'", source_, key);
  return *r;
}

template <class T>
std::vector<T> GgufFile::get_array(std::string_view key) const {
  const GgufValue* v = find(key);
  TPNODE_CHECK(v != nullptr, "{}: missing metadata key '{}'", source_, key);
  std::optional<std::vector<T>> r = v->get_array<T>();
  if (!r) {
    TPNODE_THROW(ErrorKind::kInvalidInput, "{}: metadata key '{}' is {}, expected array of {}",
                 source_, key, describe_type(*v), gguf_type_name(GgufTypeOf<T>::value));
  }
  return std::move(*r);
}

#define TPNODE_INSTANTIATE_FILE(T)                                             \
  template T GgufFile::get<T>(std::string_view) const;                         \
  template std::optional<T> GgufFile::get_optional<T>(std::string_view) const; \
  template std::vector<T> GgufFile::get_array<T>(std::string_view) const;
TPNODE_GGUF_VALUE_TYPES(TPNODE_INSTANTIATE_FILE)
#undef TPNODE_INSTANTIATE_FILE

std::optional<int64_t> GgufFile::get_integer_optional(std::string_view key) const {
  const GgufValue* v = find(key);
  if (v == nullptr) return std::nullopt;
  TPNODE_CHECK(v->is_integer(), "{}: metadata key '{}' is {}, expected an integer", source_, key,
               describe_type(*v));
  std::optional<int64_t> r = v->get_integer();
  TPNODE_CHECK(r.has_value(), "{}: metadata key '{}' is out of range", source_, key);
  return r;
}

int64_t GgufFile::get_integer(std::string_view key) const {
  std::optional<int64_t> r = get_integer_optional(key);
  TPNODE_CHECK(r.has_value(), "{}: missing metadata key '{}'", source_, key);
  return *r;
}

// ---------------------------------------------------------------------------------------------
// Summary

namespace {

constexpr size_t kSummaryItems = 4;
constexpr size_t kSummaryChars = 60;

std::string quote_clipped(std::string_view s) {
  std::string out = "\"";
  size_t shown = 0;
  for (char c : s) {
    if (shown == kSummaryChars) {
      out += "...";
      break;
    }
    switch (c) {
      case '\n':
        out += "\\n";
        break;
      case '\t':
        out += "\\t";
        break;
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          out += fmt::format("\\x{:02x}", static_cast<unsigned char>(c));
        } else {
          out += c;
        }
    }
    ++shown;
  }
  out += '"';
  return out;
}

std::string packed_element(GgufType t, const uint8_t* p) {
  GgufValue v;
  v.type = t;
  std::memcpy(&v.bits, p, gguf_type_size(t));
  return gguf_value_summary(v);
}

}  // namespace

std::string gguf_value_summary(const GgufValue& v) {
  switch (v.type) {
    case GgufType::kU8:
    case GgufType::kU16:
    case GgufType::kU32:
    case GgufType::kU64:
      return fmt::format("{}", v.bits);
    case GgufType::kI8:
      return fmt::format("{}", *v.get<int8_t>());
    case GgufType::kI16:
      return fmt::format("{}", *v.get<int16_t>());
    case GgufType::kI32:
      return fmt::format("{}", *v.get<int32_t>());
    case GgufType::kI64:
      return fmt::format("{}", *v.get<int64_t>());
    case GgufType::kF32:
      return fmt::format("{}", *v.get<float>());
    case GgufType::kF64:
      return fmt::format("{}", *v.get<double>());
    case GgufType::kBool:
      return v.bits != 0 ? "true" : "false";
    case GgufType::kString:
      return quote_clipped(v.str);
    case GgufType::kArray:
      break;
  }
  if (v.count == 0) return fmt::format("[0 {}s]", gguf_type_name(v.elem_type));
  std::vector<std::string> items;
  size_t shown = std::min<uint64_t>(v.count, kSummaryItems);
  for (size_t i = 0; i < shown; ++i) {
    if (size_t es = gguf_type_size(v.elem_type); es != 0) {
      items.push_back(packed_element(v.elem_type, v.packed.data() + i * es));
    } else if (v.elem_type == GgufType::kString) {
      items.push_back(quote_clipped(v.strings[i]));
    } else {
      items.push_back(gguf_value_summary(v.arrays[i]));
    }
  }
  std::string more = v.count > shown ? ", ..." : "";
  return fmt::format("[{} {}{}: {}{}]", v.count, gguf_type_name(v.elem_type),
                     v.count == 1 ? "" : "s", fmt::join(items, ", "), more);
}

}  // namespace tpnode
