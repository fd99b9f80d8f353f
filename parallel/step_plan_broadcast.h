// A StepPlan from rank 0 to every rank: its serialized length, then its bytes. Workers wait
// for the length as an idle wait (rank 0 may have no work for hours) and for the bytes as a
// step wait.
#pragma once

#include "node/engine/step_plan.h"
#include "parallel/communicator.h"

namespace tpnode {

// Rank 0.
void send_step_plan(Communicator& comm, const StepPlan& plan);
// Other ranks.
StepPlan receive_step_plan(Communicator& comm);

}  // namespace tpnode
