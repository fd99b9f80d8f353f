#include "node/engine/kv_blocks.h"

#include <gtest/gtest.h>

#include <set>

namespace tpnode {
namespace {

TEST(KvBlockManager, ReservesGrowsAndReleases) {
  KvBlockManager kv(10, 16);
  EXPECT_EQ(kv.free_blocks(), 10);
  ASSERT_TRUE(kv.reserve(1, 17));  // 2 blocks
  EXPECT_EQ(kv.table(1).size(), 2u);
  ASSERT_TRUE(kv.reserve(1, 32));  // still 2
  EXPECT_EQ(kv.table(1).size(), 2u);
  ASSERT_TRUE(kv.reserve(1, 33));  // 3
  ASSERT_TRUE(kv.reserve(2, 16 * 7));
  EXPECT_EQ(kv.free_blocks(), 0);
  std::set<int32_t> all(kv.table(1).begin(), kv.table(1).end());
  all.insert(kv.table(2).begin(), kv.table(2).end());
  EXPECT_EQ(all.size(), 10u);  // no block handed out twice
  kv.release(1);
  kv.release(2);
  EXPECT_EQ(kv.free_blocks(), 10);
}

TEST(KvBlockManager, FailedReserveChangesNothing) {
  KvBlockManager kv(4, 16);
  ASSERT_TRUE(kv.reserve(1, 48));
  EXPECT_FALSE(kv.reserve(2, 32));
  EXPECT_FALSE(kv.has(2));
  EXPECT_FALSE(kv.reserve(1, 16 * 5));
  EXPECT_EQ(kv.table(1).size(), 3u);
  EXPECT_EQ(kv.free_blocks(), 1);
}

}  // namespace
}  // namespace tpnode
