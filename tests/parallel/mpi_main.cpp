// test_parallel's main: under mpirun every rank runs every test, joined by a World (MPI);
// started alone it is a single rank and tests that need peers skip. Only rank 0 prints
// GoogleTest's report; other ranks print their failures, prefixed with their rank.
#include <gtest/gtest.h>
#include <spdlog/spdlog.h>

#include <string>

#include "tests/parallel/mpi_fixture.h"
#include "tests/parallel/rank_test_output.h"

namespace tpnode::test {
namespace {

World* g_world = nullptr;

}  // namespace

World& world() { return *g_world; }

}  // namespace tpnode::test

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  tpnode::WorldOptions options;
  options.collective_timeout_s = 20.0;  // generous: CI runs 4 ranks on 2 cores
  // --tp-timeout=S: the failure scripts want the job to die fast.
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg.rfind("--tp-timeout=", 0) == 0)
      options.collective_timeout_s = std::stod(arg.substr(13));
  }
  std::unique_ptr<tpnode::World> world = tpnode::World::init(argc, argv, options);
  tpnode::test::g_world = world.get();
  const int rank = world->topology().rank;
  spdlog::set_pattern(fmt::format("[rank {}] [%l] %v", rank));
  tpnode::test::report_from_root_only(rank);
  const int rc = RUN_ALL_TESTS();
  world.reset();
  return rc;
}
