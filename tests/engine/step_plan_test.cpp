#include "node/engine/step_plan.h"

#include <gtest/gtest.h>

#include "node/common/error.h"

namespace tpnode {
namespace {

TEST(StepPlan, RoundTrips) {
  StepPlan p;
  p.step = 42;
  p.seqs.push_back({7, 0, {1, 2, 3}, {4, 5}, true});
  p.seqs.push_back({9, 31, {8}, {0, 1}, false});
  const StepPlan q = deserialize_step_plan(serialize(p));
  EXPECT_EQ(q.step, 42u);
  EXPECT_FALSE(q.shutdown);
  ASSERT_EQ(q.seqs.size(), 2u);
  EXPECT_EQ(q.seqs[0].tokens, (std::vector<int32_t>{1, 2, 3}));
  EXPECT_EQ(q.seqs[1].n_past, 31);
  EXPECT_EQ(q.seqs[1].blocks, (std::vector<int32_t>{0, 1}));
  EXPECT_FALSE(q.seqs[1].want_logits);
  EXPECT_EQ(q.n_tokens(), 4);
  EXPECT_EQ(q.n_logits(), 1);
}

TEST(StepPlan, RejectsEveryTruncation) {
  StepPlan p;
  p.seqs.push_back({7, 0, {1, 2, 3}, {4, 5}, true});
  const std::string bytes = serialize(p);
  for (size_t n = 0; n < bytes.size(); ++n) {
    EXPECT_THROW(deserialize_step_plan(bytes.substr(0, n)), Error) << n;
  }
  EXPECT_THROW(deserialize_step_plan(bytes + "x"), Error);
}

}  // namespace
}  // namespace tpnode
