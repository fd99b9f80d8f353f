// CpuBackend::attention with AttentionParams::rope set against rope() then attention() on a
// second backend: the same outputs, bit for bit, over prefill, decode and mixed steps (so the
// two caches also hold the same rotated keys).
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "node/backend/cpu/cpu_backend.h"
#include "node/common/error.h"
#include "tests/backend_cpu/test_support.h"

namespace tpnode {
namespace {

using test::BlockPool;
using test::make_batch;
using test::SeqSpec;

struct RopeAttnCase {
  RopeStyle style;
  RopeScaling scaling;
  int64_t n_head;
  int64_t n_head_kv;
  int64_t head_dim;
};

TEST(CpuAttentionRope, EqualsRopeThenAttention) {
  const std::vector<RopeAttnCase> cases = {
      {RopeStyle::kNeox, {}, 6, 2, 32},
      {RopeStyle::kInterleaved, {}, 6, 2, 32},
      {RopeStyle::kNeox, test::llama3_scaling(), 4, 4, 64},
      {RopeStyle::kInterleaved, test::linear_scaling(4.0f), 9, 3, 16}};
  constexpr int64_t kBlocks = 64, kBlockSize = 16;
  for (const RopeAttnCase& c : cases) {
    const std::string what = fmt::format("style {} heads {}/{} dim {}", static_cast<int>(c.style),
                                         c.n_head, c.n_head_kv, c.head_dim);
    CpuBackend folded(CpuBackendOptions{.n_threads = 2}), apart(CpuBackendOptions{.n_threads = 2});
    const KvCacheShape shape{.n_layer = 1,
                             .n_blocks = kBlocks,
                             .block_size = kBlockSize,
                             .n_head_kv = c.n_head_kv,
                             .head_dim = c.head_dim};
    folded.init_kv_cache(shape);
    apart.init_kv_cache(shape);
    const RopeParams rope{.n_head = c.n_head,
                          .n_head_kv = c.n_head_kv,
                          .head_dim = c.head_dim,
                          .style = c.style,
                          .theta = 10000.0f,
                          .scaling = c.scaling};
    AttentionParams with{.layer = 0,
                         .n_head = c.n_head,
                         .n_head_kv = c.n_head_kv,
                         .head_dim = c.head_dim,
                         .scale = 1.0f / std::sqrt(static_cast<float>(c.head_dim)),
                         .rope = &rope};
    AttentionParams without = with;
    without.rope = nullptr;

    BlockPool pool(kBlocks, 5);
    std::vector<std::vector<int32_t>> tables(3);
    std::vector<int32_t> past(3, 0);
    // New tokens per sequence and step: a prefill, decode steps, a mixed step.
    const std::vector<std::vector<int32_t>> steps = {{20, 5, 1}, {1, 1, 1}, {3, 1, 7}, {1, 1, 1}};
    for (size_t st = 0; st < steps.size(); ++st) {
      std::vector<SeqSpec> specs;
      for (size_t s = 0; s < 3; ++s) {
        pool.grow(tables[s], past[s] + steps[st][s], kBlockSize);
        specs.push_back({.n_past = past[s], .n_new = steps[st][s]});
        past[s] += steps[st][s];
      }
      const BatchMeta batch = make_batch(specs, tables);
      folded.begin_step(batch);
      apart.begin_step(batch);
      const int64_t n = batch.n_tokens();
      const auto seed = static_cast<uint32_t>(10 * st);
      const std::vector<float> q = test::random_floats(n * c.n_head * c.head_dim, seed, 2.0f);
      const std::vector<float> k =
          test::random_floats(n * c.n_head_kv * c.head_dim, seed + 1, 2.0f);
      const std::vector<float> v = test::random_floats(n * c.n_head_kv * c.head_dim, seed + 2);
      std::vector<float> qa = q, ka = k, qb = q, kb = k;  // rotated in place
      std::vector<float> out_a(q.size(), NAN), out_b(q.size(), NAN);
      folded.attention(qa.data(), ka.data(), v.data(), out_a.data(), with);
      apart.rope(qb.data(), kb.data(), rope);
      apart.attention(qb.data(), kb.data(), v.data(), out_b.data(), without);
      EXPECT_EQ(out_a, out_b) << what << ", step " << st;
      // A real rotation happened: the unrotated inputs give another output.
      if (st == 0) {
        std::vector<float> out_c(q.size(), NAN);
        CpuBackend plain(CpuBackendOptions{.n_threads = 2});
        plain.init_kv_cache(shape);
        plain.begin_step(batch);
        plain.attention(q.data(), k.data(), v.data(), out_c.data(), without);
        EXPECT_NE(out_a, out_c) << what;
      }
    }
  }
}

TEST(CpuAttentionRope, RejectsRopeOfAnotherShape) {
  CpuBackend b(CpuBackendOptions{.n_threads = 1});
  b.init_kv_cache({.n_layer = 1, .n_blocks = 4, .block_size = 16, .n_head_kv = 2, .head_dim = 8});
  b.begin_step(make_batch({{0, 2}}, {{1}}));
  const RopeParams rope{.n_head = 4,
                        .n_head_kv = 2,
                        .head_dim = 16,  // attention's is 8
                        .style = RopeStyle::kNeox,
                        .theta = 10000.0f,
                        .scaling = {}};
  std::vector<float> q(2 * 4 * 16), k(2 * 2 * 16), v(2 * 2 * 8), out(2 * 4 * 8);
  const AttentionParams p{
      .layer = 0, .n_head = 4, .n_head_kv = 2, .head_dim = 8, .scale = 1.0f, .rope = &rope};
  EXPECT_THROW(b.attention(q.data(), k.data(), v.data(), out.data(), p), Error);
}

}  // namespace
}  // namespace tpnode
