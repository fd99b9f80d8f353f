// The thread that owns the Scheduler and drives the StepExecutor. Network threads hand
// requests in through submit() (a bounded queue: a full one refuses at once) and cancel
// through RequestHandle::cancel() + wake(). The loop sleeps while there is nothing to do.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <thread>
#include <vector>

#include "coordinator/request.h"
#include "coordinator/scheduler.h"
#include "node/engine/kv_blocks.h"

namespace tpnode {
class StepExecutor;
class Tokenizer;
}  // namespace tpnode

namespace tpnode::coord {

class Metrics;

struct StepLoopOptions {
  SchedulerOptions scheduler;
  int64_t kv_blocks = 0;      // KV cache size in blocks (the engine's)
  int64_t kv_block_size = 16;
  int64_t max_queue = 256;    // requests waiting to start; past it submit() says overloaded
  // With an executor that chains, queue each decode step before the one before it completes
  // (Scheduler::plan_ahead); false: one step at a time.
  bool overlap = true;
};

// A consistent view for tests and /metrics.
struct StepLoopStats {
  int64_t waiting = 0;
  int64_t running = 0;
  int64_t kv_free_blocks = 0;
  int64_t kv_total_blocks = 0;
  uint64_t steps = 0;
  int64_t preemptions = 0;
};

class StepLoop {
 public:
  // executor, tokenizer and metrics must outlive the loop; metrics may be null.
  StepLoop(const StepLoopOptions& options, StepExecutor& executor, const Tokenizer& tokenizer,
           Metrics* metrics);
  ~StepLoop();  // stops and joins a thread started by start()
  StepLoop(const StepLoop&) = delete;
  StepLoop& operator=(const StepLoop&) = delete;

  int64_t context_limit() const { return context_limit_; }

  // From any thread. Returns nullopt when queued (the handle's observer hears the rest),
  // or the error to send at once: kOverloaded, kTooLong or kShuttingDown.
  std::optional<ErrorCode> submit(std::shared_ptr<RequestHandle> handle);
  // Wakes the loop so a cancelled request ends now rather than at the next step.
  void wake();

  // Runs steps on the calling thread until drained (run) or on a new thread (start).
  void run();
  void start();
  // Stops taking requests; the loop lets the in-flight ones finish until `deadline`, then
  // cancels what is left and returns from run().
  void drain(Clock::time_point deadline);
  // drain(now) and join the thread of start().
  void stop();

  StepLoopStats stats() const;

 private:
  bool drained_locked() const;
  void run_steps(StepPlan plan);
  bool interrupted() const;  // requests arrived or draining began
  void publish_stats_locked();

  StepLoopOptions options_;
  StepExecutor& executor_;
  Metrics* metrics_;
  KvBlockManager kv_;
  Scheduler scheduler_;  // touched only by the loop thread
  int64_t context_limit_;

  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::vector<std::shared_ptr<RequestHandle>> inbox_;
  bool wake_ = false;
  bool draining_ = false;
  Clock::time_point drain_deadline_ = Clock::time_point::max();
  StepLoopStats stats_;  // published by the loop thread after each step
  std::thread thread_;
};

}  // namespace tpnode::coord
