// The CPU backend against outputs of Hugging Face transformers itself (float32 on CPU),
// recorded by tools/make_backend_cpu_fixtures.py in tests/fixtures/backend_cpu/hf_ops.txt.
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "kernels/cpu/rope.h"
#include "node/backend/cpu/cpu_backend.h"
#include "tests/backend_cpu/test_support.h"

namespace tpnode {
namespace {

using Arrays = std::map<std::string, std::vector<float>>;

const Arrays& fixture() {
  static const Arrays arrays = [] {
    Arrays a;
    std::ifstream in(std::string(TPNODE_SOURCE_DIR) + "/tests/fixtures/backend_cpu/hf_ops.txt");
    std::string line;
    while (std::getline(in, line)) {
      if (line.empty() || line[0] == '#') continue;
      std::istringstream ls(line);
      std::string name;
      size_t n = 0;
      ls >> name >> n;
      std::vector<float> v(n);
      for (float& x : v) {
        std::string tok;
        ls >> tok;
        x = std::stof(tok);
      }
      a[name] = std::move(v);
    }
    return a;
  }();
  return arrays;
}

const std::vector<float>& get(const std::string& name) {
  const auto it = fixture().find(name);
  if (it == fixture().end()) throw std::runtime_error("fixture array missing: " + name);
  return it->second;
}

// Largest |got - want| relative to max(1, |want|).
double worst_error(const std::vector<float>& got, const std::vector<float>& want) {
  EXPECT_EQ(got.size(), want.size());
  double worst = 0.0;
  for (size_t i = 0; i < got.size() && i < want.size(); ++i) {
    const double scale = std::max(1.0, std::abs(static_cast<double>(want[i])));
    worst = std::max(worst, std::abs(static_cast<double>(got[i]) - want[i]) / scale);
  }
  return worst;
}

struct HfRopeCase {
  const char* name;
  float theta;
  RopeScaling scaling;
};

class HfRope : public ::testing::TestWithParam<HfRopeCase> {};

TEST_P(HfRope, InvFreqAndRotationMatchTransformers) {
  const HfRopeCase& c = GetParam();
  const std::string pre = std::string("rope.") + c.name;
  const auto& shape = get("rope.shape");
  const auto n_head = static_cast<int64_t>(shape[0]);
  const auto n_head_kv = static_cast<int64_t>(shape[1]);
  const auto d = static_cast<int64_t>(shape[2]);

  EXPECT_LT(worst_error(cpu::rope_inv_freq(d, c.theta, c.scaling), get(pre + ".inv_freq")), 1e-7);

  // One token per sequence, at the recorded positions.
  std::vector<test::SeqSpec> seqs;
  for (float p : get("rope.positions")) seqs.push_back({static_cast<int32_t>(p), 1});
  const BatchMeta batch = test::make_batch(seqs, std::vector<std::vector<int32_t>>(seqs.size()));
  CpuBackend backend(CpuBackendOptions{.n_threads = 2});
  backend.begin_step(batch);
  std::vector<float> q = get(pre + ".q");
  std::vector<float> k = get(pre + ".k");
  backend.rope(q.data(), k.data(),
               RopeParams{.n_head = n_head,
                          .n_head_kv = n_head_kv,
                          .head_dim = d,
                          .style = RopeStyle::kNeox,
                          .theta = c.theta,
                          .scaling = c.scaling});
  EXPECT_LT(worst_error(q, get(pre + ".q_out")), 1e-6);
  EXPECT_LT(worst_error(k, get(pre + ".k_out")), 1e-6);
}

INSTANTIATE_TEST_SUITE_P(Transformers, HfRope,
                         ::testing::Values(HfRopeCase{"default", 100000.0f, RopeScaling{}},
                                           HfRopeCase{"linear", 10000.0f,
                                                      test::linear_scaling(2.0f)},
                                           HfRopeCase{"llama3", 500000.0f, test::llama3_scaling()}),
                         [](const auto& info) { return std::string(info.param.name); });

TEST(HfOps, RmsNormMatchesTransformers) {
  const auto& shape = get("rmsnorm.shape");
  const auto rows = static_cast<int64_t>(shape[0]);
  const auto n = static_cast<int64_t>(shape[1]);
  CpuBackend backend(CpuBackendOptions{.n_threads = 2});
  std::vector<float> y(rows * n);
  backend.rmsnorm(get("rmsnorm.x").data(), get("rmsnorm.w").data(), y.data(), rows, n,
                  get("rmsnorm.eps")[0]);
  EXPECT_LT(worst_error(y, get("rmsnorm.y")), 1e-6);
}

TEST(HfOps, SwigluMatchesTransformers) {
  CpuBackend backend(CpuBackendOptions{.n_threads = 2});
  const auto& gate = get("swiglu.gate");
  std::vector<float> out(gate.size());
  backend.swiglu(gate.data(), get("swiglu.up").data(), out.data(),
                 static_cast<int64_t>(gate.size()));
  EXPECT_LT(worst_error(out, get("swiglu.out")), 1e-6);
}

TEST(HfOps, CausalGqaAttentionMatchesTransformers) {
  const auto& shape = get("attention.shape");
  const auto n_head = static_cast<int64_t>(shape[0]);
  const auto n_head_kv = static_cast<int64_t>(shape[1]);
  const auto d = static_cast<int64_t>(shape[2]);
  const auto seq = static_cast<int32_t>(shape[3]);
  const int64_t block_size = 4;
  CpuBackend backend(CpuBackendOptions{.n_threads = 3});
  backend.init_kv_cache(KvCacheShape{.n_layer = 1,
                                     .n_blocks = 16,
                                     .block_size = block_size,
                                     .n_head_kv = n_head_kv,
                                     .head_dim = d});
  // Prefill the first 8 tokens, then the last 3 as a second chunk, through scattered blocks.
  const std::vector<int32_t> table = {11, 2, 7};
  std::vector<float> out(static_cast<size_t>(seq * n_head * d));
  const AttentionParams p{.layer = 0,
                          .n_head = n_head,
                          .n_head_kv = n_head_kv,
                          .head_dim = d,
                          .scale = 1.0f / std::sqrt(static_cast<float>(d))};
  const int32_t split = 8;
  for (const auto& [first, count] : {std::pair{0, split}, std::pair{split, seq - split}}) {
    backend.begin_step(test::make_batch({{first, count}}, {table}));
    backend.attention(get("attention.q").data() + first * n_head * d,
                      get("attention.k").data() + first * n_head_kv * d,
                      get("attention.v").data() + first * n_head_kv * d,
                      out.data() + first * n_head * d, p);
  }
  EXPECT_LT(worst_error(out, get("attention.out")), 2e-6);
}

}  // namespace
}  // namespace tpnode
