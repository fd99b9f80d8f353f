// Paged attention of the CPU backend against a double-precision reference that keeps every
// sequence's K/V history in plain arrays (no paging), over mixed prefill/decode batches.
#include "kernels/cpu/attention.h"

#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <memory>
#include <random>
#include <vector>

#include "node/backend/cpu/cpu_backend.h"
#include "node/common/error.h"
#include "tests/backend_cpu/test_support.h"

namespace tpnode {
namespace {

using test::BlockPool;
using test::make_batch;
using test::SeqSpec;

struct AttnShape {
  int64_t n_head;
  int64_t n_head_kv;
  int64_t head_dim;
  int64_t block_size;
  TensorType kv_type;
};

// Deterministic q/k/v of one token: depends only on (layer, sequence id, position).
struct TokenQkv {
  std::vector<float> q, k, v;
};

TokenQkv token_qkv(const AttnShape& s, int64_t layer, int64_t seq_id, int64_t pos) {
  const uint32_t seed = static_cast<uint32_t>(layer * 1000003 + seq_id * 7919 + pos);
  TokenQkv t;
  t.q = test::random_floats(static_cast<size_t>(s.n_head * s.head_dim), seed, 1.5f);
  t.k = test::random_floats(static_cast<size_t>(s.n_head_kv * s.head_dim), seed + 1, 1.5f);
  t.v = test::random_floats(static_cast<size_t>(s.n_head_kv * s.head_dim), seed + 2);
  return t;
}

// The reference: full K/V history per (layer, sequence id), attention in double.
class Reference {
 public:
  explicit Reference(const AttnShape& s) : s_(s) {}

  void append(int64_t layer, int64_t seq_id, int64_t pos, const TokenQkv& t) {
    auto& h = hist_[{layer, seq_id}];
    if (static_cast<int64_t>(h.size()) <= pos) h.resize(static_cast<size_t>(pos + 1));
    std::vector<float> k = t.k, v = t.v;
    if (s_.kv_type == TensorType::kF16) {
      for (float& x : k) x = test::round_f16(x);
      for (float& x : v) x = test::round_f16(x);
    }
    h[pos] = {k, v};
  }

  // out [n_head, head_dim] for a token at `pos` with query q.
  std::vector<double> attend(int64_t layer, int64_t seq_id, int64_t pos,
                             const std::vector<float>& q) const {
    const auto& h = hist_.at({layer, seq_id});
    const int64_t d = s_.head_dim;
    const double scale = 1.0 / std::sqrt(static_cast<double>(d));
    std::vector<double> out(static_cast<size_t>(s_.n_head * d), 0.0);
    for (int64_t head = 0; head < s_.n_head; ++head) {
      const int64_t kvh = head / (s_.n_head / s_.n_head_kv);
      std::vector<double> w(static_cast<size_t>(pos + 1));
      double max_w = -1e300;
      for (int64_t p = 0; p <= pos; ++p) {
        double dot = 0.0;
        for (int64_t i = 0; i < d; ++i) {
          dot += static_cast<double>(q[head * d + i]) * h[p].first[kvh * d + i];
        }
        w[p] = dot * scale;
        max_w = std::max(max_w, w[p]);
      }
      double sum = 0.0;
      for (double& x : w) sum += (x = std::exp(x - max_w));
      for (int64_t p = 0; p <= pos; ++p) {
        for (int64_t i = 0; i < d; ++i) {
          out[head * d + i] += w[p] / sum * h[p].second[kvh * d + i];
        }
      }
    }
    return out;
  }

 private:
  AttnShape s_;
  std::map<std::pair<int64_t, int64_t>,
           std::vector<std::pair<std::vector<float>, std::vector<float>>>>
      hist_;
};

// A sequence as the test tracks it across steps.
struct LiveSeq {
  int64_t id;
  int32_t n_past = 0;
  std::vector<int32_t> table;
};

struct StepEntry {
  size_t live;    // index into the live sequences
  int32_t n_new;  // tokens this step
};

constexpr int64_t kLayers = 2;
constexpr int64_t kBlocks = 96;

class AttentionHarness {
 public:
  explicit AttentionHarness(const AttnShape& s, int n_threads = 3)
      : s_(s),
        backend_(CpuBackendOptions{.n_threads = n_threads, .kv_type = s.kv_type}),
        ref_(s),
        pool_(kBlocks, /*seed=*/42) {
    backend_.init_kv_cache(KvCacheShape{.n_layer = kLayers,
                                        .n_blocks = kBlocks,
                                        .block_size = s.block_size,
                                        .n_head_kv = s.n_head_kv,
                                        .head_dim = s.head_dim});
  }

  size_t add_seq(int64_t id) {
    live_.push_back(LiveSeq{.id = id, .n_past = 0, .table = {}});
    return live_.size() - 1;
  }

  // Runs one step over all layers; returns the largest error against the reference.
  double run_step(const std::vector<StepEntry>& entries,
                  std::vector<std::vector<float>>* outputs = nullptr) {
    std::vector<SeqSpec> specs;
    std::vector<std::vector<int32_t>> tables;
    for (const auto& e : entries) {
      LiveSeq& ls = live_[e.live];
      pool_.grow(ls.table, ls.n_past + e.n_new, s_.block_size);
      specs.push_back(SeqSpec{.n_past = ls.n_past, .n_new = e.n_new});
      tables.push_back(ls.table);
    }
    const BatchMeta batch = make_batch(specs, tables);
    backend_.begin_step(batch);
    const int64_t n_tokens = batch.n_tokens();
    const int64_t q_row = s_.n_head * s_.head_dim;
    const int64_t kv_row = s_.n_head_kv * s_.head_dim;
    double worst = 0.0;
    for (int64_t layer = 0; layer < kLayers; ++layer) {
      std::vector<float> q(n_tokens * q_row), k(n_tokens * kv_row), v(n_tokens * kv_row);
      std::vector<float> out(n_tokens * q_row, -777.0f);
      std::vector<TokenQkv> data;
      for (int64_t t = 0; t < n_tokens; ++t) {
        const LiveSeq& ls = live_[entries[batch.token_seq[t]].live];
        data.push_back(token_qkv(s_, layer, ls.id, batch.positions[t]));
        std::copy(data[t].q.begin(), data[t].q.end(), q.begin() + t * q_row);
        std::copy(data[t].k.begin(), data[t].k.end(), k.begin() + t * kv_row);
        std::copy(data[t].v.begin(), data[t].v.end(), v.begin() + t * kv_row);
        ref_.append(layer, ls.id, batch.positions[t], data[t]);
      }
      backend_.attention(
          q.data(), k.data(), v.data(), out.data(),
          AttentionParams{.layer = layer,
                          .n_head = s_.n_head,
                          .n_head_kv = s_.n_head_kv,
                          .head_dim = s_.head_dim,
                          .scale = 1.0f / std::sqrt(static_cast<float>(s_.head_dim))});
      for (int64_t t = 0; t < n_tokens; ++t) {
        const LiveSeq& ls = live_[entries[batch.token_seq[t]].live];
        const auto expect = ref_.attend(layer, ls.id, batch.positions[t], data[t].q);
        for (int64_t i = 0; i < q_row; ++i) {
          const double got = out[t * q_row + i];
          const double err = std::abs(got - expect[i]) / (1e-3 + std::abs(expect[i]));
          worst = std::max(worst, err);
        }
      }
      if (outputs != nullptr) outputs->push_back(out);
    }
    for (const auto& e : entries) live_[e.live].n_past += e.n_new;
    return worst;
  }

  CpuBackend& backend() { return backend_; }
  LiveSeq& live(size_t i) { return live_[i]; }

 private:
  AttnShape s_;
  CpuBackend backend_;
  Reference ref_;
  BlockPool pool_;
  std::vector<LiveSeq> live_;
};

class PagedAttention : public ::testing::TestWithParam<AttnShape> {};

TEST_P(PagedAttention, MixedPrefillAndDecodeMatchReference) {
  const AttnShape s = GetParam();
  AttentionHarness h(s);
  // Five sequences of different lengths prefilled together...
  const std::vector<int32_t> prompt = {1, 7, 13, 4, 9};
  std::vector<StepEntry> step1;
  for (size_t i = 0; i < prompt.size(); ++i) step1.push_back({h.add_seq(100 + i), prompt[i]});
  // ...then a step mixing decode tokens, a second prefill chunk and a brand-new sequence,
  // with one sequence sitting out.
  const size_t fresh = h.add_seq(200);
  const std::vector<StepEntry> step2 = {{0, 1}, {1, 5}, {fresh, 6}, {2, 1}, {4, 1}};
  const std::vector<StepEntry> step3 = {{3, 1}, {fresh, 1}, {1, 1}};
  // F16 KV rounds inputs the reference also rounds; only accumulation order differs.
  const double tol = 2e-4;
  EXPECT_LT(h.run_step(step1), tol);
  EXPECT_LT(h.run_step(step2), tol);
  EXPECT_LT(h.run_step(step3), tol);
}

TEST_P(PagedAttention, DecodeAfterPrefillEqualsOnePrefill) {
  const AttnShape s = GetParam();
  // Same two sequences, 11 and 6 tokens: all at once, or as chunks then decode tokens.
  AttentionHarness whole(s, /*n_threads=*/1);
  whole.add_seq(1);
  whole.add_seq(2);
  std::vector<std::vector<float>> whole_out;
  whole.run_step({{0, 11}, {1, 6}}, &whole_out);

  AttentionHarness split(s, /*n_threads=*/3);
  split.add_seq(1);
  split.add_seq(2);
  std::vector<std::vector<float>> outs;
  split.run_step({{0, 8}, {1, 3}}, &outs);  // chunk 1
  split.run_step({{1, 2}, {0, 2}}, &outs);  // chunk 2 (order of sequences swapped)
  split.run_step({{0, 1}, {1, 1}}, &outs);  // decode

  const int64_t row = s.n_head * s.head_dim;
  // Token (seq, pos) -> row in `whole`'s output: seq 0 rows 0..10, seq 1 rows 11..16.
  auto whole_row = [&](int64_t layer, int64_t seq, int64_t pos) {
    return whole_out[layer].data() + (seq == 0 ? pos : 11 + pos) * row;
  };
  struct Placed {
    int64_t step, seq, pos, row;
  };
  const std::vector<Placed> checks = {{0, 0, 7, 7}, {0, 1, 2, 10}, {1, 1, 4, 1},
                                      {1, 0, 9, 3}, {2, 0, 10, 0}, {2, 1, 5, 1}};
  for (const Placed& c : checks) {
    for (int64_t layer = 0; layer < kLayers; ++layer) {
      const float* got = outs[c.step * kLayers + layer].data() + c.row * row;
      const float* want = whole_row(layer, c.seq, c.pos);
      for (int64_t i = 0; i < row; ++i) {
        ASSERT_FLOAT_EQ(got[i], want[i]) << "step " << c.step << " seq " << c.seq << " pos "
                                         << c.pos << " layer " << layer << " i " << i;
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Shapes, PagedAttention,
                         ::testing::Values(AttnShape{6, 2, 8, 4, TensorType::kF32},
                                           AttnShape{6, 3, 64, 4, TensorType::kF32},
                                           AttnShape{6, 6, 8, 16, TensorType::kF32},
                                           AttnShape{9, 3, 64, 16, TensorType::kF32},
                                           AttnShape{6, 2, 64, 4, TensorType::kF16},
                                           AttnShape{6, 3, 8, 16, TensorType::kF16}),
                         [](const auto& info) {
                           const AttnShape& s = info.param;
                           return "h" + std::to_string(s.n_head) + "kv" +
                                  std::to_string(s.n_head_kv) + "d" + std::to_string(s.head_dim) +
                                  "bs" + std::to_string(s.block_size) +
                                  std::string(type_name(s.kv_type));
                         });

// --- validation ------------------------------------------------------------------------------

constexpr AttnShape kSmall{4, 2, 8, 4, TensorType::kF32};

std::unique_ptr<CpuBackend> small_backend() {
  auto b = std::make_unique<CpuBackend>(CpuBackendOptions{.n_threads = 2});
  b->init_kv_cache(
      KvCacheShape{.n_layer = 1, .n_blocks = 8, .block_size = 4, .n_head_kv = 2, .head_dim = 8});
  return b;
}

void expect_rejected(const BatchMeta& batch, const char* why) {
  EXPECT_THROW(small_backend()->begin_step(batch), Error) << why;
}

TEST(PagedAttentionChecks, RejectsBadBlockTables) {
  expect_rejected(make_batch({{0, 5}}, {{3, 8}}), "block id == n_blocks");
  expect_rejected(make_batch({{0, 5}}, {{3, -1}}), "block id -1 inside the used range");
  expect_rejected(make_batch({{4, 1}}, {{-7, 2}}), "bad id in the cached prefix");
  expect_rejected(make_batch({{0, 9}}, {{1, 2}}), "table too short for the KV length");
  expect_rejected(make_batch({{0, 3}, {0, 2}}, {{1}, {1}}), "two sequences write one block");
  expect_rejected(make_batch({{4, 1}, {0, 2}}, {{1, 2}, {1}}), "one writes a block another reads");
  expect_rejected(make_batch({{0, 6}}, {{5, 5}}), "a block listed twice in one table");
  BatchMeta bad_pos = make_batch({{0, 3}}, {{1}});
  bad_pos.positions[2] = 3;  // past seq_kv_len
  expect_rejected(bad_pos, "position beyond the KV length");
  BatchMeta bad_seq = make_batch({{0, 2}, {0, 2}}, {{1}, {2}});
  bad_seq.token_seq[1] = 1;
  expect_rejected(bad_seq, "token outside its sequence's range");
  BatchMeta bad_logit = make_batch({{0, 2}}, {{1}});
  bad_logit.logit_rows = {2};
  expect_rejected(bad_logit, "logit row out of range");
}

TEST(PagedAttentionChecks, AcceptsSharedReadOnlyPrefix) {
  // Two sequences read the same cached block and write their own: a valid shared prefix.
  EXPECT_NO_THROW(small_backend()->begin_step(make_batch({{4, 1}, {4, 2}}, {{0, 1}, {0, 2}})));
}

TEST(PagedAttentionChecks, ARejectedBatchLeavesNoMarksBehind) {
  auto b = small_backend();
  for (int round = 0; round < 3; ++round) {
    EXPECT_THROW(b->begin_step(make_batch({{0, 3}, {0, 2}}, {{1}, {1}})), Error);
    EXPECT_THROW(b->begin_step(make_batch({{0, 6}}, {{5, 5}})), Error);
    // The same blocks, now owned by one sequence each, are fine.
    EXPECT_NO_THROW(b->begin_step(make_batch({{0, 3}, {0, 6}}, {{1}, {5, 4}})));
    EXPECT_NO_THROW(b->begin_step(make_batch({{0, 8}}, {{1, 5}})));
  }
}

TEST(PagedAttentionChecks, KernelChecksItsOwnBounds) {
  // The kernel refuses a bad table even when called without the backend's batch check.
  std::vector<float> k_cache(8 * 4 * 2 * 8), v_cache(k_cache.size());
  const std::vector<int32_t> positions = {0, 1, 5};
  const std::vector<int32_t> token_seq = {0, 0, 0};
  const std::vector<int32_t> table = {2, 9};  // 9 >= n_blocks
  std::vector<float> q(3 * 4 * 8), kv(3 * 2 * 8), out(q.size());
  const cpu::PagedAttentionArgs args{.q = q.data(),
                                     .k = kv.data(),
                                     .v = kv.data(),
                                     .out = out.data(),
                                     .n_head = 4,
                                     .scale = 1.0f,
                                     .cache = {.k = k_cache.data(),
                                               .v = v_cache.data(),
                                               .type = TensorType::kF32,
                                               .n_blocks = 8,
                                               .block_size = 4,
                                               .n_head_kv = 2,
                                               .head_dim = 8},
                                     .batch = {.n_tokens = 3,
                                               .positions = positions.data(),
                                               .token_seq = token_seq.data(),
                                               .block_tables = table.data(),
                                               .n_seqs = 1,
                                               .max_blocks = 2}};
  cpu::ThreadPool pool(1);
  EXPECT_THROW(cpu::paged_attention_step(args, pool), Error);
  EXPECT_THROW(cpu::paged_kv_store(args, pool), Error);
  EXPECT_THROW(cpu::paged_attention(args, pool), Error);
  // Nothing was written before the check failed.
  for (float x : k_cache) ASSERT_EQ(x, 0.0f);
}

TEST(PagedAttentionChecks, RejectsMismatchedParams) {
  auto backend = small_backend();
  CpuBackend& b = *backend;
  b.begin_step(make_batch({{0, 2}}, {{1}}));
  std::vector<float> q(2 * 4 * 8), kv(2 * 2 * 8), out(q.size());
  AttentionParams p{.layer = 0, .n_head = 4, .n_head_kv = 2, .head_dim = 8, .scale = 1.0f};
  EXPECT_NO_THROW(b.attention(q.data(), kv.data(), kv.data(), out.data(), p));
  AttentionParams bad_layer = p;
  bad_layer.layer = 1;
  EXPECT_THROW(b.attention(q.data(), kv.data(), kv.data(), out.data(), bad_layer), Error);
  AttentionParams bad_heads = p;
  bad_heads.n_head = 3;  // not a multiple of 2 KV heads
  EXPECT_THROW(b.attention(q.data(), kv.data(), kv.data(), out.data(), bad_heads), Error);
  AttentionParams bad_kv = p;
  bad_kv.n_head_kv = 1;
  EXPECT_THROW(b.attention(q.data(), kv.data(), kv.data(), out.data(), bad_kv), Error);

  CpuBackend no_cache(CpuBackendOptions{.n_threads = 1});
  no_cache.begin_step(make_batch({{0, 2}}, {{1}}));
  EXPECT_THROW(no_cache.attention(q.data(), kv.data(), kv.data(), out.data(), p), Error);
}

TEST(PagedAttentionChecks, RejectedBatchLeavesOtherSequencesIntact) {
  AttentionHarness h(kSmall);
  const size_t a = h.add_seq(1);
  const size_t b = h.add_seq(2);
  EXPECT_LT(h.run_step({{a, 6}, {b, 3}}), 1e-4);
  // A batch whose second sequence points into the first's blocks is refused as a whole...
  const BatchMeta bad =
      make_batch({{6, 1}, {3, 6}}, {h.live(a).table, {h.live(b).table[0], h.live(a).table[1], 7}});
  EXPECT_THROW(h.backend().begin_step(bad), Error);
  // ...and the ops after it have no batch to run on.
  std::vector<float> q(4 * 8), kv(2 * 8), out(q.size());
  h.backend().attention(
      q.data(), kv.data(), kv.data(), out.data(),
      AttentionParams{.layer = 0, .n_head = 4, .n_head_kv = 2, .head_dim = 8, .scale = 1.0f});
  // The first sequence's cache still decodes to the reference.
  EXPECT_LT(h.run_step({{a, 1}, {b, 1}}), 1e-4);
}

}  // namespace
}  // namespace tpnode
