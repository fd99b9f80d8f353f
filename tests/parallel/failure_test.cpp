// Failure detection on communicators of their own (short timeouts, no job abort), so that the
// world communicator stays healthy for the other tests. Ranks resynchronise through raw
// MPI_Barrier on MPI_COMM_WORLD after each failure.
#include <gtest/gtest.h>

#ifdef TPNODE_HAVE_MPI
#include <mpi.h>
#include <sys/resource.h>

#include <chrono>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "node/common/error.h"
#include "parallel/mpi/mpi_communicator.h"
#include "tests/parallel/mpi_fixture.h"

namespace tpnode::test {
namespace {

using namespace std::chrono_literals;

std::unique_ptr<mpi::MpiCommunicator> make_comm(double timeout_s) {
  mpi::MpiCommunicatorOptions o;
  o.timeout_s = timeout_s;
  o.abort_grace_s = -1;  // report, never abort the test job
  return std::make_unique<mpi::MpiCommunicator>(MPI_COMM_WORLD, o);
}

double process_cpu_s() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return static_cast<double>(u.ru_utime.tv_sec + u.ru_stime.tv_sec) +
         static_cast<double>(u.ru_utime.tv_usec + u.ru_stime.tv_usec) * 1e-6;
}

#define SKIP_UNLESS_PEERS()                                                              \
  if (!world().uses_mpi() || world().topology().size < 2)                                \
  GTEST_SKIP() << "needs at least 2 ranks: run under mpirun -np N (N >= 2), e.g. ctest " \
                  "-R parallel.mpi"

TEST(Failure, RankLateForAllReduceIsNamed) {
  SKIP_UNLESS_PEERS();
  auto comm = make_comm(1.5);
  const int last = comm->size() - 1;
  std::vector<float> data(1000, 1.0f);
  std::string message;
  const auto t0 = std::chrono::steady_clock::now();
  if (comm->rank() == last) std::this_thread::sleep_for(3500ms);
  try {
    comm->all_reduce_sum(data.data(), data.size());
  } catch (const Error& e) {
    message = e.what();
  }
  const double waited =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  ASSERT_FALSE(message.empty()) << "rank " << comm->rank() << ": no error";
  EXPECT_TRUE(comm->failed());
  if (comm->rank() != last) {
    EXPECT_NE(message.find(fmt::format("rank {} (", last)), std::string::npos) << message;
    EXPECT_NE(message.find("lost"), std::string::npos) << message;
    EXPECT_NE(message.find("absent from all_reduce_sum"), std::string::npos) << message;
    for (int r = 0; r < last; ++r) {  // ranks that did arrive are not blamed
      EXPECT_EQ(message.find(fmt::format("rank {} (", r)), std::string::npos) << message;
    }
    EXPECT_LT(waited, 3.4) << "the timeout should fire near 1.5 s";
    EXPECT_GT(waited, 1.4);
  }
  // A failed communicator refuses further work at once, with the same story.
  std::string again;
  try {
    comm->barrier();
  } catch (const Error& e) {
    again = e.what();
  }
  EXPECT_NE(again.find(message), std::string::npos) << again;
  MPI_Barrier(MPI_COMM_WORLD);
}

TEST(Failure, IdleWaitOutlastsTimeoutWhileRootIsAlive) {
  SKIP_UNLESS_PEERS();
  auto comm = make_comm(1.0);
  // Rank 0 idles for 2.5 timeouts: its heartbeats keep the others waiting.
  uint64_t value = 0;
  if (comm->rank() == 0) {
    std::this_thread::sleep_for(2500ms);
    value = 0xC0FFEE;
  }
  const double cpu0 = process_cpu_s();
  EXPECT_NO_THROW(comm->broadcast_idle(&value, sizeof(value), 0));
  const double cpu_used = process_cpu_s() - cpu0;
  EXPECT_EQ(value, 0xC0FFEEu);
  if (comm->rank() != 0) {
    // Waiting idle (both threads) must not burn a core: well under 10% of the 2.5 s.
    EXPECT_LT(cpu_used, 0.25) << "rank " << comm->rank() << " used " << cpu_used << " s of CPU";
  }
  EXPECT_FALSE(comm->failed());
  // Still healthy afterwards.
  std::vector<float> data(10, 1.0f);
  EXPECT_NO_THROW(comm->all_reduce_sum(data.data(), data.size()));
  EXPECT_EQ(data[9], static_cast<float>(comm->size()));
  MPI_Barrier(MPI_COMM_WORLD);
}

TEST(Failure, StepBroadcastFromSilentRootTimesOut) {
  SKIP_UNLESS_PEERS();
  auto comm = make_comm(1.0);
  uint64_t value = 0;
  std::string message;
  if (comm->rank() == 0) std::this_thread::sleep_for(2500ms);
  try {
    comm->broadcast(&value, sizeof(value), 0);
  } catch (const Error& e) {
    message = e.what();
  }
  if (comm->rank() != 0) {
    EXPECT_NE(message.find("rank 0 ("), std::string::npos) << message;
    EXPECT_NE(message.find("absent from broadcast"), std::string::npos) << message;
  } else {
    EXPECT_TRUE(message.empty()) << "root's sends are eager: " << message;
  }
  MPI_Barrier(MPI_COMM_WORLD);
}

TEST(Failure, SilentPeerIsDeclaredLostByHeartbeat) {
  SKIP_UNLESS_PEERS();
  auto comm = make_comm(1.0);
  const int last = comm->size() - 1;
  if (comm->rank() == last) {
    // This rank's heartbeats stop as if it had been stopped; the others wait for it idly.
    comm->mute_heartbeats_for_testing();
    MPI_Barrier(MPI_COMM_WORLD);
    return;
  }
  std::string message;
  const auto t0 = std::chrono::steady_clock::now();
  try {
    comm->barrier_idle();
  } catch (const Error& e) {
    message = e.what();
  }
  const double waited =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_NE(message.find(fmt::format("rank {} (", last)), std::string::npos) << message;
  EXPECT_NE(message.find("no heartbeat"), std::string::npos) << message;
  EXPECT_GT(waited, 0.9);
  EXPECT_LT(waited, 4.0);
  EXPECT_TRUE(comm->peer_lost());
  MPI_Barrier(MPI_COMM_WORLD);
}

}  // namespace
}  // namespace tpnode::test
#endif  // TPNODE_HAVE_MPI
