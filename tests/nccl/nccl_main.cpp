// test_nccl's main: under `mpirun -np N` every rank runs every test, joined by a World (MPI);
// started alone it is one rank and every test skips. Only rank 0 prints GoogleTest's report;
// other ranks print their failures, prefixed with their rank.
//
// --drill=stop|exit [--drill-path=oneshot|nccl] [--tp-timeout=S]: no tests; a failure drill
// for tests/nccl/nccl_rank_failure.sh. Every rank runs all-reduces in a loop; after a few,
// rank 1 stops itself (SIGSTOP: alive to the OS, silent to its peers) or leaves (_exit)
// while rank 0 waits for it inside a GPU all-reduce. Rank 0 must then end with an error
// naming rank 1, and the job must end, within the timeout plus a few seconds.
#include <gtest/gtest.h>
#include <spdlog/spdlog.h>

#include <chrono>
#include <csignal>
#include <cstdio>
#include <string>
#include <unistd.h>

#include "tests/nccl/nccl_fixture.h"
#include "tests/parallel/rank_test_output.h"

namespace tpnode::test {
namespace {

World* g_world = nullptr;

struct DrillOptions {
  std::string kind;              // empty: run the tests
  std::string path = "oneshot";  // which all-reduce rank 0 waits in
};

int run_drill(const DrillOptions& d) {
  const std::string why = gpu_ranks_unavailable();
  if (!why.empty()) {
    std::fprintf(stderr, "drill skipped: %s\n", why.c_str());
    return 77;
  }
  const int rank = world().topology().rank;
  std::fprintf(stderr, "drill: rank %d pid %d\n", rank, static_cast<int>(getpid()));
  CudaBackendOptions bo;
  bo.device = world().topology().local_rank;
  bo.gpu_memory_fraction = 0.2;
  auto backend = make_cuda_backend(bo);
  NcclCommunicatorOptions co;
  co.device = bo.device;
  co.stream = cuda_backend_stream(*backend);
  co.timeout_s = 60;  // longer than the heartbeat timeout: the lost rank is what ends it
  NcclCommunicator comm(host_comm(), co);
  const AllReducePath path = d.path == "nccl" ? AllReducePath::kNccl : AllReducePath::kOneShot;
  const size_t n = 4096;
  auto* data = static_cast<float*>(backend->alloc(n * sizeof(float)));
  std::vector<float> host(n, 1.0f);
  try {
    for (int i = 0;; ++i) {
      if (i == 20 && rank == 1) {
        const double now = std::chrono::duration<double>(
                               std::chrono::system_clock::now().time_since_epoch()).count();
        std::fprintf(stderr, "drill: rank 1 %s at %.3f\n", d.kind == "stop" ? "stops" : "exits", now);
        std::fflush(stderr);
        if (d.kind == "stop") raise(SIGSTOP);
        _exit(3);
      }
      if (i == 20 && rank == 0) std::fprintf(stderr, "drill: rank 0 waits in the all-reduce\n");
      backend->copy_to_device(data, host.data(), n * sizeof(float));
      comm.all_reduce_sum(data, n, path);
      backend->copy_to_host(host.data(), data, n * sizeof(float));  // waits on the stream
      std::fill(host.begin(), host.end(), 1.0f);
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "rank %d: error: %s\n", rank, e.what());
    std::fflush(stderr);
    return 1;
  }
}

}  // namespace

World& world() { return *g_world; }

mpi::MpiCommunicator& host_comm() { return dynamic_cast<mpi::MpiCommunicator&>(g_world->comm()); }

}  // namespace tpnode::test

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  tpnode::WorldOptions options;
  options.collective_timeout_s = 30.0;
  tpnode::test::DrillOptions drill;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg.rfind("--tp-timeout=", 0) == 0) options.collective_timeout_s = std::stod(arg.substr(13));
    if (arg.rfind("--drill=", 0) == 0) drill.kind = arg.substr(8);
    if (arg.rfind("--drill-path=", 0) == 0) drill.path = arg.substr(13);
  }
  std::unique_ptr<tpnode::World> world = tpnode::World::init(argc, argv, options);
  tpnode::test::g_world = world.get();
  const int rank = world->topology().rank;
  spdlog::set_pattern(fmt::format("[rank {}] [%l] %v", rank));
  if (!drill.kind.empty()) {
    const int rc = tpnode::test::run_drill(drill);
    if (rc == 77) return 77;
    if (rc != 0) world->abort(rc);
    return rc;
  }
  tpnode::test::report_from_root_only(rank);
  const int rc = RUN_ALL_TESTS();
  tpnode::test::release_gpu_ranks();
  world.reset();
  return rc;
}
