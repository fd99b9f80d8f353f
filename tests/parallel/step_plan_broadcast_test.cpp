// Step plans from rank 0 to every rank: variable sizes, shutdown flag, order preserved.
#include "parallel/step_plan_broadcast.h"

#include <gtest/gtest.h>

#include "node/common/error.h"
#include "tests/parallel/mpi_fixture.h"

namespace tpnode::test {
namespace {

// Every rank can build plan k itself and compare it with what it received.
StepPlan make_plan(uint64_t k) {
  StepPlan p;
  p.step = 1000 + k;
  const size_t n_seqs = k % 5;
  for (size_t s = 0; s < n_seqs; ++s) {
    SeqStep q;
    q.seq_id = k * 100 + s;
    q.n_past = static_cast<int32_t>(k * 3 + s);
    // From one decode token to a large prefill chunk.
    const size_t n_tokens = s == 0 ? 1 : (k * 977 + s * 131) % 20000;
    for (size_t t = 0; t < n_tokens; ++t)
      q.tokens.push_back(static_cast<int32_t>((t * 7 + k) % 49152));
    for (size_t b = 0; b < (q.n_past + n_tokens + 15) / 16; ++b)
      q.blocks.push_back(static_cast<int32_t>(b * 2 + s));
    q.want_logits = (s + k) % 2 == 0;
    p.seqs.push_back(std::move(q));
  }
  return p;
}

void expect_same(const StepPlan& a, const StepPlan& b) {
  ASSERT_EQ(a.step, b.step);
  ASSERT_EQ(a.shutdown, b.shutdown);
  ASSERT_EQ(a.seqs.size(), b.seqs.size());
  for (size_t i = 0; i < a.seqs.size(); ++i) {
    EXPECT_EQ(a.seqs[i].seq_id, b.seqs[i].seq_id);
    EXPECT_EQ(a.seqs[i].n_past, b.seqs[i].n_past);
    EXPECT_EQ(a.seqs[i].tokens, b.seqs[i].tokens);
    EXPECT_EQ(a.seqs[i].blocks, b.seqs[i].blocks);
    EXPECT_EQ(a.seqs[i].want_logits, b.seqs[i].want_logits);
  }
}

TEST(StepPlanBroadcast, RoundTripsVariableSizesInOrder) {
  Communicator& comm = world().comm();
  if (comm.size() < 2) GTEST_SKIP() << "needs at least 2 ranks: run under mpirun -np N (N >= 2)";
  constexpr uint64_t kPlans = 12;
  for (uint64_t k = 0; k < kPlans; ++k) {
    const StepPlan expect = make_plan(k);
    if (comm.rank() == 0) {
      send_step_plan(comm, expect);
    } else {
      expect_same(receive_step_plan(comm), expect);
    }
  }
  StepPlan stop;
  stop.step = 99;
  stop.shutdown = true;
  if (comm.rank() == 0) {
    send_step_plan(comm, stop);
  } else {
    const StepPlan got = receive_step_plan(comm);
    EXPECT_TRUE(got.shutdown);
    EXPECT_EQ(got.step, 99u);
    EXPECT_TRUE(got.seqs.empty());
  }
}

TEST(StepPlanBroadcast, OnlyRankZeroSends) {
  Communicator& comm = world().comm();
  if (comm.rank() == 0) {
    if (comm.size() > 1) {
      EXPECT_THROW(receive_step_plan(comm), Error);
    }
  } else {
    EXPECT_THROW(send_step_plan(comm, StepPlan{}), Error);
  }
}

}  // namespace
}  // namespace tpnode::test
