// Drives a step on every rank: rank 0 broadcasts each StepPlan and runs its own shard;
// the other ranks sit in run_worker_loop, receiving plans and running them, until rank 0
// says stop.
//
// Failures: if a rank is lost, run() throws tpnode::Error(kRuntime, "rank N (host) lost: ...")
// and the communicator is marked failed. The caller (the coordinator) answers its in-flight
// clients with errors and exits non-zero; ~World then aborts the job so mpirun ends every rank.
#pragma once

#include <vector>

#include "node/engine/engine.h"
#include "node/engine/step_executor.h"
#include "parallel/communicator.h"

namespace tpnode {

class DistributedExecutor final : public StepExecutor {
 public:
  // On rank 0, waits (idle wait) until every rank has its engine built. On other ranks the
  // object is inert (run() throws, shutdown() does nothing): they call run_worker_loop.
  DistributedExecutor(Engine& engine, Communicator& comm);
  // Sends the shutdown plan if shutdown() was not called, so workers never outlive rank 0's
  // executor waiting for a plan.
  ~DistributedExecutor() override;
  DistributedExecutor(const DistributedExecutor&) = delete;
  DistributedExecutor& operator=(const DistributedExecutor&) = delete;

  const StepOutput& run(const StepPlan& plan) override;
  void shutdown() override;  // idempotent

 private:
  Engine& engine_;
  Communicator& comm_;
  bool shut_down_ = false;
};

// Ranks other than 0: waits for every rank's engine, then receives and runs plans until the
// shutdown plan (returns 0), a stop signal (returns 128 + signal), or an error (logs it, marks
// the communicator failed so that ~World aborts the job, returns 1). Installs SIGINT/SIGTERM
// handlers (stop_signal.h).
int run_worker_loop(Engine& engine, Communicator& comm);

}  // namespace tpnode
