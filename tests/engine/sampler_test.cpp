#include "node/engine/sampler.h"

#include <gtest/gtest.h>

#include <cmath>
#include <map>

#include "node/common/error.h"

namespace tpnode {
namespace {

TEST(Sampler, GreedyIsArgmaxWithLowestIdOnTies) {
  Sampler s({});
  std::vector<float> l = {0.1f, 3.0f, -1.0f, 3.0f};
  EXPECT_EQ(s.sample(l, {}), 1);
}

TEST(Sampler, SameSeedSameTokens) {
  SamplingParams p;
  p.temperature = 1.0f;
  p.seed = 123;
  std::vector<float> l(100);
  for (int i = 0; i < 100; ++i) l[i] = std::sin(i * 0.37f) * 2;
  Sampler a(p), b(p);
  for (int i = 0; i < 50; ++i) EXPECT_EQ(a.sample(l, {}), b.sample(l, {}));
}

TEST(Sampler, FrequenciesFollowSoftmax) {
  SamplingParams p;
  p.temperature = 0.5f;
  p.seed = 7;
  std::vector<float> l = {1.0f, 0.5f, 0.0f, -0.5f};
  double z = 0;
  std::vector<double> prob(4);
  for (int i = 0; i < 4; ++i) z += prob[i] = std::exp(l[i] / 0.5);
  Sampler s(p);
  std::map<int, int> hist;
  const int n = 20000;
  for (int i = 0; i < n; ++i) ++hist[s.sample(l, {})];
  for (int i = 0; i < 4; ++i) {
    const double expect = prob[i] / z;
    const double sd = std::sqrt(expect * (1 - expect) / n);
    EXPECT_NEAR(hist[i] / double(n), expect, 5 * sd) << i;
  }
}

TEST(Sampler, TopKOneAndTopPAndMinPTruncate) {
  std::vector<float> l = {2.0f, 1.9f, 0.0f, -5.0f};
  SamplingParams p;
  p.temperature = 1.0f;
  p.top_k = 1;
  Sampler k1(p);
  for (int i = 0; i < 100; ++i) EXPECT_EQ(k1.sample(l, {}), 0);
  p.top_k = 0;
  p.top_p = 0.5f;  // token 0 alone has ~0.48: needs token 1 too, never 2 or 3
  Sampler tp(p);
  for (int i = 0; i < 200; ++i) EXPECT_LT(tp.sample(l, {}), 2);
  p.top_p = 1.0f;
  p.min_p = 0.5f;  // token 2 has exp(-2) = 0.135 of the top: cut
  Sampler mp(p);
  for (int i = 0; i < 200; ++i) EXPECT_LT(mp.sample(l, {}), 2);
}

TEST(Sampler, PenaltiesMoveTheArgmax) {
  std::vector<float> l = {2.0f, 1.9f};
  std::vector<int32_t> history = {0, 0};
  SamplingParams p;
  p.repetition_penalty = 1.1f;  // 2.0 / 1.1 = 1.82 < 1.9
  EXPECT_EQ(Sampler(p).sample(l, history), 1);
  p = {};
  p.frequency_penalty = 0.1f;  // 2.0 - 0.2 = 1.8
  EXPECT_EQ(Sampler(p).sample(l, history), 1);
  p = {};
  p.presence_penalty = 0.05f;  // 2.0 - 0.05 = 1.95: still 0
  EXPECT_EQ(Sampler(p).sample(l, history), 0);
}

TEST(Sampler, ValidatesParams) {
  SamplingParams p;
  p.top_p = 0.0f;
  EXPECT_THROW(p.validate(), Error);
  p = {};
  p.temperature = -1;
  EXPECT_THROW(p.validate(), Error);
}

}  // namespace
}  // namespace tpnode
