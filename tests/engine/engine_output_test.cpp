// Engine::run's output: which rows come back as device-sampled tokens and which as logits,
// on a CPU backend wrapped to "sample" (a stand-in for CudaBackend, so the plumbing runs in
// CI), against a plain CPU engine's logits.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <deque>

#include "node/backend/cpu/cpu_backend.h"
#include "node/engine/engine.h"
#include "node/engine/single_rank_collective.h"
#include "node/engine/weight_source.h"
#include "node/model/model_file.h"
#include "tests/engine/forwarding_backend.h"
#include "tests/engine/test_support.h"

namespace tpnode {
namespace {

// The CPU backend plus sample_tokens: greedy rows get the argmax of their logits row, other
// rows (seed * 1000 + draw) % n_vocab, so a test can see which row, seed and draw arrived.
class SamplingCpuBackend : public tsupport::ForwardingBackend {
 public:
  std::vector<SampleRow> seen;  // every row sample_tokens was given

  std::string_view name() const override { return "sampling-cpu"; }
  bool can_sample() const override { return true; }
  void sample_tokens(const float* logits, int64_t n_vocab, const std::vector<SampleRow>& rows,
                     int32_t* tokens) override {
    for (size_t i = 0; i < rows.size(); ++i) {
      const SampleRow& r = rows[i];
      seen.push_back(r);
      const float* row = logits + r.logit_row * n_vocab;  // CPU backend memory is host memory
      tokens[i] =
          r.temperature <= 0.0f
              ? static_cast<int32_t>(std::max_element(row, row + n_vocab) - row)
              : static_cast<int32_t>((r.seed * 1000 + r.draw) % static_cast<uint64_t>(n_vocab));
    }
  }
};

// The stand-in plus asynchronous draws: a draw is computed at once and queued, and a batch
// token -1 - i becomes id i of the last draw before the CPU backend sees the batch.
class ChainingCpuBackend final : public SamplingCpuBackend {
 public:
  int taken = 0;  // draws taken

  std::string_view name() const override { return "chaining-cpu"; }
  bool can_chain() const override { return true; }
  void sample_async(const float* logits, int64_t n_vocab,
                    const std::vector<SampleRow>& rows) override {
    ASSERT_LT(queued_.size(), 2u) << "at most two draws outstanding";
    last_.assign(rows.size(), -1);
    sample_tokens(logits, n_vocab, rows, last_.data());
    queued_.push_back(last_);
  }
  void take_sampled(int32_t* tokens, size_t n) override {
    ASSERT_FALSE(queued_.empty());
    ASSERT_EQ(queued_.front().size(), n);
    std::copy(queued_.front().begin(), queued_.front().end(), tokens);
    queued_.pop_front();
    ++taken;
  }
  void begin_step(const BatchMeta& batch) override {
    BatchMeta b = batch;
    for (int32_t& t : b.tokens) {
      if (t < 0) t = last_.at(static_cast<size_t>(-1 - t));
    }
    SamplingCpuBackend::begin_step(b);
  }

 private:
  std::vector<int32_t> last_;
  std::deque<std::vector<int32_t>> queued_;
};

EngineOptions small_options() {
  EngineOptions eo;
  eo.max_context = 64;
  eo.kv_tokens = 256;
  eo.max_batch_tokens = 64;
  eo.max_seqs = 4;
  return eo;
}

std::string tiny_llama() {
  return std::string(TPNODE_SOURCE_DIR) + "/tests/fixtures/model_files/tiny_llama.gguf";
}

// Four sequences: A greedy on the device, B without logits, C on the host, D sampled with
// a seed on the device.
StepPlan mixed_plan() {
  StepPlan plan;
  plan.step = 1;
  SeqStep a{
      .seq_id = 1, .n_past = 0, .tokens = {5, 9, 2, 7, 1}, .blocks = {0}, .want_logits = true};
  a.sampling = {.enabled = true, .temperature = 0.0f};
  SeqStep b{.seq_id = 2, .n_past = 0, .tokens = {3, 3, 4}, .blocks = {1}, .want_logits = false};
  SeqStep c{.seq_id = 3, .n_past = 0, .tokens = {8, 6}, .blocks = {2}, .want_logits = true};
  SeqStep d{.seq_id = 4, .n_past = 0, .tokens = {1, 2, 3, 4}, .blocks = {3}, .want_logits = true};
  d.sampling = {.enabled = true, .temperature = 0.9f, .top_k = 5, .seed = 9};
  plan.seqs = {a, b, c, d};
  return plan;
}

TEST(EngineOutput, SampledRowsComeBackAsTokensAndTheRestAsLogits) {
  auto file = ModelFile::open(tiny_llama());
  const HParams& hp = file->hparams();
  const size_t V = static_cast<size_t>(hp.n_vocab);
  FileWeightSource src(*file), ref_src(*file);
  SamplingCpuBackend backend;
  auto ref_backend = make_cpu_backend({});
  SingleRankCollective c1, c2;
  Engine engine(hp, src, backend, c1, small_options());
  Engine reference(hp, ref_src, *ref_backend, c2, small_options());

  StepPlan plan = mixed_plan();
  const StepOutput& out = engine.run(plan);
  StepPlan plain = plan;
  for (SeqStep& s : plain.seqs) s.sampling = {};
  const std::vector<float> logits = reference.step(plain);  // rows A, C, D
  ASSERT_EQ(logits.size(), 3 * V);

  ASSERT_EQ(out.tokens.size(), 3u);
  const int32_t argmax_a =
      static_cast<int32_t>(std::max_element(logits.begin(), logits.begin() + V) - logits.begin());
  EXPECT_EQ(out.tokens[0], argmax_a);
  EXPECT_EQ(out.tokens[1], -1);
  EXPECT_FALSE(out.sampled(1));
  // D: seed 9, draw = its sampled token's position (0 + 4 tokens).
  EXPECT_EQ(out.tokens[2], static_cast<int32_t>((9 * 1000 + 4) % V));
  ASSERT_EQ(out.logits.size(), V) << "only C's row comes back as logits";
  EXPECT_EQ(0, std::memcmp(out.logits.data(), logits.data() + V, V * sizeof(float)));

  ASSERT_EQ(backend.seen.size(), 2u);
  EXPECT_EQ(backend.seen[0].logit_row, 0);  // A: the first LM head row
  EXPECT_EQ(backend.seen[1].logit_row, 2);  // D: the third (B has none)
  EXPECT_EQ(backend.seen[1].top_k, 5);
  EXPECT_EQ(backend.seen[1].temperature, 0.9f);
  EXPECT_EQ(backend.seen[1].draw, 4u);

  // The next step: A decodes at position 5, so its draw is 6.
  backend.seen.clear();
  StepPlan next;
  next.step = 2;
  SeqStep a = plan.seqs[0];
  a.n_past = 5;
  a.tokens = {out.tokens[0]};
  a.sampling = {.enabled = true, .temperature = 1.0f, .seed = 3};
  next.seqs = {a};
  const StepOutput& out2 = engine.run(next);
  ASSERT_EQ(out2.tokens.size(), 1u);
  EXPECT_TRUE(out2.logits.empty());
  EXPECT_EQ(out2.tokens[0], static_cast<int32_t>((3 * 1000 + 6) % V));
}

// Two sequences decoding greedily, each step submitted before the one before it is
// collected and taking its tokens from that step's draw (kChainedToken): the same tokens as
// steps run one at a time with the tokens passed from the host.
TEST(EngineOutput, ChainedStepsGiveTheTokensOfStepsFedFromTheHost) {
  auto file = ModelFile::open(tiny_llama());
  const HParams& hp = file->hparams();
  FileWeightSource src(*file), ref_src(*file);
  ChainingCpuBackend backend;
  SamplingCpuBackend ref_backend;
  SingleRankCollective c1, c2;
  Engine engine(hp, src, backend, c1, small_options());
  Engine reference(hp, ref_src, ref_backend, c2, small_options());
  ASSERT_TRUE(engine.chains());
  ASSERT_FALSE(reference.chains());

  StepPlan prompt;
  SeqStep a{.seq_id = 1, .n_past = 0, .tokens = {5, 9, 2}, .blocks = {0}, .want_logits = true};
  SeqStep b{.seq_id = 2, .n_past = 0, .tokens = {7, 1}, .blocks = {1}, .want_logits = true};
  a.sampling = b.sampling = {.enabled = true, .temperature = 0.0f};
  prompt.seqs = {a, b};
  constexpr int kSteps = 6;

  // The reference: one step at a time, tokens from the host.
  std::vector<std::vector<int32_t>> want;
  StepPlan plan = prompt;
  for (int i = 0; i <= kSteps; ++i) {
    const StepOutput& out = reference.run(plan);
    ASSERT_EQ(out.tokens.size(), 2u);
    want.push_back(out.tokens);
    for (size_t k = 0; k < 2; ++k) {
      plan.seqs[k].n_past += static_cast<int32_t>(plan.seqs[k].tokens.size());
      plan.seqs[k].tokens = {out.tokens[k]};
    }
  }

  // Chained: step i + 1 is submitted before step i is collected.
  engine.submit(prompt);
  StepPlan chained = prompt;
  std::vector<std::vector<int32_t>> got;
  for (int i = 1; i <= kSteps; ++i) {
    for (size_t k = 0; k < 2; ++k) {
      chained.seqs[k].n_past = static_cast<int32_t>(prompt.seqs[k].tokens.size()) + i - 1;
      chained.seqs[k].tokens = {kChainedToken};
    }
    engine.submit(chained);
    if (i == 1) {
      EXPECT_THROW(engine.submit(chained), Error) << "a third uncollected step";
    }
    got.push_back(engine.collect().tokens);
  }
  got.push_back(engine.collect().tokens);
  EXPECT_THROW(engine.collect(), Error) << "nothing submitted";
  EXPECT_EQ(got, want);
  EXPECT_EQ(backend.taken, kSteps + 1);

  // A chained token needs a draw for its sequence in the previous submitted step.
  StepPlan other = chained;
  other.seqs[0].seq_id = 3;
  other.seqs[0].blocks = {2};
  other.seqs.resize(1);
  EXPECT_THROW(engine.submit(other), Error);
  // And an engine that cannot chain refuses chained tokens.
  EXPECT_THROW(reference.submit(chained), Error);
}

// A plan asking for device sampling on a backend that cannot sample gets logits for every
// row, equal to those of the plain plan.
TEST(EngineOutput, BackendWithoutSamplingReturnsLogits) {
  auto m = tsupport::load_engine(tiny_llama(), {});
  StepPlan plan = mixed_plan();
  const StepOutput out = m->engine->run(plan);
  EXPECT_TRUE(out.tokens.empty());
  const size_t V = static_cast<size_t>(m->file->hparams().n_vocab);
  ASSERT_EQ(out.logits.size(), 3 * V);
  for (SeqStep& s : plan.seqs) s.sampling = {};
  const std::vector<float> plain = m->engine->step(plan);  // the same KV slots, rewritten
  EXPECT_EQ(0, std::memcmp(out.logits.data(), plain.data(), plain.size() * sizeof(float)));
}

}  // namespace
}  // namespace tpnode
