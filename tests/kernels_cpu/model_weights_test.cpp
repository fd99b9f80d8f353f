// Dequantization and matmul on the default model's real weights (skipped without the
// model). The expected values are gguf-py's dequantization of the first rows of each tensor
// (tests/fixtures/dequant/model_<tensor>.f32, tools/make_dequant_fixtures.py --model).
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <random>
#include <string>
#include <vector>

#include "kernels/cpu/matmul_path.h"
#include "kernels/cpu/quants.h"
#include "node/model/model_file.h"
#include "node/model/tensor_type.h"

namespace tpnode::cpu {
namespace {

const std::string kModel = std::string(TPNODE_SOURCE_DIR) + "/models/SmolLM2-135M-Instruct.Q4_1.gguf";

std::vector<float> read_floats(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  EXPECT_TRUE(in.good()) << "cannot open " << path;
  const std::vector<char> bytes{std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
  std::vector<float> v(bytes.size() / sizeof(float));
  std::memcpy(v.data(), bytes.data(), v.size() * sizeof(float));
  return v;
}

class ModelWeights : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!std::filesystem::exists(kModel)) GTEST_SKIP() << "default model not present: " << kModel;
    model_ = ModelFile::open(kModel);
  }
  std::unique_ptr<ModelFile> model_;
};

TEST_F(ModelWeights, DequantizeMatchesGgufPy) {
  for (const char* name : {"blk.0.ffn_gate.weight", "blk.0.ffn_down.weight", "token_embd.weight",
                           "output_norm.weight"}) {
    const TensorView& t = model_->get(name);
    const std::vector<float> want =
        read_floats(std::string(TPNODE_SOURCE_DIR) + "/tests/fixtures/dequant/model_" + name + ".f32");
    ASSERT_EQ(want.size() % t.cols(), 0u) << name;
    const int64_t rows = static_cast<int64_t>(want.size()) / t.cols();
    std::vector<float> got(want.size());
    const size_t stride = row_bytes(t.type, t.cols());
    for (int64_t r = 0; r < rows; ++r) {
      dequantize_row(t.type, t.data + r * stride, got.data() + r * t.cols(), t.cols());
    }
    EXPECT_EQ(std::memcmp(got.data(), want.data(), want.size() * sizeof(float)), 0) << name;
  }
}

// The LM head and an FFN matrix of the real model against a double reference; the bound is
// the activation-rounding one derived in matmul_test.cpp (E_q + E_f).
TEST_F(ModelWeights, MatmulMatchesReference) {
  ThreadPool pool(2);
  for (const char* name : {"blk.0.ffn_gate.weight", "blk.0.ffn_down.weight", "token_embd.weight"}) {
    const TensorView& t = model_->get(name);
    const int64_t k = t.cols();
    const int64_t n = std::min<int64_t>(t.rows(), 1000);
    const int64_t m = 3;
    const size_t stride = row_bytes(t.type, k);
    std::mt19937_64 rng(5);
    std::normal_distribution<float> nd(0.0f, 1.0f);
    std::vector<float> x(static_cast<size_t>(m * k));
    for (auto& v : x) v = nd(rng);
    std::vector<float> w(static_cast<size_t>(k));
    for (MatmulPath path : {MatmulPath::kAuto, MatmulPath::kScalar}) {
      std::vector<float> y(static_cast<size_t>(m * n));
      MatmulArgs a;
      a.w_type = t.type;
      a.w = t.data;
      a.w_row_stride = stride;
      a.n = n;
      a.k = k;
      a.x = x.data();
      a.m = m;
      a.y = y.data();
      matmul(a, pool, path);
      int failures = 0;
      for (int64_t j = 0; j < n; ++j) {
        dequantize_row(t.type, t.data + j * stride, w.data(), k);
        for (int64_t i = 0; i < m; ++i) {
          const float* xi = x.data() + i * k;
          double ref = 0, e_q = 0, s = 0;
          for (int64_t b = 0; b < k; b += 32) {
            double amax = 0, wsum = 0;
            for (int64_t l = b; l < b + 32; ++l) {
              amax = std::max(amax, std::fabs(static_cast<double>(xi[l])));
              wsum += std::fabs(static_cast<double>(w[l]));
            }
            e_q += 1.001 * amax / 254.0 * wsum;
          }
          for (int64_t l = 0; l < k; ++l) {
            // |m_b| of the Q4_1 block (its term is summed apart from d·q).
            double min_abs = 0;
            if (t.type == TensorType::kQ4_1) {
              min_abs = std::fabs(fp16_to_fp32(load_f16(t.data + j * stride + (l / 32) * sizeof(BlockQ4_1) + 2)));
            }
            ref += static_cast<double>(w[l]) * xi[l];
            s += (std::fabs(static_cast<double>(w[l])) + min_abs) * 1.01 * std::fabs(static_cast<double>(xi[l]));
          }
          const double tol = e_q + 4.0 * (k / 32 + 4) * std::ldexp(1.0, -24) * s;
          const double got = y[static_cast<size_t>(i * n + j)];
          if (std::fabs(got - ref) > tol && failures++ < 5) {
            ADD_FAILURE() << name << " y[" << i << "," << j << "]=" << got << " ref=" << ref
                          << " tol=" << tol;
          }
        }
      }
      EXPECT_EQ(failures, 0) << name;
    }
  }
}

}  // namespace
}  // namespace tpnode::cpu
