// graph_seqs: the sequence buckets of decode graphs.
#include "node/engine/backend.h"

#include <gtest/gtest.h>

#include <utility>

namespace tpnode::test {
namespace {

TEST(GraphSeqs, PowersOfTwoToThirtyTwoThenMultiplesOfEight) {
  const std::pair<int32_t, int32_t> cases[] = {{1, 1},   {2, 2},   {3, 4},   {5, 8},   {9, 16},
                                               {17, 32}, {32, 32}, {33, 40}, {40, 40}, {41, 48},
                                               {57, 64}, {64, 64}, {65, 72}, {250, 256}};
  for (const auto& [n, want] : cases) EXPECT_EQ(graph_seqs(n), want) << n << " sequences";
  for (int32_t n = 1; n <= 512; ++n) {
    const int32_t b = graph_seqs(n);
    EXPECT_GE(b, n);
    EXPECT_EQ(graph_seqs(b), b) << "a bucket is its own bucket";
  }
}

}  // namespace
}  // namespace tpnode::test
