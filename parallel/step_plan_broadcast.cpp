#include "parallel/step_plan_broadcast.h"

#include <cstdint>
#include <string>

#include "node/common/error.h"

namespace tpnode {
namespace {

// Far above any real plan (max_batch_tokens of tokens plus block tables); a larger length can
// only come from a bug, and is refused before allocating.
constexpr uint64_t kMaxPlanBytes = uint64_t{1} << 30;

}  // namespace

void send_step_plan(Communicator& comm, const StepPlan& plan) {
  TPNODE_CHECK(comm.rank() == 0, "send_step_plan on rank {}: only rank 0 plans", comm.rank());
  std::string bytes = serialize(plan);
  uint64_t length = bytes.size();
  TPNODE_CHECK(length <= kMaxPlanBytes, "step plan of {} bytes is too large", length);
  comm.broadcast_idle(&length, sizeof(length), 0);
  comm.broadcast(bytes.data(), bytes.size(), 0);
}

StepPlan receive_step_plan(Communicator& comm) {
  TPNODE_CHECK(comm.rank() != 0, "receive_step_plan on rank 0");
  uint64_t length = 0;
  comm.broadcast_idle(&length, sizeof(length), 0);
  TPNODE_CHECK_KIND(length <= kMaxPlanBytes, ErrorKind::kRuntime,
                    "rank 0 announced a step plan of {} bytes", length);
  std::string bytes(length, '\0');
  comm.broadcast(bytes.data(), bytes.size(), 0);
  return deserialize_step_plan(bytes);
}

}  // namespace tpnode
