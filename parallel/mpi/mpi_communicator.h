// Communicator over MPI for host buffers, built from non-blocking point-to-point operations
// polled against a deadline (see communicator.h for the two kinds of wait), with a
// PeerMonitor telling dead peers from slow ones.
//
// all_reduce_sum is a reduce-scatter over rank-ordered chunks followed by an all-gather: the
// owner of each chunk adds the contributions in rank order 0, 1, ..., size-1, so the result
// does not depend on message arrival order and every rank ends with the same bits.
#pragma once

#include <mpi.h>

#include <memory>
#include <string>
#include <vector>

#include "parallel/communicator.h"
#include "parallel/mpi/peer_monitor.h"

namespace tpnode::mpi {

class RequestSet;

struct MpiCommunicatorOptions {
  double timeout_s = 5.0;           // see WorldOptions::collective_timeout_s
  double heartbeat_interval_s = 0;  // 0: timeout / 10, at most 0.5 s
  double abort_grace_s = 1.0;       // < 0: a lost peer never aborts the job by itself
};

class MpiCommunicator final : public Communicator {
 public:
  // Collective over `parent` (duplicates it, exchanges host names).
  MpiCommunicator(MPI_Comm parent, const MpiCommunicatorOptions& options);
  ~MpiCommunicator() override;
  MpiCommunicator(const MpiCommunicator&) = delete;
  MpiCommunicator& operator=(const MpiCommunicator&) = delete;

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  void all_reduce_sum(float* data, size_t n) override;  // [n] host floats
  void gather_host(const float* send, size_t n, float* recv,
                   const std::vector<size_t>& counts) override;
  void broadcast(void* data, size_t bytes, int root) override;
  void all_gather(const void* send, size_t bytes_each, void* recv) override;
  void barrier() override;
  void broadcast_idle(void* data, size_t bytes, int root) override;
  void barrier_idle() override;
  void mark_failed(const std::string& why) override;
  bool failed() const override { return !failure_.empty(); }
  std::string failure() const override { return failure_; }

  // World's last collective before MPI_Finalize, on a tag of its own so that it never pairs
  // with a barrier another rank is still inside. Returns false when a peer did not arrive:
  // bounded, within the collective timeout (a rank leaving on an error cannot know where the
  // others are); unbounded, only when a peer is lost or a stop was requested.
  bool closing_barrier(bool bounded);

  // After a failure that rank 0 sees too, seconds left for rank 0 to end the job before
  // this rank's monitor does (0 when this rank should end it now).
  double deferred_abort_in_s() const { return monitor_->deferred_abort_in_s(); }

  const std::string& host(int rank) const { return hosts_.at(rank); }
  // True when the heartbeats declared a peer lost (as opposed to a stalled collective).
  bool peer_lost() const { return monitor_->any_lost(); }
  // Tests: this rank's heartbeats stop, as if the process had been stopped.
  void mute_heartbeats_for_testing() { monitor_->mute_for_testing(); }

 private:
  enum class Patience { kStep, kIdle };
  void check_usable() const;
  void wait(RequestSet& requests, const char* op, Patience patience);
  [[noreturn]] void fail(RequestSet& requests, const std::string& message);
  void broadcast_impl(void* data, size_t bytes, int root, const char* op, Patience patience);
  void barrier_impl(const char* op, Patience patience);
  std::string lost_message(const std::vector<int>& peers, const std::string& reason) const;

  MpiCommunicatorOptions options_;
  MPI_Comm comm_ = MPI_COMM_NULL;
  int rank_ = 0, size_ = 1;
  std::vector<std::string> hosts_;
  std::unique_ptr<PeerMonitor> monitor_;
  std::vector<float> scratch_;  // [size - 1, chunk] contributions received by all_reduce_sum
  std::vector<float> acc_;      // [chunk] their rank-ordered sum
  std::string failure_;
};

}  // namespace tpnode::mpi
