#include "node/engine/step_plan.h"

#include <gtest/gtest.h>

#include <cmath>

#include "node/common/error.h"
#include "node/engine/sampler.h"

namespace tpnode {
namespace {

TEST(StepPlan, RoundTrips) {
  StepPlan p;
  p.step = 42;
  p.seqs.push_back({7, 0, {1, 2, 3}, {4, 5}, true});
  p.seqs.push_back({9, 31, {8}, {0, 1}, false});
  const StepPlan q = deserialize_step_plan(serialize(p));
  EXPECT_EQ(q.step, 42u);
  EXPECT_FALSE(q.shutdown);
  ASSERT_EQ(q.seqs.size(), 2u);
  EXPECT_EQ(q.seqs[0].tokens, (std::vector<int32_t>{1, 2, 3}));
  EXPECT_EQ(q.seqs[1].n_past, 31);
  EXPECT_EQ(q.seqs[1].blocks, (std::vector<int32_t>{0, 1}));
  EXPECT_FALSE(q.seqs[1].want_logits);
  EXPECT_EQ(q.n_tokens(), 4);
  EXPECT_EQ(q.n_logits(), 1);
}

TEST(StepPlan, RejectsEveryTruncation) {
  StepPlan p;
  p.seqs.push_back({7, 0, {1, 2, 3}, {4, 5}, true});
  const std::string bytes = serialize(p);
  for (size_t n = 0; n < bytes.size(); ++n) {
    EXPECT_THROW(deserialize_step_plan(bytes.substr(0, n)), Error) << n;
  }
  EXPECT_THROW(deserialize_step_plan(bytes + "x"), Error);
}

TEST(StepPlan, RoundTripsDeviceSampling) {
  StepPlan p;
  p.step = 3;
  SeqStep a{.seq_id = 7, .n_past = 5, .tokens = {1}, .blocks = {4}, .want_logits = true};
  a.sampling = {.enabled = true, .temperature = 0.7f, .top_k = 40, .top_p = 0.9f, .min_p = 0.05f,
                .seed = 0xDEADBEEF12345678ull};
  p.seqs.push_back(a);
  p.seqs.push_back({.seq_id = 9, .n_past = 0, .tokens = {2, 3}, .blocks = {0}, .want_logits = true});
  const StepPlan q = deserialize_step_plan(serialize(p));
  ASSERT_EQ(q.seqs.size(), 2u);
  EXPECT_TRUE(q.seqs[0].sampling.enabled);
  EXPECT_EQ(q.seqs[0].sampling.temperature, 0.7f);
  EXPECT_EQ(q.seqs[0].sampling.top_k, 40);
  EXPECT_EQ(q.seqs[0].sampling.top_p, 0.9f);
  EXPECT_EQ(q.seqs[0].sampling.min_p, 0.05f);
  EXPECT_EQ(q.seqs[0].sampling.seed, 0xDEADBEEF12345678ull);
  EXPECT_EQ(q.seqs[1].sampling, DeviceSampling{});
  EXPECT_FALSE(q.seqs[1].sampling.enabled);
}

// The count bound (46 bytes a sequence) must not reject the smallest valid sequences.
TEST(StepPlan, RoundTripsManyMinimalSequences) {
  StepPlan p;
  for (uint64_t i = 0; i < 100; ++i) {
    SeqStep s;
    s.seq_id = i;
    s.want_logits = false;
    p.seqs.push_back(s);
  }
  const StepPlan q = deserialize_step_plan(serialize(p));
  ASSERT_EQ(q.seqs.size(), 100u);
  EXPECT_EQ(q.seqs[99].seq_id, 99u);
}

TEST(StepPlan, RejectsBadDeviceSampling) {
  auto with = [](DeviceSampling d) {
    StepPlan p;
    p.seqs.push_back({.seq_id = 1, .n_past = 0, .tokens = {1}, .blocks = {0}, .want_logits = true});
    p.seqs[0].sampling = d;
    return serialize(p);
  };
  const DeviceSampling ok{.enabled = true, .temperature = 1.0f};
  EXPECT_NO_THROW(deserialize_step_plan(with(ok)));
  DeviceSampling bad = ok;
  bad.top_p = 0.0f;
  EXPECT_THROW(deserialize_step_plan(with(bad)), Error);
  bad = ok;
  bad.temperature = std::nanf("");
  EXPECT_THROW(deserialize_step_plan(with(bad)), Error);
  bad = ok;
  bad.top_k = -1;
  EXPECT_THROW(deserialize_step_plan(with(bad)), Error);
  bad = ok;
  bad.min_p = 1.5f;
  EXPECT_THROW(deserialize_step_plan(with(bad)), Error);
  // Parameters of a disabled entry are never used, so they are not checked.
  bad.enabled = false;
  EXPECT_NO_THROW(deserialize_step_plan(with(bad)));
}

TEST(StepPlan, DeviceSamplingOnlyWithoutPenalties) {
  SamplingParams sp;
  sp.temperature = 0.8f;
  sp.top_k = 20;
  sp.top_p = 0.95f;
  sp.min_p = 0.1f;
  sp.seed = 77;
  const DeviceSampling d = device_sampling_for(sp);
  EXPECT_EQ(d, (DeviceSampling{.enabled = true, .temperature = 0.8f, .top_k = 20, .top_p = 0.95f,
                               .min_p = 0.1f, .seed = 77}));
  for (int which = 0; which < 3; ++which) {
    SamplingParams pen = sp;
    if (which == 0) pen.repetition_penalty = 1.1f;
    if (which == 1) pen.presence_penalty = 0.5f;
    if (which == 2) pen.frequency_penalty = -0.5f;
    EXPECT_FALSE(device_sampling_for(pen).enabled) << which;
    pen.penalty_last_n = 0;  // penalties over no tokens change nothing
    EXPECT_TRUE(device_sampling_for(pen).enabled) << which;
  }
}

}  // namespace
}  // namespace tpnode
