// The engine's automatic limits: on host memory 16 sequences per step and a KV cache of four
// full contexts; on a backend with a memory budget (a GPU; here the CPU backend wrapped to
// report one) 256 sequences and a KV cache of what the budget has left after the weights and
// step buffers, less the scratch reserve, capped at 256 full contexts. Explicit options win,
// and a budget too small for one context is a clear out-of-memory error.
#include <gtest/gtest.h>

#include <memory>
#include <string>

#include "node/common/error.h"
#include "node/engine/engine.h"
#include "node/engine/single_rank_collective.h"
#include "node/engine/weight_source.h"
#include "node/model/model_file.h"
#include "tests/engine/forwarding_backend.h"
#include "tests/engine/test_support.h"

namespace tpnode {
namespace {

std::string tiny_llama() {
  return std::string(TPNODE_SOURCE_DIR) + "/tests/fixtures/model_files/tiny_llama.gguf";
}

struct Loaded {
  std::unique_ptr<ModelFile> file = ModelFile::open(tiny_llama());
  FileWeightSource weights{*file};
  SingleRankCollective one;
};

TEST(EngineLimits, HostMemoryKeepsTheSmallDefaults) {
  Loaded m;
  auto cpu = make_cpu_backend({});
  EngineOptions eo;
  eo.max_context = 128;
  Engine engine(m.file->hparams(), m.weights, *cpu, m.one, eo);
  EXPECT_EQ(engine.options().max_seqs, kHostMaxSeqs);
  EXPECT_EQ(engine.options().kv_tokens, 4 * 128);
}

TEST(EngineLimits, ABudgetSizesSequencesAndTheKvCache) {
  Loaded m;
  const HParams& hp = m.file->hparams();
  // KV bytes per token of the CPU backend (F32): K and V of every layer's KV heads.
  const int64_t per_token = 2 * hp.n_layer * hp.n_head_kv * hp.head_dim * 4;
  EngineOptions eo;
  eo.max_context = 128;
  const int64_t bs = eo.kv_block_size;

  // Room for 100 full contexts past the reserve (1.5 GiB and a twentieth of what is left) and
  // the step buffers (< 4 MiB here): the memory decides.
  const uint64_t kv_room = static_cast<uint64_t>(100 * 128 * per_token);
  tsupport::BudgetBackend tight((kDeviceScratchReserve + kv_room) / 19 * 20 + (uint64_t{4} << 20));
  Engine a(hp, m.weights, tight, m.one, eo);
  ASSERT_TRUE(tight.answered.has_value());
  const uint64_t left = *tight.answered;
  const auto want_blocks =
      static_cast<int64_t>((left - kDeviceScratchReserve - left / 20) / (per_token * bs));
  EXPECT_EQ(a.options().max_seqs, kDeviceMaxSeqs);
  EXPECT_EQ(a.kv_blocks(), want_blocks);
  EXPECT_GT(a.kv_blocks() * bs, 100 * 128) << "less than the room past the reserve";
  EXPECT_LE(tight.kv_bytes, left - kDeviceScratchReserve);

  // Plenty of memory: capped at max_seqs full contexts.
  tsupport::BudgetBackend roomy(uint64_t{64} << 30);
  eo.max_seqs = 8;
  Engine b(hp, m.weights, roomy, m.one, eo);
  EXPECT_EQ(b.options().max_seqs, 8);
  EXPECT_EQ(b.kv_blocks(), 8 * 128 / bs);

  // Explicit capacity wins over the budget.
  eo.kv_tokens = 320;
  tsupport::BudgetBackend any(uint64_t{64} << 30);
  Engine c(hp, m.weights, any, m.one, eo);
  EXPECT_EQ(c.kv_blocks(), 320 / bs);
}

TEST(EngineLimits, ABudgetTooSmallForOneContextIsAnOutOfMemoryError) {
  Loaded m;
  EngineOptions eo;
  eo.max_context = 128;
  tsupport::BudgetBackend small(kDeviceScratchReserve);  // nothing past the reserve
  try {
    Engine e(m.file->hparams(), m.weights, small, m.one, eo);
    FAIL() << "no error";
  } catch (const Error& err) {
    EXPECT_EQ(err.kind(), ErrorKind::kOutOfMemory);
    EXPECT_NE(std::string(err.what()).find("--gpu-memory-fraction"), std::string::npos)
        << err.what();
  }
}

}  // namespace
}  // namespace tpnode
