// Runs a StepPlan on every rank and returns rank 0's logits. With one rank it is a direct
// call; parallel/ provides the broadcasting one. The scheduler only sees this interface.
#pragma once

#include <vector>

#include "node/engine/step_plan.h"

namespace tpnode {

class Engine;

class StepExecutor {
 public:
  virtual ~StepExecutor() = default;
  // Logits [plan.n_logits(), n_vocab] in the order of the sequences with want_logits.
  virtual const std::vector<float>& run(const StepPlan& plan) = 0;
  // Tells workers to leave their loop (no-op with one rank).
  virtual void shutdown() = 0;
};

class LocalExecutor final : public StepExecutor {
 public:
  explicit LocalExecutor(Engine& engine) : engine_(engine) {}
  const std::vector<float>& run(const StepPlan& plan) override;
  void shutdown() override {}

 private:
  Engine& engine_;
};

}  // namespace tpnode
