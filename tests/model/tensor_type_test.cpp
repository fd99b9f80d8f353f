// Dequantization against gguf-py: tests/fixtures/dequant/<T>.bin holds random blocks and
// <T>.f32 what gguf.quants.dequantize makes of them (tools/make_dequant_fixtures.py).
#include "node/model/tensor_type.h"

#include <gtest/gtest.h>

#include <cstring>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "node/common/error.h"

namespace tpnode {
namespace {

std::vector<char> read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  EXPECT_TRUE(in.good()) << "cannot open " << path;
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

class DequantFixture : public ::testing::TestWithParam<TensorType> {};

TEST_P(DequantFixture, BitExactWithGgufPy) {
  const TensorType type = GetParam();
  const std::string base = std::string(TPNODE_SOURCE_DIR) + "/tests/fixtures/dequant/" +
                           std::string(type_name(type));
  const std::vector<char> raw = read_file(base + ".bin");
  const std::vector<char> want_bytes = read_file(base + ".f32");
  const TypeTraits& traits = type_traits(type);
  ASSERT_GT(raw.size(), 0u);
  ASSERT_EQ(raw.size() % traits.block_bytes, 0u);
  const int64_t n = static_cast<int64_t>(raw.size() / traits.block_bytes) * traits.block_size;
  ASSERT_EQ(want_bytes.size(), static_cast<size_t>(n) * sizeof(float));
  ASSERT_EQ(row_bytes(type, n), raw.size());

  std::vector<uint32_t> want(static_cast<size_t>(n));
  std::memcpy(want.data(), want_bytes.data(), want_bytes.size());
  std::vector<float> got(static_cast<size_t>(n));
  dequantize_row(type, raw.data(), got.data(), n);

  int64_t mismatches = 0;
  for (int64_t i = 0; i < n; ++i) {
    uint32_t bits;
    std::memcpy(&bits, &got[static_cast<size_t>(i)], sizeof bits);
    if (bits != want[static_cast<size_t>(i)] && ++mismatches <= 5) {
      ADD_FAILURE() << type_name(type) << " element " << i << " (block " << i / traits.block_size
                    << "): got 0x" << std::hex << bits << " want 0x" << want[static_cast<size_t>(i)];
    }
  }
  EXPECT_EQ(mismatches, 0);

  // Dequantizing one block at a time gives the same values (no state across blocks).
  const int64_t bs = traits.block_size;
  std::vector<float> one(static_cast<size_t>(bs));
  for (int64_t b = 0; b < n / bs; b += 7) {
    dequantize_row(type, raw.data() + b * traits.block_bytes, one.data(), bs);
    EXPECT_EQ(std::memcmp(one.data(), got.data() + b * bs, sizeof(float) * bs), 0) << "block " << b;
  }
}

INSTANTIATE_TEST_SUITE_P(AllTypes, DequantFixture,
                         ::testing::Values(TensorType::kF32, TensorType::kF16, TensorType::kBF16,
                                           TensorType::kQ8_0, TensorType::kQ4_0, TensorType::kQ4_1,
                                           TensorType::kQ5_0, TensorType::kQ5_1, TensorType::kQ4_K,
                                           TensorType::kQ5_K, TensorType::kQ6_K),
                         [](const auto& info) { return std::string(type_name(info.param)); });

TEST(TensorType, TraitsMatchGgml) {
  struct Row {
    TensorType type;
    const char* name;
    int64_t block_size;
    size_t block_bytes;
  };
  // GGML_QUANT_SIZES in gguf-py's constants.py.
  const Row rows[] = {
      {TensorType::kF32, "F32", 1, 4},      {TensorType::kF16, "F16", 1, 2},
      {TensorType::kBF16, "BF16", 1, 2},    {TensorType::kQ8_0, "Q8_0", 32, 34},
      {TensorType::kQ4_0, "Q4_0", 32, 18},  {TensorType::kQ4_1, "Q4_1", 32, 20},
      {TensorType::kQ5_0, "Q5_0", 32, 22},  {TensorType::kQ5_1, "Q5_1", 32, 24},
      {TensorType::kQ4_K, "Q4_K", 256, 144}, {TensorType::kQ5_K, "Q5_K", 256, 176},
      {TensorType::kQ6_K, "Q6_K", 256, 210},
  };
  for (const Row& r : rows) {
    const TypeTraits& t = type_traits(r.type);
    EXPECT_EQ(t.name, r.name);
    EXPECT_EQ(type_name(r.type), r.name);
    EXPECT_EQ(t.block_size, r.block_size) << r.name;
    EXPECT_EQ(t.block_bytes, r.block_bytes) << r.name;
    EXPECT_EQ(t.quantized, r.block_size > 1) << r.name;
    EXPECT_EQ(tensor_type_from_gguf(static_cast<uint32_t>(r.type)), r.type) << r.name;
    EXPECT_EQ(row_bytes(r.type, 0), 0u);
    EXPECT_EQ(row_bytes(r.type, 3 * r.block_size), 3 * r.block_bytes) << r.name;
  }
  // The default model's shapes.
  EXPECT_EQ(row_bytes(TensorType::kQ4_1, 576), 18u * 20u);
  EXPECT_EQ(row_bytes(TensorType::kQ8_0, 576), 18u * 34u);
  EXPECT_EQ(row_bytes(TensorType::kF32, 576), 576u * 4u);
  EXPECT_EQ(row_bytes(TensorType::kQ6_K, 1536), 6u * 210u);
}

TEST(TensorType, UnsupportedTypes) {
  for (uint32_t raw : {4u, 5u, 9u, 10u, 11u, 15u, 16u, 24u, 29u, 31u, 39u, 1000u}) {
    EXPECT_FALSE(tensor_type_from_gguf(raw).has_value()) << raw;
  }
  EXPECT_THROW(type_traits(TensorType::kQ8_K), Error);
  EXPECT_THROW(type_traits(TensorType::kQ8_1), Error);
  EXPECT_THROW(row_bytes(TensorType::kQ8_1, 32), Error);
  EXPECT_EQ(type_name(TensorType::kQ8_K), "Q8_K");
  EXPECT_EQ(type_name(static_cast<TensorType>(77)), "unknown");
  try {
    type_traits(TensorType::kQ8_K);
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kUnsupported);
  }
}

TEST(TensorType, FromNameInAnyCase) {
  EXPECT_EQ(tensor_type_from_name("q4_1"), TensorType::kQ4_1);
  EXPECT_EQ(tensor_type_from_name("Q4_1"), TensorType::kQ4_1);
  EXPECT_EQ(tensor_type_from_name("q6_K"), TensorType::kQ6_K);
  EXPECT_EQ(tensor_type_from_name("bf16"), TensorType::kBF16);
  EXPECT_EQ(tensor_type_from_name("f32"), TensorType::kF32);
  // Activation-only and unknown names.
  for (const char* name : {"q8_1", "Q8_K", "q4_k_m", "q4", "", "q4_11", "bf16 "}) {
    EXPECT_FALSE(tensor_type_from_name(name).has_value()) << name;
  }
}

TEST(TensorType, RejectsPartialBlocks) {
  std::vector<uint8_t> buf(1024);
  std::vector<float> out(1024);
  for (TensorType t : {TensorType::kQ8_0, TensorType::kQ4_1, TensorType::kQ5_0}) {
    EXPECT_THROW(row_bytes(t, 33), Error);
    EXPECT_THROW(row_bytes(t, 31), Error);
    EXPECT_THROW(row_bytes(t, -32), Error);
    EXPECT_THROW(dequantize_row(t, buf.data(), out.data(), 48), Error);
  }
  for (TensorType t : {TensorType::kQ4_K, TensorType::kQ5_K, TensorType::kQ6_K}) {
    EXPECT_THROW(row_bytes(t, 32), Error);
    EXPECT_THROW(row_bytes(t, 288), Error);
    EXPECT_THROW(dequantize_row(t, buf.data(), out.data(), 128), Error);
  }
  EXPECT_EQ(row_bytes(TensorType::kF16, 7), 14u);
  EXPECT_THROW(dequantize_row(TensorType::kQ8_1, buf.data(), out.data(), 32), Error);
}

}  // namespace
}  // namespace tpnode
