#include "coordinator/scheduler.h"

#include <gtest/gtest.h>

#include <map>

#include "coordinator/metrics.h"
#include "tests/coordinator/fake_model.h"

namespace tpnode::coord {
namespace {

using testing::FakeExecutor;
using testing::FakeExecutorOptions;
using testing::FakeTokenizer;
using testing::RecordingObserver;
using testing::make_request;

using testing::reference_text;

struct Harness {
  explicit Harness(SchedulerOptions so, FakeExecutorOptions fo = {},
                   testing::NextToken next = testing::hashed_model())
      : exec(fo, next), kv(fo.kv_blocks, fo.block_size), sched(so, kv, tok, &metrics),
        model(next) {}

  std::shared_ptr<RecordingObserver> add(GenerationRequest r) {
    auto obs = std::make_shared<RecordingObserver>();
    auto handle = std::make_shared<RequestHandle>(std::move(r), obs);
    handles.push_back(handle);
    sched.add(handle);
    return obs;
  }

  // One iteration as the step loop does it; returns the plan that ran.
  StepPlan step() {
    StepPlan plan = sched.plan(Clock::now());
    if (!plan.seqs.empty()) sched.complete(plan, exec.run(plan));
    return plan;
  }

  // As the step loop does it with an executor that chains: the plan, then while the
  // scheduler can plan ahead, each next step submitted before the one before it completes.
  // Returns the steps run.
  int step_chained() {
    StepPlan plan = sched.plan(Clock::now());
    if (plan.seqs.empty()) return 0;
    exec.submit(plan);
    int n = 1;
    while (true) {
      StepPlan ahead = sched.plan_ahead(Clock::now());
      if (!ahead.seqs.empty()) {
        exec.submit(ahead);
        ++n;
      }
      sched.complete(plan, exec.collect());
      if (ahead.seqs.empty()) return n;
      plan = std::move(ahead);
    }
  }

  int run_until_idle(int max_steps = 10000) {
    int n = 0;
    while (sched.has_work()) {
      step();
      if (++n > max_steps) {
        ADD_FAILURE() << "scheduler did not finish in " << max_steps << " steps";
        break;
      }
    }
    return n;
  }

  FakeTokenizer tok;
  Metrics metrics;
  FakeExecutor exec;
  KvBlockManager kv;
  Scheduler sched;
  testing::NextToken model;
  std::vector<std::shared_ptr<RequestHandle>> handles;
};

std::vector<int32_t> prompt_of(const FakeTokenizer& tok, std::string_view text) {
  return tok.encode(text, false, false);
}

TEST(Scheduler, BatchedGreedyTextEqualsEachRequestAlone) {
  SchedulerOptions so{.max_batch_tokens = 16, .max_seqs = 4, .max_context = 64};
  Harness h(so, {}, testing::hashed_model(/*eos_every=*/23));
  const std::vector<std::string> prompts = {"hello world", "a", "the quick brown fox jumps",
                                            "zz", "lorem ipsum dolor", "x y z"};
  std::vector<std::shared_ptr<RecordingObserver>> obs;
  for (size_t i = 0; i < prompts.size(); ++i) {
    obs.push_back(h.add(make_request("r" + std::to_string(i), prompt_of(h.tok, prompts[i]),
                                     /*max_tokens=*/10 + 5 * static_cast<int64_t>(i))));
  }
  h.run_until_idle();
  for (size_t i = 0; i < prompts.size(); ++i) {
    ASSERT_TRUE(obs[i]->ended());
    const std::string want = reference_text(h.model, h.tok, prompt_of(h.tok, prompts[i]),
                                            10 + 5 * static_cast<int64_t>(i), 64);
    EXPECT_EQ(obs[i]->text(), want) << "request " << i;
    EXPECT_NE(obs[i]->end().reason, FinishReason::kError);
  }
  EXPECT_EQ(h.kv.free_blocks(), h.kv.total_blocks());
  EXPECT_LE(h.exec.max_step_tokens(), 16);
}

TEST(Scheduler, ChunkedPrefillKeepsDecodesRunning) {
  SchedulerOptions so{.max_batch_tokens = 8, .max_seqs = 4, .max_context = 128};
  Harness h(so);
  auto a = h.add(make_request("a", {1, 2, 3}, 40));
  h.step();  // a's prompt
  h.step();  // a's first decode
  auto b = h.add(make_request("b", std::vector<int32_t>(30, 5), 5));
  std::vector<size_t> b_chunks;
  for (int i = 0; i < 5; ++i) {
    const StepPlan plan = h.step();
    ASSERT_EQ(plan.seqs.size(), 2u) << "step " << i;
    EXPECT_LE(plan.n_tokens(), 8);
    // The running decode comes first and gets its token every step.
    EXPECT_EQ(plan.seqs[0].seq_id, 1u);
    EXPECT_EQ(plan.seqs[0].tokens.size(), 1u);
    EXPECT_TRUE(plan.seqs[0].want_logits);
    b_chunks.push_back(plan.seqs[1].tokens.size());
    EXPECT_EQ(plan.seqs[1].want_logits, i == 4) << "only the last chunk needs logits";
  }
  EXPECT_EQ(b_chunks, (std::vector<size_t>{7, 7, 7, 7, 2}));
  h.run_until_idle();
  EXPECT_EQ(a->text(), reference_text(h.model, h.tok, {1, 2, 3}, 40, 128));
  EXPECT_EQ(b->text(), reference_text(h.model, h.tok, std::vector<int32_t>(30, 5), 5, 128));
}

TEST(Scheduler, AdmitsInArrivalOrderUnderTheSequenceCap) {
  SchedulerOptions so{.max_batch_tokens = 64, .max_seqs = 2, .max_context = 64};
  Harness h(so);
  const std::vector<int64_t> lengths = {3, 9, 2, 6, 4};
  for (size_t i = 0; i < lengths.size(); ++i) {
    h.add(make_request("r" + std::to_string(i), {static_cast<int32_t>(1 + i), 7}, lengths[i]));
  }
  std::vector<uint64_t> first_seen;
  std::set<uint64_t> seen;
  while (h.sched.has_work()) {
    const StepPlan plan = h.step();
    EXPECT_LE(plan.seqs.size(), 2u);
    for (const auto& s : plan.seqs) {
      if (seen.insert(s.seq_id).second) first_seen.push_back(s.seq_id);
    }
  }
  EXPECT_EQ(first_seen, (std::vector<uint64_t>{1, 2, 3, 4, 5}));
}

TEST(Scheduler, OldestWaitingRequestIsNotOvertakenWhenBlocksAreShort) {
  // 8 blocks of 4 tokens. A holds 6; B needs 4 and must wait; C would fit in the 2 left
  // but may not start before B.
  SchedulerOptions so{.max_batch_tokens = 64, .max_seqs = 8, .max_context = 32};
  Harness h(so, FakeExecutorOptions{.kv_blocks = 8, .block_size = 4});
  auto a = h.add(make_request("a", std::vector<int32_t>(20, 3), 3));
  h.step();
  auto b = h.add(make_request("b", std::vector<int32_t>(12, 4), 2));
  auto c = h.add(make_request("c", {5}, 2));
  bool b_started = false;
  while (h.sched.has_work()) {
    const StepPlan plan = h.step();
    for (const auto& s : plan.seqs) {
      if (s.seq_id == 2) b_started = true;
      if (s.seq_id == 3) {
        EXPECT_TRUE(b_started) << "c overtook b";
      }
    }
  }
  EXPECT_TRUE(a->ended() && b->ended() && c->ended());
  EXPECT_EQ(c->end().reason, FinishReason::kLength);
}

TEST(Scheduler, PreemptsTheYoungestWhenTheCacheRunsOutAndStillMatchesAlone) {
  // 6 blocks of 4 tokens = 24 tokens of KV; three requests that each grow to 16 tokens.
  SchedulerOptions so{.max_batch_tokens = 32, .max_seqs = 4, .max_context = 64};
  Harness h(so, FakeExecutorOptions{.kv_blocks = 6, .block_size = 4});
  EXPECT_EQ(h.sched.context_limit(), 24);
  std::vector<std::vector<int32_t>> prompts = {{1, 2, 3, 4}, {5, 6, 7, 8}, {9, 10, 11, 12}};
  std::vector<std::shared_ptr<RecordingObserver>> obs;
  for (size_t i = 0; i < prompts.size(); ++i) {
    obs.push_back(h.add(make_request("r" + std::to_string(i), prompts[i], 12)));
  }
  h.run_until_idle();
  EXPECT_GT(h.sched.preemptions(), 0);
  for (size_t i = 0; i < prompts.size(); ++i) {
    ASSERT_TRUE(obs[i]->ended());
    EXPECT_EQ(obs[i]->end().reason, FinishReason::kLength);
    EXPECT_EQ(obs[i]->end().usage.completion_tokens, 12);
    EXPECT_EQ(obs[i]->text(), reference_text(h.model, h.tok, prompts[i], 12, 24)) << i;
  }
  EXPECT_EQ(h.kv.free_blocks(), 6);
}

TEST(Scheduler, SampledTextDoesNotDependOnTheBatch) {
  // One Sampler per request: its random stream is its own, whoever else runs.
  SchedulerOptions so{.max_batch_tokens = 16, .max_seqs = 4, .max_context = 64};
  auto sampled = [&](bool crowded) {
    Harness h(so);
    if (crowded) {
      for (int i = 0; i < 3; ++i) {
        GenerationRequest r = make_request("other", {static_cast<int32_t>(2 + i)}, 20);
        r.sampling.temperature = 1.5f;
        r.sampling.seed = 100 + i;
        h.add(r);
      }
    }
    GenerationRequest r = make_request("me", {1, 2}, 20);
    r.sampling.temperature = 1.5f;
    r.sampling.seed = 7;
    r.ignore_eos = true;
    auto obs = h.add(r);
    h.run_until_idle();
    return obs->text();
  };
  const std::string alone = sampled(false);
  EXPECT_GE(alone.size(), 10u);
  // Greedy would give the reference text; temperature 1.5 over these logits should not.
  EXPECT_NE(alone, reference_text(testing::hashed_model(), FakeTokenizer(), {1, 2}, 20, 64));
  EXPECT_EQ(sampled(true), alone);
}

// A request without penalties asks the executor to sample where the logits are, with its
// own parameters; one with penalties does not (they need the history). In one batch the
// scheduler takes the returned token of the first as it is and samples the second's logits.
TEST(Scheduler, TakesDeviceSampledTokensAndSamplesLogitsRowsOnTheHost) {
  SchedulerOptions so{.max_batch_tokens = 16, .max_seqs = 4, .max_context = 64};
  FakeExecutorOptions fo;
  const int32_t z = FakeTokenizer().id_of("z");
  fo.device_next = [z](std::span<const int32_t>) { return z; };  // what the model never says
  Harness h(so, fo);
  GenerationRequest dev = make_request("dev", prompt_of(h.tok, "hello"), 6);
  dev.sampling.temperature = 0.9f;
  dev.sampling.top_k = 5;
  dev.sampling.top_p = 0.8f;
  dev.sampling.min_p = 0.01f;
  dev.sampling.seed = 1234;
  GenerationRequest host = make_request("host", prompt_of(h.tok, "world"), 6);
  host.sampling.repetition_penalty = 1.0001f;  // too small to change the greedy choice
  auto obs_dev = h.add(dev);
  auto obs_host = h.add(host);

  h.step();
  const StepPlan plan = h.exec.last_plan();
  ASSERT_EQ(plan.seqs.size(), 2u);
  int n_device = 0;
  for (const SeqStep& s : plan.seqs) {
    if (!s.sampling.enabled) continue;
    ++n_device;
    EXPECT_EQ(s.sampling, (DeviceSampling{.enabled = true, .temperature = 0.9f, .top_k = 5,
                                          .top_p = 0.8f, .min_p = 0.01f, .seed = 1234}));
  }
  EXPECT_EQ(n_device, 1);
  h.run_until_idle();
  EXPECT_EQ(obs_dev->text(), "zzzzzz");
  EXPECT_EQ(obs_host->text(),
            reference_text(h.model, h.tok, prompt_of(h.tok, "world"), 6, so.max_context));
  EXPECT_EQ(obs_dev->end().usage.completion_tokens, 6);
}

// Steps planned ahead (each decode token taken from the draw of the step before, which the
// scheduler has not yet seen) give every request the text of steps run one at a time:
// requests that end by EOS, by length, and one with penalties (never drawn on the device,
// so while it runs nothing is planned ahead); then a request that arrives later.
TEST(Scheduler, StepsPlannedAheadGiveTheTextsOfStepsOneAtATime) {
  SchedulerOptions so{.max_batch_tokens = 16, .max_seqs = 4, .max_context = 64};
  FakeExecutorOptions fo;
  fo.device_next = testing::hashed_model(/*eos_every=*/23);
  fo.chain = true;
  Harness h(so, fo, testing::hashed_model(/*eos_every=*/23));
  const std::vector<std::string> prompts = {"hello world", "a", "the quick brown fox jumps", "zz",
                                            "lorem ipsum dolor"};
  std::vector<std::shared_ptr<RecordingObserver>> obs;
  for (size_t i = 0; i < prompts.size(); ++i) {
    GenerationRequest r = make_request("r" + std::to_string(i), prompt_of(h.tok, prompts[i]),
                                       /*max_tokens=*/3 + 7 * static_cast<int64_t>(i));
    if (i == 3) r.sampling.repetition_penalty = 1.0001f;  // too small to change the choice
    obs.push_back(h.add(r));
  }
  int steps = 0, calls = 0;
  while (h.sched.has_work() && calls < 1000) {
    steps += h.step_chained();
    ++calls;
  }
  EXPECT_GT(steps, calls) << "no step was planned ahead";
  EXPECT_GT(h.exec.chained(), 0);
  auto late = h.add(make_request("late", prompt_of(h.tok, "x y z"), 12));
  while (h.sched.has_work() && calls < 2000) {
    h.step_chained();
    ++calls;
  }
  obs.push_back(late);
  for (size_t i = 0; i < obs.size(); ++i) {
    ASSERT_TRUE(obs[i]->ended()) << "request " << i;
    const bool is_late = i == prompts.size();
    const std::string prompt = is_late ? "x y z" : prompts[i];
    const int64_t max_tokens = is_late ? 12 : 3 + 7 * static_cast<int64_t>(i);
    EXPECT_EQ(obs[i]->text(), reference_text(h.model, h.tok, prompt_of(h.tok, prompt), max_tokens,
                                             so.max_context))
        << "request " << i;
    EXPECT_NE(obs[i]->end().reason, FinishReason::kError);
  }
  EXPECT_EQ(h.kv.free_blocks(), h.kv.total_blocks());
  EXPECT_FALSE(h.sched.in_flight());
}

// A request cancelled while steps run ahead ends as cancelled within a step or two, and the
// others go on.
TEST(Scheduler, CancelWhileStepsRunAheadEndsTheRequest) {
  SchedulerOptions so{.max_batch_tokens = 16, .max_seqs = 4, .max_context = 64};
  FakeExecutorOptions fo;
  fo.device_next = testing::hashed_model();
  fo.chain = true;
  Harness h(so, fo);
  auto a = h.add(make_request("a", prompt_of(h.tok, "hello"), 40));
  auto b = h.add(make_request("b", prompt_of(h.tok, "world"), 20));
  StepPlan plan = h.sched.plan(Clock::now());
  h.exec.submit(plan);
  for (int i = 0; i < 6; ++i) {
    if (i == 3) h.handles[0]->cancel();
    StepPlan ahead = h.sched.plan_ahead(Clock::now());
    if (i < 3) {
      ASSERT_EQ(ahead.seqs.size(), 2u) << "step " << i;
    } else {
      ASSERT_EQ(ahead.seqs.size(), 1u) << "step " << i << ": a is cancelled";
    }
    h.exec.submit(ahead);
    h.sched.complete(plan, h.exec.collect());
    plan = std::move(ahead);
  }
  h.sched.complete(plan, h.exec.collect());
  ASSERT_TRUE(a->ended());
  EXPECT_EQ(a->end().reason, FinishReason::kCancelled);
  EXPECT_FALSE(b->ended());
  h.run_until_idle();
  EXPECT_EQ(b->text(), reference_text(h.model, h.tok, prompt_of(h.tok, "world"), 20, 64));
  EXPECT_EQ(h.kv.free_blocks(), h.kv.total_blocks());
}

TEST(Scheduler, DeviceSamplingCanBeTurnedOff) {
  SchedulerOptions so{.max_batch_tokens = 16, .max_seqs = 4, .max_context = 64,
                      .device_sampling = false};
  FakeExecutorOptions fo;
  fo.device_next = [](std::span<const int32_t>) { return int32_t{1}; };
  Harness h(so, fo);
  auto obs = h.add(make_request("a", prompt_of(h.tok, "hello"), 5));
  h.step();
  ASSERT_EQ(h.exec.last_plan().seqs.size(), 1u);
  EXPECT_FALSE(h.exec.last_plan().seqs[0].sampling.enabled);
  h.run_until_idle();
  EXPECT_EQ(obs->text(), reference_text(h.model, h.tok, prompt_of(h.tok, "hello"), 5, 64));
}

// The model reads a script: token i of the generation is script[i].
testing::NextToken scripted(std::vector<int32_t> script, size_t prompt_len) {
  return [script, prompt_len](std::span<const int32_t> ctx) {
    const size_t i = ctx.size() - prompt_len;
    return i < script.size() ? script[i] : int32_t{0};
  };
}

TEST(Scheduler, StopStringAcrossTokensIsNeverStreamedEarly) {
  FakeTokenizer tok;
  std::vector<int32_t> script;
  for (const char* p : {"a", "S", "T", "O", "x", "S", "T", "O", "P", "b"}) {
    script.push_back(tok.id_of(p));
  }
  Harness h({.max_batch_tokens = 8, .max_seqs = 2, .max_context = 64}, {}, scripted(script, 1));
  GenerationRequest r = make_request("s", {1}, 50);
  r.stop = {"STOP", "never"};
  auto obs = h.add(r);
  h.run_until_idle();
  EXPECT_EQ(obs->chunks(), (std::vector<std::string>{"a", "STOx"}));
  EXPECT_EQ(obs->end().reason, FinishReason::kStop);
  EXPECT_EQ(obs->end().usage.completion_tokens, 9);
}

TEST(Scheduler, StopStringInsideOneToken) {
  FakeTokenizer tok;
  Harness h({.max_batch_tokens = 8, .max_seqs = 2, .max_context = 64}, {},
            scripted({tok.id_of("ab"), tok.id_of("STOP"), tok.id_of("c")}, 1));
  GenerationRequest r = make_request("s", {1}, 50);
  r.stop = {"bST"};
  auto obs = h.add(r);
  h.run_until_idle();
  EXPECT_EQ(obs->text(), "a");
  EXPECT_EQ(obs->end().reason, FinishReason::kStop);
}

TEST(Scheduler, MultiByteCharacterSplitOverTokensIsSentWhole) {
  FakeTokenizer tok;
  Harness h({.max_batch_tokens = 8, .max_seqs = 2, .max_context = 64}, {},
            scripted({tok.id_of("\xC3"), tok.id_of("\xA9"), tok.id_of("z")}, 1));
  auto obs = h.add(make_request("u", {1}, 3));
  h.run_until_idle();
  EXPECT_EQ(obs->chunks(), (std::vector<std::string>{"\xC3\xA9", "z"}));
}

TEST(Scheduler, EndOfGenerationStopsUnlessIgnored) {
  FakeTokenizer tok;
  const auto model = scripted({tok.id_of("h"), tok.id_of("i"), 0, tok.id_of("x")}, 1);
  Harness h({.max_batch_tokens = 8, .max_seqs = 2, .max_context = 64}, {}, model);
  auto stopped = h.add(make_request("e", {1}, 10));
  GenerationRequest r = make_request("i", {1}, 4);
  r.ignore_eos = true;
  auto ignored = h.add(r);
  h.run_until_idle();
  EXPECT_EQ(stopped->text(), "hi");
  EXPECT_EQ(stopped->end().reason, FinishReason::kStop);
  EXPECT_EQ(stopped->end().usage.completion_tokens, 3);
  EXPECT_EQ(stopped->end().usage.prompt_tokens, 1);
  EXPECT_EQ(ignored->text(), "hix");
  EXPECT_EQ(ignored->end().reason, FinishReason::kLength);
}

TEST(Scheduler, ContextLimitEndsWithLength) {
  Harness h({.max_batch_tokens = 8, .max_seqs = 2, .max_context = 10});
  auto obs = h.add(make_request("c", {1, 2, 3, 4}, 100));
  h.run_until_idle();
  EXPECT_EQ(obs->end().reason, FinishReason::kLength);
  EXPECT_EQ(obs->end().usage.completion_tokens, 6);
}

TEST(Scheduler, PromptThatCannotFitIsTooLong) {
  Harness h({.max_batch_tokens = 8, .max_seqs = 2, .max_context = 10});
  auto obs = h.add(make_request("long", std::vector<int32_t>(10, 1), 5));
  ASSERT_TRUE(obs->ended());
  EXPECT_EQ(obs->end().reason, FinishReason::kError);
  EXPECT_EQ(obs->end().error_code, ErrorCode::kTooLong);
  auto empty = h.add(make_request("empty", {}, 5));
  EXPECT_EQ(empty->end().error_code, ErrorCode::kBadRequest);
  GenerationRequest bad = make_request("bad", {1}, 5);
  bad.sampling.top_p = 0.0f;
  EXPECT_EQ(h.add(bad)->end().error_code, ErrorCode::kBadRequest);
  EXPECT_FALSE(h.sched.has_work());
  EXPECT_EQ(h.kv.free_blocks(), h.kv.total_blocks());
}

TEST(Scheduler, CancelEndsTheRequestAndFreesItsBlocksAtTheNextStep) {
  Harness h({.max_batch_tokens = 16, .max_seqs = 4, .max_context = 64});
  auto keep = h.add(make_request("keep", {1, 2, 3}, 30));
  auto gone = h.add(make_request("gone", std::vector<int32_t>(9, 2), 30));
  for (int i = 0; i < 4; ++i) h.step();
  const int64_t keep_blocks = static_cast<int64_t>(h.kv.table(1).size());
  h.handles[1]->cancel();
  const StepPlan plan = h.step();
  ASSERT_EQ(plan.seqs.size(), 1u);
  EXPECT_EQ(plan.seqs[0].seq_id, 1u);
  ASSERT_TRUE(gone->ended());
  EXPECT_EQ(gone->end().reason, FinishReason::kCancelled);
  EXPECT_EQ(gone->end().usage.completion_tokens, 4);
  EXPECT_LE(h.kv.total_blocks() - h.kv.free_blocks(), keep_blocks + 1);
  h.handles[0]->cancel();
  h.step();
  EXPECT_EQ(keep->end().reason, FinishReason::kCancelled);
  EXPECT_EQ(h.kv.free_blocks(), h.kv.total_blocks());
  EXPECT_EQ(h.metrics.requests("cancelled"), 2u);
}

TEST(Scheduler, DeadlineEndsWithTimeout) {
  Harness h({.max_batch_tokens = 16, .max_seqs = 4, .max_context = 64});
  GenerationRequest r = make_request("t", {1, 2}, 30);
  r.deadline = r.arrival + std::chrono::seconds(5);
  auto obs = h.add(r);
  h.step();
  EXPECT_FALSE(obs->ended());
  const StepPlan plan = h.sched.plan(r.arrival + std::chrono::seconds(6));
  EXPECT_TRUE(plan.seqs.empty());
  EXPECT_EQ(obs->end().reason, FinishReason::kTimeout);
  EXPECT_EQ(h.kv.free_blocks(), h.kv.total_blocks());
}

TEST(Scheduler, FailedStepEndsItsRequestsWithAnInternalError) {
  Harness h({.max_batch_tokens = 16, .max_seqs = 4, .max_context = 64},
            FakeExecutorOptions{.fail_at_step = 3});
  auto a = h.add(make_request("a", {1, 2}, 30));
  auto b = h.add(make_request("b", {3, 4}, 30));
  for (int i = 0; i < 5 && h.sched.has_work(); ++i) {
    StepPlan plan = h.sched.plan(Clock::now());
    try {
      h.sched.complete(plan, h.exec.run(plan));
    } catch (const Error&) {
      h.sched.fail_planned("injected");
    }
  }
  EXPECT_EQ(a->end().error_code, ErrorCode::kInternal);
  EXPECT_EQ(b->end().reason, FinishReason::kError);
  EXPECT_FALSE(h.sched.has_work());
  EXPECT_EQ(h.kv.free_blocks(), h.kv.total_blocks());
}

TEST(Scheduler, MetricsCountTokensAndOutcomes) {
  Harness h({.max_batch_tokens = 16, .max_seqs = 4, .max_context = 64});
  h.add(make_request("a", {1, 2, 3}, 5));
  h.add(make_request("b", {4, 5}, 7));
  h.run_until_idle();
  const std::string text = h.metrics.render();
  EXPECT_NE(text.find("tpnode_prompt_tokens_total 5\n"), std::string::npos) << text;
  EXPECT_NE(text.find("tpnode_generated_tokens_total 12\n"), std::string::npos) << text;
  EXPECT_NE(text.find("tpnode_requests_total{outcome=\"length\"} 2\n"), std::string::npos);
  EXPECT_NE(text.find("tpnode_time_to_first_token_seconds_count 2\n"), std::string::npos);
  EXPECT_NE(text.find("tpnode_inter_token_latency_seconds_count 10\n"), std::string::npos);
}

}  // namespace
}  // namespace tpnode::coord
