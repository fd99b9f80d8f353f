// An automatic KV cache under tensor parallelism: every rank sizes it from its own memory
// budget, and all of them take the smallest rank's block count (rank 0's KV block ids reach
// every rank). Each rank's backend is the CPU backend with a budget (tsupport::BudgetBackend)
// that grows with the rank, so rank 0's budget binds.
#include <gtest/gtest.h>

#include <cstdint>
#include <string>
#include <vector>

#include "node/engine/engine.h"
#include "node/engine/weight_source.h"
#include "node/model/model_file.h"
#include "tests/engine/forwarding_backend.h"
#include "tests/parallel/mpi_fixture.h"

namespace tpnode {
namespace {

TEST(TpKvLimits, EveryRankTakesTheSmallestBudgetsBlocks) {
  Communicator& comm = test::world().comm();
  if (comm.size() < 2) GTEST_SKIP() << "needs mpirun -np >= 2";
  const std::string path =
      std::string(TPNODE_SOURCE_DIR) + "/tests/fixtures/tiny_models/tiny-llama/hf";
  auto file = ModelFile::open(path);
  FileWeightSource weights(*file);
  const HParams& hp = file->hparams();
  if (!ShardPlan::is_valid(hp, comm.size(), weights.row_parallel_block(hp))) {
    GTEST_SKIP() << "the tiny model cannot be split over " << comm.size() << " ranks";
  }
  EngineOptions eo;
  eo.max_context = 128;
  // Rank r: room for about 20 + 10r full contexts of one rank's share past the reserve.
  const int64_t per_token = 2 * hp.n_layer * (hp.n_head_kv / comm.size()) * hp.head_dim * 4;
  const uint64_t room = static_cast<uint64_t>((20 + 10 * comm.rank()) * 128 * per_token);
  tsupport::BudgetBackend backend((kDeviceScratchReserve + room) / 19 * 20 + (uint64_t{4} << 20));
  Engine engine(hp, weights, backend, comm, eo);

  const int64_t bs = eo.kv_block_size;
  const uint64_t left = backend.answered.value();
  const auto mine = static_cast<int64_t>((left - kDeviceScratchReserve - left / 20) / (per_token * bs));
  // Every rank's count on every rank, through the sum collective (one slot each).
  std::vector<float> counts(static_cast<size_t>(comm.size()), 0.0f);
  counts[static_cast<size_t>(comm.rank())] = static_cast<float>(engine.kv_blocks());
  comm.all_reduce_sum(counts.data(), counts.size());
  for (int r = 0; r < comm.size(); ++r) {
    EXPECT_EQ(counts[static_cast<size_t>(r)], counts[0]) << "rank " << r << "'s block count";
  }
  if (comm.rank() == 0) {
    EXPECT_EQ(engine.kv_blocks(), mine) << "rank 0 has the smallest budget";
  } else {
    EXPECT_LT(engine.kv_blocks(), mine) << "a larger budget on rank " << comm.rank();
  }
}

}  // namespace
}  // namespace tpnode
