// LocalCommunicator: the single-rank communicator of a plain `tpnode` process.
#include "parallel/local_communicator.h"

#include <gtest/gtest.h>

#include <vector>

#include "node/common/error.h"

namespace tpnode {
namespace {

TEST(LocalCommunicator, CollectivesAreIdentities) {
  LocalCommunicator c;
  EXPECT_EQ(c.rank(), 0);
  EXPECT_EQ(c.size(), 1);
  std::vector<float> v = {1.5f, -2.0f, 3.25f};
  c.all_reduce_sum(v.data(), v.size());
  EXPECT_EQ(v, (std::vector<float>{1.5f, -2.0f, 3.25f}));

  std::vector<float> out(3, 0.0f);
  c.gather_host(v.data(), v.size(), out.data(), {3});
  EXPECT_EQ(out, v);

  int x = 7, y = 0;
  c.all_gather(&x, sizeof(x), &y);
  EXPECT_EQ(y, 7);
  c.broadcast(&x, sizeof(x), 0);
  c.broadcast_idle(&x, sizeof(x), 0);
  c.barrier();
  c.barrier_idle();
  EXPECT_EQ(x, 7);
}

TEST(LocalCommunicator, RejectsBadArguments) {
  LocalCommunicator c;
  float f = 1;
  EXPECT_THROW(c.gather_host(&f, 1, &f, {2}), Error);
  EXPECT_THROW(c.broadcast(&f, sizeof(f), 1), Error);
}

TEST(LocalCommunicator, FailedStaysFailed) {
  LocalCommunicator c;
  EXPECT_FALSE(c.failed());
  c.mark_failed("rank 0 failed in step 3: boom");
  c.mark_failed("a later story");
  EXPECT_TRUE(c.failed());
  EXPECT_EQ(c.failure(), "rank 0 failed in step 3: boom");
  float f = 1;
  try {
    c.all_reduce_sum(&f, 1);
    FAIL() << "no error after failure";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kRuntime);
    EXPECT_NE(std::string(e.what()).find("boom"), std::string::npos);
  }
}

}  // namespace
}  // namespace tpnode
