// The step loop with an executor that chains (steps queued ahead, their decode tokens taken
// from the draw of the step before): requests arriving while others run, a cancel, one that
// samples on the host, all through the loop's thread, against the texts of the model run
// one request at a time.
#include "coordinator/step_loop.h"

#include <gtest/gtest.h>

#include <chrono>
#include <memory>
#include <string>
#include <thread>
#include <vector>

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

TEST(StepLoopChained, RequestsGetTheTextsOfRequestsRunAlone) {
  FakeExecutorOptions fo{.kv_blocks = 64, .block_size = 4};
  fo.device_next = testing::hashed_model(/*eos_every=*/31);
  fo.chain = true;
  fo.step_delay = std::chrono::microseconds(200);  // requests arrive while steps run
  FakeTokenizer tok;
  Metrics metrics;
  FakeExecutor exec(fo, testing::hashed_model(/*eos_every=*/31));
  const SchedulerOptions so{.max_batch_tokens = 16, .max_seqs = 4, .max_context = 64};
  StepLoop loop(StepLoopOptions{.scheduler = so, .kv_blocks = fo.kv_blocks,
                                .kv_block_size = fo.block_size, .max_queue = 64},
                exec, tok, &metrics);
  loop.start();

  const std::vector<std::string> prompts = {"hello world", "a", "the quick brown fox",
                                            "zz top", "lorem ipsum", "x y z", "abc"};
  std::vector<std::shared_ptr<RecordingObserver>> obs;
  std::vector<std::shared_ptr<RequestHandle>> handles;
  for (size_t i = 0; i < prompts.size(); ++i) {
    GenerationRequest r = make_request("r" + std::to_string(i), tok.encode(prompts[i], false, false),
                                       /*max_tokens=*/8 + 4 * static_cast<int64_t>(i));
    if (i == 2) r.sampling.repetition_penalty = 1.0001f;  // sampled on the host
    auto o = std::make_shared<RecordingObserver>();
    auto h = std::make_shared<RequestHandle>(std::move(r), o);
    obs.push_back(o);
    handles.push_back(h);
    ASSERT_FALSE(loop.submit(h).has_value());
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  // One more, cancelled while it runs.
  auto cancel_obs = std::make_shared<RecordingObserver>();
  auto cancelled = std::make_shared<RequestHandle>(
      make_request("c", tok.encode("cancel me", false, false), 60), cancel_obs);
  ASSERT_FALSE(loop.submit(cancelled).has_value());
  std::this_thread::sleep_for(std::chrono::milliseconds(3));
  cancelled->cancel();

  for (size_t i = 0; i < prompts.size(); ++i) {
    ASSERT_TRUE(obs[i]->wait(std::chrono::seconds(10))) << "request " << i;
    EXPECT_EQ(obs[i]->text(),
              reference_text(testing::hashed_model(31), tok, tok.encode(prompts[i], false, false),
                             8 + 4 * static_cast<int64_t>(i), so.max_context))
        << "request " << i;
    EXPECT_NE(obs[i]->end().reason, FinishReason::kError) << "request " << i;
  }
  ASSERT_TRUE(cancel_obs->wait(std::chrono::seconds(10)));
  EXPECT_EQ(cancel_obs->end().reason, FinishReason::kCancelled);
  EXPECT_GT(exec.chained(), 0) << "no step was queued ahead";
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  while (loop.stats().kv_free_blocks != loop.stats().kv_total_blocks &&
         std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  EXPECT_EQ(loop.stats().kv_free_blocks, loop.stats().kv_total_blocks);
  loop.stop();
}

}  // namespace
}  // namespace tpnode::coord
