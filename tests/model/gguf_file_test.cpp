// GgufFile against all_types.gguf, written by gguf-py (tools/make_model_file_fixtures.py):
// every metadata type reads back exactly, getters refuse other types, tensors match what
// gguf-py's reader saw (tests/fixtures/model_files/expected.json).
#include "node/model/gguf_file.h"

#include <gtest/gtest.h>

#include <boost/json.hpp>
#include <cmath>
#include <cstring>
#include <fstream>
#include <limits>
#include <sstream>

#include "node/common/error.h"
#include "node/model/mapped_file.h"

namespace tpnode {
namespace {

const std::string kDir = std::string(TPNODE_SOURCE_DIR) + "/tests/fixtures/model_files/";

boost::json::value expected_json() {
  std::ifstream in(kDir + "expected.json");
  std::stringstream ss;
  ss << in.rdbuf();
  return boost::json::parse(ss.str());
}

std::vector<uint8_t> read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

class GgufAllTypes : public ::testing::Test {
 protected:
  GgufAllTypes() : map_(kDir + "all_types.gguf"), f_(GgufFile::parse(map_.bytes(), map_.path())) {}
  MappedFile map_;
  GgufFile f_;
};

TEST_F(GgufAllTypes, HeaderAndAlignment) {
  EXPECT_EQ(f_.version(), 3u);
  EXPECT_EQ(f_.alignment(), 64u);
  EXPECT_EQ(f_.data_offset() % 64, 0u);
  EXPECT_EQ(f_.get<std::string>("general.architecture"), "fixture");
  EXPECT_EQ(f_.get<uint32_t>("general.alignment"), 64u);
}

TEST_F(GgufAllTypes, Scalars) {
  EXPECT_EQ(f_.get<uint8_t>("t.u8"), 200);
  EXPECT_EQ(f_.get<int8_t>("t.i8"), -100);
  EXPECT_EQ(f_.get<uint16_t>("t.u16"), 60000);
  EXPECT_EQ(f_.get<int16_t>("t.i16"), -30000);
  EXPECT_EQ(f_.get<uint32_t>("t.u32"), 4000000000u);
  EXPECT_EQ(f_.get<int32_t>("t.i32"), -2000000000);
  EXPECT_EQ(f_.get<uint64_t>("t.u64"), std::numeric_limits<uint64_t>::max());
  EXPECT_EQ(f_.get<int64_t>("t.i64"), std::numeric_limits<int64_t>::min());
  EXPECT_EQ(f_.get<float>("t.f32"), 0.1f);
  EXPECT_EQ(f_.get<double>("t.f64"), 3.141592653589793);
  EXPECT_TRUE(f_.get<bool>("t.bool_true"));
  EXPECT_FALSE(f_.get<bool>("t.bool_false"));
  EXPECT_EQ(f_.get<std::string>("t.string"), "h\xc3\xa9llo w\xc3\xb6rld \xe2\x9c\x93");
  EXPECT_EQ(f_.get<std::string>("t.empty_string"), "");
}

TEST_F(GgufAllTypes, IntegerGetterWidensAndRefusesOutOfRange) {
  EXPECT_EQ(f_.get_integer("t.u8"), 200);
  EXPECT_EQ(f_.get_integer("t.i16"), -30000);
  EXPECT_EQ(f_.get_integer("t.u32"), 4000000000);
  EXPECT_EQ(f_.get_integer("t.i64"), std::numeric_limits<int64_t>::min());
  EXPECT_THROW(f_.get_integer("t.u64"), Error);  // 2^64-1 does not fit
  EXPECT_THROW(f_.get_integer("t.f32"), Error);
  EXPECT_FALSE(f_.get_integer_optional("t.absent").has_value());
}

TEST_F(GgufAllTypes, Arrays) {
  EXPECT_EQ(f_.get_array<uint8_t>("t.arr_u8"), (std::vector<uint8_t>{1, 2, 255}));
  EXPECT_EQ(f_.get_array<int8_t>("t.arr_i8"), (std::vector<int8_t>{-128, 0, 127}));
  EXPECT_EQ(f_.get_array<uint16_t>("t.arr_u16"), (std::vector<uint16_t>{0, 65535}));
  EXPECT_EQ(f_.get_array<int16_t>("t.arr_i16"), (std::vector<int16_t>{-32768, 32767}));
  EXPECT_EQ(f_.get_array<uint32_t>("t.arr_u32"), (std::vector<uint32_t>{0, 4294967295u}));
  EXPECT_EQ(f_.get_array<int32_t>("t.arr_i32"),
            (std::vector<int32_t>{-2147483647 - 1, 7, 2147483647}));
  EXPECT_EQ(f_.get_array<uint64_t>("t.arr_u64"),
            (std::vector<uint64_t>{0, std::numeric_limits<uint64_t>::max()}));
  EXPECT_EQ(f_.get_array<int64_t>("t.arr_i64"),
            (std::vector<int64_t>{std::numeric_limits<int64_t>::min(),
                                  std::numeric_limits<int64_t>::max()}));
  EXPECT_EQ(f_.get_array<float>("t.arr_f32"), (std::vector<float>{0.5f, -1.25f, 1e30f}));
  EXPECT_EQ(f_.get_array<double>("t.arr_f64"), (std::vector<double>{0.1, -2.5e-300}));
  EXPECT_EQ(f_.get_array<bool>("t.arr_bool"), (std::vector<bool>{true, false, true}));
  EXPECT_EQ(f_.get_array<std::string>("t.arr_string"),
            (std::vector<std::string>{"a", "", "ccc", "\xe2\x96\x81tok"}));
}

TEST_F(GgufAllTypes, NestedArrays) {
  const GgufValue* v = f_.find("t.arr_nested");
  ASSERT_NE(v, nullptr);
  ASSERT_EQ(v->type, GgufType::kArray);
  ASSERT_EQ(v->elem_type, GgufType::kArray);
  ASSERT_EQ(v->arrays.size(), 2u);
  EXPECT_EQ(v->arrays[0].get_array<int32_t>(), (std::vector<int32_t>{1, 2}));
  EXPECT_EQ(v->arrays[1].get_array<int32_t>(), (std::vector<int32_t>{3, 4, 5}));

  const GgufValue* s = f_.find("t.arr_nested_str");
  ASSERT_NE(s, nullptr);
  ASSERT_EQ(s->arrays.size(), 2u);
  EXPECT_EQ(s->arrays[0].get_array<std::string>(), (std::vector<std::string>{"x"}));
  EXPECT_EQ(s->arrays[1].get_array<std::string>(), (std::vector<std::string>{"y", "z"}));

  const GgufValue* d = f_.find("t.arr_nested3");
  ASSERT_NE(d, nullptr);
  ASSERT_EQ(d->arrays.size(), 2u);
  ASSERT_EQ(d->arrays[1].arrays.size(), 1u);
  EXPECT_EQ(d->arrays[0].arrays[0].get_array<int32_t>(), (std::vector<int32_t>{7}));
  EXPECT_EQ(d->arrays[1].arrays[0].get_array<int32_t>(), (std::vector<int32_t>{8, 9}));
}

TEST_F(GgufAllTypes, TypedGettersRefuseOtherTypes) {
  auto expect_error = [](auto&& fn, const std::string& part) {
    try {
      fn();
      ADD_FAILURE() << "no error, expected one containing: " << part;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(part), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find("all_types.gguf"), std::string::npos) << e.what();
    }
  };
  expect_error([&] { f_.get<uint64_t>("t.u32"); }, "'t.u32' is u32, expected u64");
  expect_error([&] { f_.get<float>("t.f64"); }, "'t.f64' is f64, expected f32");
  expect_error([&] { f_.get<std::string>("t.arr_string"); }, "is array of string, expected string");
  expect_error([&] { f_.get_array<int32_t>("t.arr_u32"); },
               "is array of u32, expected array of i32");
  expect_error([&] { f_.get_array<std::string>("t.string"); },
               "is string, expected array of string");
  expect_error([&] { f_.get<bool>("t.missing"); }, "missing metadata key 't.missing'");
  EXPECT_FALSE(f_.get_optional<bool>("t.missing").has_value());
}

TEST_F(GgufAllTypes, MetadataOrderAndSummary) {
  const auto& kv = f_.metadata();
  ASSERT_GE(kv.size(), 3u);
  EXPECT_EQ(kv[0].first, "general.architecture");
  EXPECT_EQ(kv[1].first, "general.alignment");
  EXPECT_EQ(gguf_value_summary(*f_.find("t.i8")), "-100");
  EXPECT_EQ(gguf_value_summary(*f_.find("t.bool_true")), "true");
  EXPECT_EQ(gguf_value_summary(*f_.find("t.arr_u8")), "[3 u8s: 1, 2, 255]");
  EXPECT_EQ(gguf_value_summary(*f_.find("t.arr_string")),
            "[4 strings: \"a\", \"\", \"ccc\", \"\xe2\x96\x81tok\"]");
  EXPECT_EQ(gguf_value_summary(*f_.find("t.arr_nested")),
            "[2 arrays: [2 i32s: 1, 2], [3 i32s: 3, 4, 5]]");
}

TEST_F(GgufAllTypes, TensorsMatchGgufPy) {
  const boost::json::value all = expected_json();
  const boost::json::array& want = all.at("all_types.gguf").at("tensors").as_array();
  ASSERT_EQ(f_.tensors().size(), want.size());
  for (size_t i = 0; i < want.size(); ++i) {
    const GgufTensorInfo& t = f_.tensors()[i];
    const boost::json::object& w = want[i].as_object();
    SCOPED_TRACE(t.name);
    EXPECT_EQ(t.name, w.at("name").as_string());
    EXPECT_EQ(type_name(t.type), w.at("type").as_string());
    EXPECT_EQ(t.shape, boost::json::value_to<std::vector<int64_t>>(w.at("shape")));
    EXPECT_EQ(f_.data_offset() + t.offset, w.at("offset").to_number<uint64_t>());
    EXPECT_EQ(t.nbytes, w.at("nbytes").to_number<uint64_t>());
    EXPECT_EQ(t.offset % f_.alignment(), 0u);
    std::span<const uint8_t> bytes = f_.tensor_bytes(t);
    ASSERT_EQ(bytes.size(), t.nbytes);
    int64_t n = 1;
    for (int64_t d : t.shape) n *= d;
    std::vector<float> values(n);
    dequantize_row(t.type, bytes.data(), values.data(), n);
    const boost::json::array& first = w.at("first").as_array();
    for (size_t j = 0; j < first.size(); ++j)
      EXPECT_EQ(values[j], static_cast<float>(first[j].to_number<double>()));
    double sum = 0;
    for (float x : values) sum += x;
    EXPECT_NEAR(sum, w.at("sum").to_number<double>(), 1e-9 * (1 + std::abs(sum)));
  }
  EXPECT_NE(f_.find_tensor("q8_0_tensor"), nullptr);
  EXPECT_EQ(f_.find_tensor("absent"), nullptr);
}

TEST(GgufFile, Version2ParsesLikeVersion3) {
  // v2 and v3 differ only in v3 allowing big-endian files: the little-endian layout is the same.
  std::vector<uint8_t> b = read_bytes(kDir + "all_types.gguf");
  ASSERT_GT(b.size(), 8u);
  b[4] = 2;
  GgufFile f = GgufFile::parse(b, "v2.gguf");
  EXPECT_EQ(f.version(), 2u);
  EXPECT_EQ(f.get<int8_t>("t.i8"), -100);
  EXPECT_EQ(f.tensors().size(), 4u);
}

// A hand-built file: zero-length arrays and no tensors are valid GGUF that gguf-py will not write.
TEST(GgufFile, EmptyArraysAndNoTensors) {
  std::vector<uint8_t> b;
  auto put = [&](const void* p, size_t n) {
    b.insert(b.end(), static_cast<const uint8_t*>(p), static_cast<const uint8_t*>(p) + n);
  };
  auto u32 = [&](uint32_t v) { put(&v, 4); };
  auto u64 = [&](uint64_t v) { put(&v, 8); };
  auto str = [&](std::string_view s) {
    u64(s.size());
    put(s.data(), s.size());
  };
  u32(kGgufMagic);
  u32(3);
  u64(0);  // tensors
  u64(2);  // keys
  str("empty.u8");
  u32(static_cast<uint32_t>(GgufType::kArray));
  u32(static_cast<uint32_t>(GgufType::kU8));
  u64(0);
  str("empty.str");
  u32(static_cast<uint32_t>(GgufType::kArray));
  u32(static_cast<uint32_t>(GgufType::kString));
  u64(0);
  GgufFile f = GgufFile::parse(b, "memory");
  EXPECT_TRUE(f.get_array<uint8_t>("empty.u8").empty());
  EXPECT_TRUE(f.get_array<std::string>("empty.str").empty());
  EXPECT_TRUE(f.tensors().empty());
  EXPECT_EQ(gguf_value_summary(*f.find("empty.u8")), "[0 u8s]");
}

TEST(MappedFile, MapsWholeFileAndMoves) {
  MappedFile m(kDir + "all_types.gguf");
  std::vector<uint8_t> b = read_bytes(kDir + "all_types.gguf");
  ASSERT_EQ(m.size(), b.size());
  EXPECT_EQ(std::memcmp(m.bytes().data(), b.data(), b.size()), 0);
  MappedFile moved(std::move(m));
  EXPECT_EQ(moved.size(), b.size());
  EXPECT_EQ(m.size(), 0u);  // NOLINT(bugprone-use-after-move): moved-from is empty by contract
  moved.release_pages();
  EXPECT_EQ(std::memcmp(moved.bytes().data(), b.data(), b.size()),
            0);  // pages come back from the file
}

TEST(MappedFile, MissingFileNamesThePath) {
  try {
    MappedFile m(kDir + "no_such_file.gguf");
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("no_such_file.gguf: cannot open"), std::string::npos)
        << e.what();
  }
}

}  // namespace
}  // namespace tpnode
