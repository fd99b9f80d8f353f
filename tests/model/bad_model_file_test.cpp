// Hostile and broken model files: each must throw tpnode::Error whose message names the file
// and the problem, and nothing may crash or allocate from a header value. GGUF cases are built
// byte by byte (or cut from a fixture); safetensors cases are hand-built buffers and copies of
// the fixture folders with one thing broken.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <sstream>

#include "node/common/error.h"
#include "node/model/gguf_file.h"
#include "node/model/model_file.h"
#include "node/model/safetensors_file.h"

namespace tpnode {
namespace {

namespace fs = std::filesystem;

const std::string kDir = std::string(TPNODE_SOURCE_DIR) + "/tests/fixtures/model_files/";
constexpr uint64_t kHuge = uint64_t{1} << 62;

// ---------------------------------------------------------------------------------------------
// Helpers

std::string error_of(const std::function<void()>& fn, ErrorKind* kind = nullptr) {
  try {
    fn();
  } catch (const Error& e) {
    if (kind != nullptr) *kind = e.kind();
    return e.what();
  }
  return "<no error>";
}

void expect_parts(const std::string& msg, std::initializer_list<std::string_view> parts) {
  for (std::string_view part : parts) {
    EXPECT_NE(msg.find(part), std::string::npos) << "message: " << msg << "\nwanted: " << part;
  }
}

// Macros only to report the caller's line.
#define EXPECT_ERROR_HAS(fn, ...)              \
  do {                                         \
    SCOPED_TRACE("expected error");            \
    expect_parts(error_of(fn), {__VA_ARGS__}); \
  } while (0)

std::vector<uint8_t> read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

void write_bytes(const std::string& path, const std::vector<uint8_t>& b) {
  std::ofstream out(path, std::ios::binary);
  out.write(reinterpret_cast<const char*>(b.data()), static_cast<std::streamsize>(b.size()));
}

std::string temp_path(const std::string& name) {
  fs::path dir = fs::path(::testing::TempDir()) / "tpnode_bad_model_files";
  fs::create_directories(dir);
  return (dir / name).string();
}

// Little-endian byte writer for hand-built GGUF files.
struct Bytes {
  std::vector<uint8_t> b;
  Bytes& raw(const void* p, size_t n) {
    b.insert(b.end(), static_cast<const uint8_t*>(p), static_cast<const uint8_t*>(p) + n);
    return *this;
  }
  Bytes& u32(uint32_t v) { return raw(&v, 4); }
  Bytes& u64(uint64_t v) { return raw(&v, 8); }
  Bytes& str(std::string_view s) { return u64(s.size()).raw(s.data(), s.size()); }
  Bytes& zeros(size_t n) {
    b.resize(b.size() + n, 0);
    return *this;
  }
  Bytes& pad_to(size_t a) { return zeros((a - b.size() % a) % a); }
};

using Kv = std::function<void(Bytes&)>;
Kv kv_str(std::string key, std::string v) {
  return [=](Bytes& o) { o.str(key).u32(uint32_t(GgufType::kString)).str(v); };
}
Kv kv_u32(std::string key, uint32_t v) {
  return [=](Bytes& o) { o.str(key).u32(uint32_t(GgufType::kU32)).u32(v); };
}

struct TensorSpec {
  std::string name = "t";
  std::vector<uint64_t> dims = {8};
  std::optional<uint32_t> n_dims;  // override of dims.size()
  uint32_t type = 0;               // F32
  uint64_t offset = 0;
};

struct FileSpec {
  uint32_t magic = kGgufMagic;
  uint32_t version = 3;
  std::optional<uint64_t> n_tensors;  // overrides of the real counts
  std::optional<uint64_t> n_kv;
  std::vector<Kv> kvs = {kv_str("general.architecture", "llama")};
  std::vector<TensorSpec> tensors = {TensorSpec{}};
  size_t alignment = 32;  // used to pad before data
  size_t data_bytes = 32;
};

std::vector<uint8_t> build(const FileSpec& s) {
  Bytes o;
  o.u32(s.magic).u32(s.version);
  o.u64(s.n_tensors.value_or(s.tensors.size())).u64(s.n_kv.value_or(s.kvs.size()));
  for (const Kv& kv : s.kvs) kv(o);
  for (const TensorSpec& t : s.tensors) {
    o.str(t.name).u32(t.n_dims.value_or(static_cast<uint32_t>(t.dims.size())));
    for (uint64_t d : t.dims) o.u64(d);
    o.u32(t.type).u64(t.offset);
  }
  o.pad_to(s.alignment).zeros(s.data_bytes);
  return o.b;
}

std::string parse_error(const std::vector<uint8_t>& b, ErrorKind* kind = nullptr) {
  return error_of([&] { GgufFile::parse(b, "bad.gguf"); }, kind);
}

#define EXPECT_GGUF_ERROR(bytes, ...)                              \
  do {                                                             \
    SCOPED_TRACE("expected GGUF error");                           \
    expect_parts(parse_error(bytes), {"bad.gguf: ", __VA_ARGS__}); \
  } while (0)

// ---------------------------------------------------------------------------------------------
// GGUF

TEST(BadGguf, BuilderBaselineIsValid) {
  GgufFile f = GgufFile::parse(build(FileSpec{}), "good.gguf");
  ASSERT_EQ(f.tensors().size(), 1u);
  EXPECT_EQ(f.tensors()[0].nbytes, 32u);
}

TEST(BadGguf, TruncatedAnywhereBeforeTheLastTensorByte) {
  std::vector<uint8_t> full = read_bytes(kDir + "all_types.gguf");
  GgufFile f = GgufFile::parse(full, "all_types.gguf");
  uint64_t end = 0;
  for (const GgufTensorInfo& t : f.tensors())
    end = std::max(end, f.data_offset() + t.offset + t.nbytes);
  ASSERT_LE(end, full.size());
  for (uint64_t n = 0; n < end; ++n) {
    std::vector<uint8_t> cut(full.begin(), full.begin() + static_cast<ptrdiff_t>(n));
    std::string msg = parse_error(cut);
    ASSERT_EQ(msg.rfind("bad.gguf: ", 0), 0u) << "cut at " << n << ": " << msg;
    ASSERT_TRUE(msg.find("truncated") != std::string::npos ||
                msg.find("past the end") != std::string::npos ||
                msg.find("cannot fit") != std::string::npos ||
                msg.find("exceeds") != std::string::npos)
        << "cut at " << n << ": " << msg;
  }
  std::vector<uint8_t> cut(full.begin(), full.begin() + static_cast<ptrdiff_t>(end));
  EXPECT_NO_THROW(GgufFile::parse(cut, "exact.gguf"));
}

TEST(BadGguf, MagicAndVersion) {
  FileSpec s;
  s.magic = 0x58554747;  // "GGUX"
  EXPECT_GGUF_ERROR(build(s), "not a GGUF file");
  s = FileSpec{};
  s.version = 1;
  EXPECT_GGUF_ERROR(build(s), "version 1 is not supported");
  s.version = 4;
  EXPECT_GGUF_ERROR(build(s), "unsupported GGUF version 4");
  s.version = 0x03000000;
  EXPECT_GGUF_ERROR(build(s), "big-endian");
  EXPECT_GGUF_ERROR((std::vector<uint8_t>{'G', 'G'}), "truncated");
  EXPECT_GGUF_ERROR(std::vector<uint8_t>{}, "truncated");
}

TEST(BadGguf, AbsurdCounts) {
  FileSpec s;
  s.n_tensors = kHuge;
  EXPECT_GGUF_ERROR(build(s), "tensor count 4611686018427387904 cannot fit");
  s = FileSpec{};
  s.n_kv = kHuge;
  EXPECT_GGUF_ERROR(build(s), "metadata count 4611686018427387904 cannot fit");
  s = FileSpec{};
  s.n_kv = 5;  // more keys than present: runs into the tensor infos
  EXPECT_EQ(parse_error(build(s)).rfind("bad.gguf: ", 0), 0u);
}

TEST(BadGguf, AbsurdStringLengths) {
  FileSpec s;
  s.kvs = {[](Bytes& o) { o.u64(kHuge).raw("abc", 3); }};  // key length
  EXPECT_GGUF_ERROR(build(s), "metadata key of length 4611686018427387904 exceeds");
  s.kvs = {[](Bytes& o) { o.str("k").u32(uint32_t(GgufType::kString)).u64(kHuge); }};
  EXPECT_GGUF_ERROR(build(s), "string value of length 4611686018427387904 exceeds");
  s = FileSpec{};
  s.tensors[0].name = "x";
  std::vector<uint8_t> b = build(s);
  // The tensor name's length field sits right after the one key-value pair.
  size_t at = 24 + 8 + std::string("general.architecture").size() + 4 + 8 + 5;
  uint64_t huge = kHuge;
  std::memcpy(b.data() + at, &huge, 8);
  EXPECT_GGUF_ERROR(b, "tensor name of length 4611686018427387904 exceeds");
}

TEST(BadGguf, AbsurdArrays) {
  FileSpec s;
  s.kvs = {[](Bytes& o) {
    o.str("a").u32(uint32_t(GgufType::kArray)).u32(uint32_t(GgufType::kU8)).u64(kHuge);
  }};
  EXPECT_GGUF_ERROR(build(s), "key 'a': array of 4611686018427387904 u8 exceeds");
  s.kvs = {[](Bytes& o) {
    o.str("a").u32(uint32_t(GgufType::kArray)).u32(uint32_t(GgufType::kU64)).u64(kHuge);
  }};
  EXPECT_GGUF_ERROR(build(s), "array of 4611686018427387904 u64 exceeds");  // n * 8 would overflow
  s.kvs = {[](Bytes& o) {
    o.str("a").u32(uint32_t(GgufType::kArray)).u32(uint32_t(GgufType::kString)).u64(kHuge);
  }};
  EXPECT_GGUF_ERROR(build(s), "array of 4611686018427387904 strings exceeds");
  s.kvs = {[](Bytes& o) {
    o.str("a").u32(uint32_t(GgufType::kArray)).u32(uint32_t(GgufType::kArray)).u64(kHuge);
  }};
  EXPECT_GGUF_ERROR(build(s), "array of 4611686018427387904 arrays exceeds");
  s.kvs = {[](Bytes& o) { o.str("a").u32(uint32_t(GgufType::kArray)).u32(99).u64(1); }};
  EXPECT_GGUF_ERROR(build(s), "key 'a': unknown array element type 99");
  s.kvs = {[](Bytes& o) {
    o.str("deep").u32(uint32_t(GgufType::kArray));
    for (int i = 0; i < 12; ++i) o.u32(uint32_t(GgufType::kArray)).u64(1);  // element type, count
  }};
  EXPECT_GGUF_ERROR(build(s), "key 'deep': arrays nested deeper than");
}

TEST(BadGguf, MetadataProblems) {
  FileSpec s;
  s.kvs = {[](Bytes& o) { o.str("k").u32(13).u32(0); }};
  EXPECT_GGUF_ERROR(build(s), "key 'k': unknown value type 13");
  s.kvs = {kv_u32("k", 1), kv_u32("k", 2)};
  EXPECT_GGUF_ERROR(build(s), "duplicate metadata key 'k'");
}

TEST(BadGguf, Alignment) {
  for (uint32_t a : {0u, 3u, 48u}) {
    FileSpec s;
    s.kvs.push_back(kv_u32("general.alignment", a));
    EXPECT_GGUF_ERROR(build(s), fmt::format("general.alignment {} is not a power of two", a));
  }
  FileSpec s;
  s.kvs.push_back(
      [](Bytes& o) { o.str("general.alignment").u32(uint32_t(GgufType::kU64)).u64(64); });
  EXPECT_GGUF_ERROR(build(s), "general.alignment must be u32, got u64");
  s = FileSpec{};
  s.tensors[0].offset = 4;
  s.data_bytes = 64;
  EXPECT_GGUF_ERROR(build(s), "tensor 't': data offset 4 is not a multiple of the alignment 32");
}

TEST(BadGguf, TensorDims) {
  FileSpec s;
  s.tensors[0].n_dims = 9;
  s.tensors[0].dims = {8, 1, 1, 1, 1, 1, 1, 1, 1};
  EXPECT_GGUF_ERROR(build(s), "tensor 't': n_dims 9 is not in 1..4");
  s.tensors[0].n_dims = 0;
  s.tensors[0].dims = {};
  EXPECT_GGUF_ERROR(build(s), "n_dims 0 is not in 1..4");
  s = FileSpec{};
  s.tensors[0].dims = {kHuge, kHuge};
  EXPECT_GGUF_ERROR(build(s), "tensor 't': element count or byte size overflows");
  s.tensors[0].dims = {uint64_t{1} << 63};
  EXPECT_GGUF_ERROR(build(s), "dimension 0 is 9223372036854775808, too large");
  s.tensors[0].dims = {uint64_t{1} << 40};  // no overflow, but far past the end
  EXPECT_GGUF_ERROR(build(s), "tensor 't': data at offset", "past the end of the file");
  s.tensors[0].dims = {31};
  s.tensors[0].type = 8;  // Q8_0 blocks of 32
  EXPECT_GGUF_ERROR(build(s), "row of 31 elements is not a multiple of the Q8_0 block size 32");
}

TEST(BadGguf, TensorTypeOffsetAndNames) {
  FileSpec s;
  s.tensors[0].type = 99;
  ErrorKind kind{};
  std::string msg = parse_error(build(s), &kind);
  EXPECT_NE(msg.find("bad.gguf: tensor 't' has unknown or unsupported type 99"), std::string::npos)
      << msg;
  EXPECT_EQ(kind, ErrorKind::kUnsupported);
  s.tensors[0].type = 9;  // Q8_1: activation-only, never a weight
  EXPECT_GGUF_ERROR(build(s), "unsupported type 9");

  s = FileSpec{};
  s.tensors[0].offset = uint64_t{1} << 40;
  EXPECT_GGUF_ERROR(build(s), "past the end of the file");
  s.tensors[0].offset = ~uint64_t{0} - 31;  // aligned, and offset + size wraps around
  EXPECT_GGUF_ERROR(build(s), "past the end of the file");
  s = FileSpec{};
  s.data_bytes = 16;
  EXPECT_GGUF_ERROR(build(s), "past the end of the file");
  s.data_bytes = 0;
  EXPECT_GGUF_ERROR(build(s), "past the end of the file");

  s = FileSpec{};
  s.tensors = {TensorSpec{}, TensorSpec{}};
  s.tensors[1].offset = 32;
  s.data_bytes = 64;
  EXPECT_GGUF_ERROR(build(s), "duplicate tensor name 't'");
}

// Through ModelFile::open: the message leads with the path.
TEST(BadGguf, ModelFileOpenNamesThePath) {
  std::string p = temp_path("wrong_magic.gguf");
  FileSpec s;
  s.magic = 0;
  write_bytes(p, build(s));
  EXPECT_ERROR_HAS([&] { ModelFile::open(p); }, p + ": not a GGUF file");

  p = temp_path("truncated.gguf");
  std::vector<uint8_t> full = read_bytes(kDir + "tiny_llama.gguf");
  write_bytes(p, std::vector<uint8_t>(full.begin(), full.begin() + 1000));
  EXPECT_ERROR_HAS([&] { ModelFile::open(p); },
                   p + ": key 'tokenizer.ggml.tokens': array of 272 strings exceeds");

  p = temp_path("no_block_count.gguf");
  write_bytes(p, build(FileSpec{}));
  EXPECT_ERROR_HAS([&] { ModelFile::open(p); }, p + ": missing metadata key 'llama.block_count'");

  p = temp_path("other_arch.gguf");
  s = FileSpec{};
  s.kvs = {kv_str("general.architecture", "falcon")};
  write_bytes(p, build(s));
  EXPECT_ERROR_HAS([&] { ModelFile::open(p); }, p + ": architecture 'falcon' is not supported");

  p = temp_path("not_a_model.bin");
  write_bytes(p, {1, 2, 3, 4, 5, 6, 7, 8});
  EXPECT_ERROR_HAS([&] { ModelFile::open(p); }, p + ": not a GGUF file");
  EXPECT_ERROR_HAS([&] { ModelFile::open(temp_path("absent.gguf")); },
                   "absent.gguf: no such file or directory");
  p = temp_path("empty.gguf");
  write_bytes(p, {});
  EXPECT_ERROR_HAS([&] { ModelFile::open(p); }, p + ": truncated");
}

TEST(BadGguf, HParamsInconsistentWithTensors) {
  // tiny_llama.gguf with llama.feed_forward_length patched from 96 to 128: valid on its own,
  // inconsistent with the FFN tensors.
  std::vector<uint8_t> b = read_bytes(kDir + "tiny_llama.gguf");
  std::string_view key = "llama.feed_forward_length";
  auto it = std::search(b.begin(), b.end(), key.begin(), key.end());
  ASSERT_NE(it, b.end());
  size_t value_at = static_cast<size_t>(it - b.begin()) + key.size() + 4;  // after the u32 type tag
  uint32_t n_ff = 0;
  std::memcpy(&n_ff, b.data() + value_at, 4);
  ASSERT_EQ(n_ff, 96u);
  n_ff = 128;
  std::memcpy(b.data() + value_at, &n_ff, 4);
  std::string p = temp_path("wrong_ff.gguf");
  write_bytes(p, b);
  EXPECT_ERROR_HAS([&] { ModelFile::open(p); },
                   p + ": tensor 'blk.0.ffn_gate.weight' has shape [64, 96], expected [64, 128]");
}

TEST(BadGguf, RopeFreqsNotPositive) {
  std::vector<uint8_t> b = read_bytes(kDir + "tiny_llama3_rope.gguf");
  uint64_t at = 0;
  {
    GgufFile f = GgufFile::parse(b, "x");
    const GgufTensorInfo* t = f.find_tensor("rope_freqs.weight");
    ASSERT_NE(t, nullptr);
    at = f.data_offset() + t->offset + 4 * sizeof(float);
  }
  float v = -2.0f;
  std::memcpy(b.data() + at, &v, sizeof(v));
  std::string p = temp_path("negative_rope_freqs.gguf");
  write_bytes(p, b);
  EXPECT_ERROR_HAS([&] { ModelFile::open(p); }, p + ": rope_freqs.weight[4] = -2 is not positive");
}

// ---------------------------------------------------------------------------------------------
// safetensors header

std::vector<uint8_t> st_bytes(const std::string& header, size_t data_bytes,
                              std::optional<uint64_t> len = {}) {
  std::vector<uint8_t> b(8 + header.size() + data_bytes, 0);
  uint64_t n = len.value_or(header.size());
  std::memcpy(b.data(), &n, 8);
  std::memcpy(b.data() + 8, header.data(), header.size());
  return b;
}

std::string st_error(const std::vector<uint8_t>& b, ErrorKind* kind = nullptr) {
  return error_of([&] { parse_safetensors(b, "bad.safetensors"); }, kind);
}

#define EXPECT_ST_ERROR(bytes, ...)                                    \
  do {                                                                 \
    SCOPED_TRACE("expected safetensors error");                        \
    expect_parts(st_error(bytes), {"bad.safetensors: ", __VA_ARGS__}); \
  } while (0)

TEST(BadSafetensors, HeaderLength) {
  EXPECT_ST_ERROR((std::vector<uint8_t>{1, 0, 0}), "too short");
  EXPECT_ST_ERROR(st_bytes("{}", 0, kHuge),
                  "header length 4611686018427387904 exceeds the 104857600-byte cap");
  EXPECT_ST_ERROR(st_bytes("{}", 0, 1000),
                  "truncated: safetensors header length 1000 exceeds the 2 bytes left");
  EXPECT_ST_ERROR(st_bytes("{}", 0, 0), "not valid JSON");
}

TEST(BadSafetensors, MalformedJson) {
  EXPECT_ST_ERROR(st_bytes(R"({"a": {"dtype": "F32", )", 0), "not valid JSON");
  EXPECT_ST_ERROR(st_bytes("[1, 2]", 0), "not a JSON object");
  EXPECT_ST_ERROR(st_bytes(R"({"a": 5})", 0), "tensor 'a': header entry is not an object");
  EXPECT_ST_ERROR(st_bytes(R"({"a": {"shape": [1], "data_offsets": [0, 4]}})", 4),
                  "tensor 'a': missing or non-string dtype");
  EXPECT_ST_ERROR(st_bytes(R"({"a": {"dtype": "F32", "data_offsets": [0, 4]}})", 4),
                  "missing or non-array shape");
  EXPECT_ST_ERROR(st_bytes(R"({"a": {"dtype": "F32", "shape": [1]}})", 4),
                  "data_offsets is not [begin, end]");
  EXPECT_ST_ERROR(
      st_bytes(R"({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4, 8]}})", 8),
      "data_offsets is not [begin, end]");
  EXPECT_ST_ERROR(st_bytes(R"({"a": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}})", 4),
                  "not a dimension");
  EXPECT_ST_ERROR(st_bytes(R"({"a": {"dtype": "F32", "shape": [1.5], "data_offsets": [0, 4]}})", 4),
                  "not a dimension");
  EXPECT_ST_ERROR(st_bytes("{\"a\xff\": {}}", 0), "not valid JSON");  // invalid UTF-8
}

TEST(BadSafetensors, OffsetsAndSizes) {
  EXPECT_ST_ERROR(st_bytes(R"({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}})", 4),
                  "tensor 'w': data_offsets [0,8] lie past the end of the 4-byte data section");
  EXPECT_ST_ERROR(st_bytes(R"({"w": {"dtype": "F32", "shape": [2], "data_offsets": [8, 0]}})", 16),
                  "data_offsets [8,0] are not a range");
  EXPECT_ST_ERROR(
      st_bytes(R"({"w": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 8]}})", 8),
      "tensor 'w': data_offsets [0,8] hold 8 bytes, but shape [2,3] of F32 needs 24");
  EXPECT_ST_ERROR(
      st_bytes(
          R"({"w": {"dtype": "F32", "shape": [4611686018427387904, 8], "data_offsets": [0, 8]}})",
          8),
      "element count of shape");
  EXPECT_ST_ERROR(
      st_bytes(
          R"({"w": {"dtype": "F32", "shape": [1], "data_offsets": [18446744073709551612, 18446744073709551615]}})",
          8),
      "lie past the end");
  EXPECT_ST_ERROR(st_bytes(R"({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0.0, 4]}})", 4),
                  "are not a range");
}

TEST(BadSafetensors, UnknownDtype) {
  ErrorKind kind{};
  std::string msg = st_error(
      st_bytes(R"({"w": {"dtype": "Q7", "shape": [1], "data_offsets": [0, 1]}})", 1), &kind);
  EXPECT_NE(msg.find("bad.safetensors: tensor 'w': unknown dtype 'Q7'"), std::string::npos) << msg;
  EXPECT_EQ(kind, ErrorKind::kUnsupported);
}

// ---------------------------------------------------------------------------------------------
// safetensors folders

// A copy of a fixture folder to break one thing in.
std::string copy_folder(const std::string& fixture, const std::string& name) {
  fs::path dst = temp_path(name);
  fs::remove_all(dst);
  fs::copy(kDir + fixture, dst, fs::copy_options::recursive);
  return dst.string();
}

void write_text(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary);
  out << text;
}

std::string read_text(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void replace_in(const std::string& path, const std::string& from, const std::string& to) {
  std::string text = read_text(path);
  size_t at = text.find(from);
  ASSERT_NE(at, std::string::npos) << from << " not in " << path;
  text.replace(at, from.size(), to);
  write_text(path, text);
}

TEST(BadSafetensorsFolder, ConfigProblems) {
  std::string d = copy_folder("tiny_llama_st", "no_hidden");
  replace_in(d + "/config.json", "\"hidden_size\"", "\"hidden_sizes\"");
  EXPECT_ERROR_HAS([&] { ModelFile::open(d); },
                   d + "/config.json: missing required key 'hidden_size'");

  d = copy_folder("tiny_llama_st", "bad_config_json");
  write_text(d + "/config.json", "{\"model_type\": ");
  EXPECT_ERROR_HAS([&] { ModelFile::open(d); }, d + "/config.json: not valid JSON");

  d = copy_folder("tiny_llama_st", "no_config");
  fs::remove(d + "/config.json");
  EXPECT_ERROR_HAS([&] { ModelFile::open(d); }, d + ": model folder has no config.json");

  d = copy_folder("tiny_llama_st", "no_weights");
  fs::remove(d + "/model.safetensors");
  EXPECT_ERROR_HAS([&] { ModelFile::open(d); }, d + ": model folder has neither model.safetensors");

  d = copy_folder("tiny_llama_st", "no_tokenizer");
  fs::remove(d + "/tokenizer.json");
  EXPECT_ERROR_HAS([&] { ModelFile::open(d); }, d + ": model folder has no tokenizer.json");
}

TEST(BadSafetensorsFolder, ShapesAgainstConfig) {
  std::string d = copy_folder("tiny_llama_st", "wrong_ff");
  replace_in(d + "/config.json", "\"intermediate_size\": 96", "\"intermediate_size\": 128");
  EXPECT_ERROR_HAS([&] { ModelFile::open(d); },
                   d + ": tensor 'blk.0.ffn_gate.weight' has shape [64, 96], expected [64, 128]");

  d = copy_folder("tiny_llama_st", "extra_layer");
  replace_in(d + "/config.json", "\"num_hidden_layers\": 2", "\"num_hidden_layers\": 3");
  EXPECT_ERROR_HAS([&] { ModelFile::open(d); }, d + ": missing tensor 'blk.2.attn_norm.weight'");

  d = copy_folder("tiny_llama_st", "untied_no_head");
  replace_in(d + "/config.json", "\"vocab_size\": 272", "\"vocab_size\": 273");
  EXPECT_ERROR_HAS([&] { ModelFile::open(d); },
                   "tensor 'token_embd.weight' has shape [64, 272], expected [64, 273]");

  d = copy_folder("tiny_llama_st", "bad_heads");
  replace_in(d + "/config.json", "\"num_key_value_heads\": 2", "\"num_key_value_heads\": 3");
  EXPECT_ERROR_HAS([&] { ModelFile::open(d); },
                   d + ": hparams: n_head 4 is not a multiple of n_head_kv 3");
}

TEST(BadSafetensorsFolder, UnsupportedDtypeOnAUsedTensor) {
  std::string d = copy_folder("tiny_llama_st", "i32_norm");
  std::string st = d + "/model.safetensors";
  std::vector<uint8_t> b = read_bytes(st);
  // Same size in bytes: F32 -> I32 keeps every offset valid.
  uint64_t header_len = 0;
  std::memcpy(&header_len, b.data(), 8);
  std::string header(reinterpret_cast<const char*>(b.data() + 8), header_len);
  std::string_view norm = R"("model.norm.weight":{"dtype":"F32")";
  size_t at = header.find(norm);
  ASSERT_NE(at, std::string::npos);
  std::memcpy(b.data() + 8 + at + norm.size() - 4, "I32", 3);
  write_bytes(st, b);
  ErrorKind kind{};
  std::string msg = error_of([&] { ModelFile::open(d); }, &kind);
  EXPECT_NE(
      msg.find(st +
               ": tensor 'model.norm.weight' has dtype I32; only F32, F16 and BF16 are supported"),
      std::string::npos)
      << msg;
  EXPECT_EQ(kind, ErrorKind::kUnsupported);
}

TEST(BadSafetensorsFolder, HostileIndex) {
  std::string d = copy_folder("tiny_qwen2_sharded", "escape_index");
  replace_in(d + "/model.safetensors.index.json", "\"model-00001-of-00002.safetensors\"",
             "\"../../etc/passwd\"");
  EXPECT_ERROR_HAS([&] { ModelFile::open(d); },
                   "shard name '../../etc/passwd' is not a plain file name");

  d = copy_folder("tiny_qwen2_sharded", "missing_shard");
  fs::remove(d + "/model-00002-of-00002.safetensors");
  EXPECT_ERROR_HAS([&] { ModelFile::open(d); },
                   d + "/model-00002-of-00002.safetensors: cannot open");

  d = copy_folder("tiny_qwen2_sharded", "moved_tensor");
  replace_in(d + "/model.safetensors.index.json",
             "\"model.norm.weight\": \"model-00002-of-00002.safetensors\"",
             "\"model.norm.weight\": \"model-00001-of-00002.safetensors\"");
  EXPECT_ERROR_HAS([&] { ModelFile::open(d); },
                   "holds tensor 'model.norm.weight' that the index places in");

  d = copy_folder("tiny_qwen2_sharded", "truncated_shard");
  std::string shard = d + "/model-00001-of-00002.safetensors";
  std::vector<uint8_t> b = read_bytes(shard);
  b.resize(b.size() - 100);
  write_bytes(shard, b);
  EXPECT_ERROR_HAS([&] { ModelFile::open(d); }, shard + ": tensor '", "lie past the end");

  EXPECT_ERROR_HAS([&] { ModelFile::open(kDir + "tiny_llama_st/model.safetensors"); },
                   "open a safetensors model by its folder");
}

}  // namespace
}  // namespace tpnode
