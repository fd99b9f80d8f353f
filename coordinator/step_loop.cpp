#include "coordinator/step_loop.h"

#include <spdlog/spdlog.h>

#include <exception>

#include "coordinator/metrics.h"
#include "node/common/error.h"
#include "node/engine/step_executor.h"

namespace tpnode::coord {

StepLoop::StepLoop(const StepLoopOptions& options, StepExecutor& executor,
                   const Tokenizer& tokenizer, Metrics* metrics)
    : options_(options),
      executor_(executor),
      metrics_(metrics),
      kv_(options.kv_blocks, options.kv_block_size),
      scheduler_(options.scheduler, kv_, tokenizer, metrics),
      context_limit_(scheduler_.context_limit()) {
  TPNODE_CHECK(options_.max_queue > 0, "max_queue must be positive (got {})", options_.max_queue);
  stats_.kv_free_blocks = kv_.free_blocks();
  stats_.kv_total_blocks = kv_.total_blocks();
}

StepLoop::~StepLoop() { stop(); }

std::optional<ErrorCode> StepLoop::submit(std::shared_ptr<RequestHandle> handle) {
  if (static_cast<int64_t>(handle->request().prompt.size()) + 1 > context_limit_) {
    return ErrorCode::kTooLong;
  }
  {
    std::lock_guard lock(mu_);
    if (draining_) return ErrorCode::kShuttingDown;
    // stats_.waiting counts the inbox too.
    if (stats_.waiting >= options_.max_queue) {
      return ErrorCode::kOverloaded;
    }
    inbox_.push_back(std::move(handle));
    // Counted at once, so a burst cannot slip past the bound between two steps.
    ++stats_.waiting;
  }
  cv_.notify_one();
  return std::nullopt;
}

void StepLoop::wake() {
  {
    std::lock_guard lock(mu_);
    wake_ = true;
  }
  cv_.notify_one();
}

bool StepLoop::drained_locked() const {
  return draining_ && inbox_.empty() && !scheduler_.has_work();
}

void StepLoop::publish_stats_locked() {
  stats_.waiting = scheduler_.waiting() + static_cast<int64_t>(inbox_.size());
  stats_.running = scheduler_.running();
  stats_.kv_free_blocks = kv_.free_blocks();
  stats_.preemptions = scheduler_.preemptions();
  if (metrics_) {
    metrics_->set_load(LoadGauges{stats_.waiting, stats_.running,
                                  kv_.total_blocks() - kv_.free_blocks(), kv_.total_blocks()});
  }
}

void StepLoop::run() {
  std::vector<std::shared_ptr<RequestHandle>> incoming;
  while (true) {
    {
      std::unique_lock lock(mu_);
      const auto ready = [&] {
        return wake_ || !inbox_.empty() || scheduler_.has_work() || draining_;
      };
      cv_.wait(lock, ready);
      wake_ = false;
      incoming.swap(inbox_);
      if (draining_ && Clock::now() >= drain_deadline_) {
        // Out of time: whatever is still running or queued ends as cancelled.
        for (auto& h : incoming) h->cancel();
        for (auto& h : incoming) scheduler_.add(std::move(h));
        incoming.clear();
        scheduler_.end_all(FinishReason::kCancelled);
        publish_stats_locked();
        return;
      }
      if (incoming.empty() && drained_locked()) {
        publish_stats_locked();
        return;
      }
    }
    for (auto& h : incoming) scheduler_.add(std::move(h));
    incoming.clear();

    StepPlan plan = scheduler_.plan(Clock::now());
    const bool idle = plan.seqs.empty();
    if (!idle) run_steps(std::move(plan));
    std::unique_lock lock(mu_);
    publish_stats_locked();
    if (idle && scheduler_.has_work()) {
      // Nothing could run although requests wait (cannot happen with a consistent KV
      // budget); sleep briefly rather than spin.
      cv_.wait_for(lock, std::chrono::milliseconds(5));
    }
  }
}

// Runs `plan` and, while the executor chains and nothing else needs the scheduler, the
// steps planned ahead of it: each next step is submitted before the one before it is
// collected, so the device never waits for the host between them.
void StepLoop::run_steps(StepPlan plan) {
  auto t0 = Clock::now();
  try {
    executor_.submit(plan);
  } catch (const std::exception& e) {
    // The step's requests cannot continue (their KV state is unknown); others can.
    spdlog::error("step {} failed: {}", plan.step, e.what());
    scheduler_.fail_planned(e.what());
    return;
  }
  while (true) {
    StepPlan ahead;
    if (options_.overlap && executor_.chains() && !interrupted()) {
      ahead = scheduler_.plan_ahead(Clock::now());
    }
    if (!ahead.seqs.empty()) {
      try {
        executor_.submit(ahead);
      } catch (const std::exception& e) {
        spdlog::error("step {} failed: {}", ahead.step, e.what());
        scheduler_.fail_planned(e.what(), /*newest=*/true);
        ahead.seqs.clear();
      }
    }
    try {
      scheduler_.complete(plan, executor_.collect());
    } catch (const std::exception& e) {
      spdlog::error("step {} failed: {}", plan.step, e.what());
      scheduler_.fail_planned(e.what());
    }
    const auto t1 = Clock::now();
    if (metrics_) {
      metrics_->observe_step(std::chrono::duration<double>(t1 - t0).count(), plan.n_tokens());
    }
    t0 = t1;
    {
      std::lock_guard lock(mu_);
      ++stats_.steps;
      publish_stats_locked();
    }
    if (ahead.seqs.empty()) return;
    plan = std::move(ahead);
  }
}

bool StepLoop::interrupted() const {
  std::lock_guard lock(mu_);
  return !inbox_.empty() || draining_;
}

void StepLoop::start() {
  TPNODE_CHECK(!thread_.joinable(), "step loop already started");
  thread_ = std::thread([this] {
    try {
      run();
    } catch (const std::exception& e) {
      spdlog::critical("step loop stopped: {}", e.what());
    }
  });
}

void StepLoop::drain(Clock::time_point deadline) {
  {
    std::lock_guard lock(mu_);
    draining_ = true;
    drain_deadline_ = std::min(drain_deadline_, deadline);
  }
  cv_.notify_one();
}

void StepLoop::stop() {
  drain(Clock::now());
  if (thread_.joinable()) thread_.join();
}

StepLoopStats StepLoop::stats() const {
  std::lock_guard lock(mu_);
  return stats_;
}

}  // namespace tpnode::coord
