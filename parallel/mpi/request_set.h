// Outstanding non-blocking MPI operations of one collective, each tagged with the peer it
// talks to, so that a wait that runs out of time can say whom it was waiting for. Blocking MPI
// calls cannot time out; every wait in parallel/mpi/ polls one of these against a deadline.
#pragma once

#include <mpi.h>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <vector>

namespace tpnode::mpi {

class RequestSet {
 public:
  RequestSet() = default;
  RequestSet(const RequestSet&) = delete;
  RequestSet& operator=(const RequestSet&) = delete;
  // Unfinished requests are abandoned (see abandon()).
  ~RequestSet();

  // Posts `bytes` as one or more messages (MPI counts are int) to / from `peer`.
  void send(MPI_Comm comm, const void* data, size_t bytes, int peer, int tag);
  void recv(MPI_Comm comm, void* data, size_t bytes, int peer, int tag);

  // Progresses MPI and retires finished requests; true when none is left.
  bool test();
  bool done() const { return open_ == 0; }
  // Peers of the unfinished requests, ascending, each once.
  std::vector<int> pending_peers() const;
  // Gives up on the unfinished requests: receives are cancelled (their buffers are not written
  // afterwards), sends are released to MPI, which may still complete them later.
  void abandon();

 private:
  struct Op {
    int peer;
    bool is_send;
  };
  std::vector<MPI_Request> reqs_;
  std::vector<Op> ops_;
  std::vector<int> indices_;
  size_t open_ = 0;
};

// Polling cadence for a wait: spin briefly (an all-reduce inside a step usually completes in
// microseconds), then yield (other ranks may share the core), then sleep in steps growing to
// 1 ms so that an idle worker costs almost no CPU.
class Backoff {
 public:
  void pause();

 private:
  using Clock = std::chrono::steady_clock;
  Clock::time_point start_ = Clock::now();
  std::chrono::microseconds sleep_{20};
};

}  // namespace tpnode::mpi
