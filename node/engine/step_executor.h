// Runs a StepPlan on every rank and returns rank 0's output (sampled tokens and logits).
// With one rank it is a direct call; parallel/ provides the broadcasting one. The scheduler
// only sees this interface.
#pragma once

#include <vector>

#include "node/engine/step_plan.h"

namespace tpnode {

class Engine;

class StepExecutor {
 public:
  virtual ~StepExecutor() = default;
  // One row per sequence with want_logits, in plan order: a token sampled on the device or
  // logits for the host to sample (see StepOutput and Engine::run).
  virtual const StepOutput& run(const StepPlan& plan) = 0;
  // run() in two halves (Engine::submit and collect). An executor that chains() keeps up to
  // two steps uncollected and takes kChainedToken; by default submit() runs the step and
  // collect() returns its output, one step at a time.
  virtual bool chains() const { return false; }
  virtual void submit(const StepPlan& plan) { done_ = &run(plan); }
  virtual const StepOutput& collect();
  // Tells workers to leave their loop (no-op with one rank).
  virtual void shutdown() = 0;

 private:
  const StepOutput* done_ = nullptr;
};

class LocalExecutor final : public StepExecutor {
 public:
  explicit LocalExecutor(Engine& engine) : engine_(engine) {}
  const StepOutput& run(const StepPlan& plan) override;
  bool chains() const override;
  void submit(const StepPlan& plan) override;
  const StepOutput& collect() override;
  void shutdown() override {}

 private:
  Engine& engine_;
};

}  // namespace tpnode
