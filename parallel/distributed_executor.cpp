#include "parallel/distributed_executor.h"

#include <spdlog/spdlog.h>

#include "node/common/error.h"
#include "parallel/step_plan_broadcast.h"
#include "parallel/stop_signal.h"

namespace tpnode {

DistributedExecutor::DistributedExecutor(Engine& engine, Communicator& comm)
    : engine_(engine), comm_(comm) {
  // Other ranks may hold one (a runtime built the same way everywhere) but drive nothing:
  // their work is run_worker_loop.
  if (comm_.rank() != 0) {
    shut_down_ = true;
    return;
  }
  comm_.barrier_idle();
}

DistributedExecutor::~DistributedExecutor() {
  try {
    shutdown();
  } catch (const std::exception& e) {
    spdlog::warn("could not tell the workers to stop: {}", e.what());
  }
}

const StepOutput& DistributedExecutor::run(const StepPlan& plan) {
  TPNODE_CHECK_KIND(comm_.rank() == 0, ErrorKind::kRuntime,
                    "DistributedExecutor::run on rank {}: only rank 0 drives steps", comm_.rank());
  TPNODE_CHECK_KIND(!shut_down_, ErrorKind::kRuntime, "step {} after shutdown", plan.step);
  TPNODE_CHECK(!plan.shutdown, "step {}: a plan with shutdown set; call shutdown()", plan.step);
  if (comm_.size() > 1) send_step_plan(comm_, plan);
  try {
    return engine_.run(plan);
  } catch (const std::exception& e) {
    // The workers are inside this step, waiting for collectives this rank will not join.
    comm_.mark_failed(fmt::format("rank 0 failed in step {}: {}", plan.step, e.what()));
    throw;
  }
}

void DistributedExecutor::shutdown() {
  if (shut_down_) return;
  shut_down_ = true;
  if (comm_.size() == 1 || comm_.failed()) return;
  StepPlan stop;
  stop.shutdown = true;
  send_step_plan(comm_, stop);
}

int run_worker_loop(Engine& engine, Communicator& comm) {
  TPNODE_CHECK(comm.rank() != 0, "run_worker_loop is for ranks other than 0");
  install_stop_signal_handlers();
  uint64_t steps = 0;
  try {
    comm.barrier_idle();
    spdlog::info("rank {}: waiting for plans", comm.rank());
    while (true) {
      const StepPlan plan = receive_step_plan(comm);
      if (plan.shutdown) {
        spdlog::info("rank {}: shutdown after {} steps", comm.rank(), steps);
        return 0;
      }
      engine.run(plan);
      ++steps;
    }
  } catch (const std::exception& e) {
    if (stop_requested()) {
      spdlog::info("rank {}: stopping on signal {} after {} steps", comm.rank(), stop_signal(),
                   steps);
      return 128 + stop_signal();
    }
    comm.mark_failed(fmt::format("rank {} failed: {}", comm.rank(), e.what()));
    spdlog::error("rank {}: {}", comm.rank(), e.what());
    return 1;
  }
}

}  // namespace tpnode
