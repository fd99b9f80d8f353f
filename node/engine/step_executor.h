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
  // Tells workers to leave their loop (no-op with one rank).
  virtual void shutdown() = 0;
};

class LocalExecutor final : public StepExecutor {
 public:
  explicit LocalExecutor(Engine& engine) : engine_(engine) {}
  const StepOutput& run(const StepPlan& plan) override;
  void shutdown() override {}

 private:
  Engine& engine_;
};

}  // namespace tpnode
