// Host-buffer collectives between the ranks of one tensor-parallel group. Implements the
// engine's Collective; MpiCommunicator (parallel/mpi/) and LocalCommunicator (one rank).
//
// Two kinds of wait:
//   step collectives (all_reduce_sum, gather_host, broadcast, all_gather, barrier) run inside
//     a step, where every rank arrives at about the same time: a peer that is alive but absent
//     longer than the collective timeout is declared hung, and the call throws.
//   idle waits (broadcast_idle, barrier_idle) may wait as long as the peers they wait for are
//     alive (heartbeats): a worker waiting for the next plan, ranks loading weights.
// Either way, a peer whose heartbeat stops is declared lost and the call throws a
// tpnode::Error(kRuntime) whose message starts "rank N (host) lost: ...". After a failure the
// communicator is unusable: every later call throws the same error, and (MPI) the job is
// aborted a grace period later unless the process ends first (WorldOptions::abort_grace_s).
#pragma once

#include <cstddef>
#include <string>
#include <vector>

#include "node/engine/collective.h"

namespace tpnode {

class Communicator : public Collective {
 public:
  // Step collectives. `data`/`send`/`recv` are host memory.
  virtual void broadcast(void* data, size_t bytes, int root) = 0;
  // recv holds size() * bytes_each bytes, rank r's at r * bytes_each, on every rank.
  virtual void all_gather(const void* send, size_t bytes_each, void* recv) = 0;
  virtual void barrier() = 0;

  // Idle waits: non-root ranks wait with no deadline while the root (barrier: every peer)
  // is alive.
  virtual void broadcast_idle(void* data, size_t bytes, int root) = 0;
  virtual void barrier_idle() = 0;

  // Marks the group broken (e.g. a rank failed mid-step, leaving peers inside a collective):
  // later calls throw, and World aborts the job instead of finalizing.
  virtual void mark_failed(const std::string& why) = 0;
  virtual bool failed() const = 0;
  virtual std::string failure() const = 0;  // empty while not failed
};

}  // namespace tpnode
