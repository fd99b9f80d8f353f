// The communicator of tensor parallelism on GPUs: all_reduce_sum on device buffers, ordered
// on the CUDA backend's stream (no host synchronisation, capturable in a CUDA graph); host
// collectives and heartbeats are the MPI communicator's, to which it delegates.
//
// all_reduce_sum takes one of two paths, chosen from the message size alone (so every rank
// takes the same one):
//   one-shot (kernels/cuda/allreduce.h) up to one_shot_max_bytes, when every GPU reaches
//     every other through peer memory: one kernel, sums in rank order, bit-identical results
//     on every rank and in every run;
//   NCCL (ncclAllReduce) above it, or when peers are not reachable. Outside graph capture
//     the call then waits on the host until NCCL's kernel is done (polling the failure
//     state meanwhile): an NCCL kernel still running while the host makes a call that waits
//     for the device (cudaFree of a scratch buffer that grows) hung both ranks of the
//     engine's first step on two H200s. Only large messages (prefill) take this path.
//
// Failure: a watchdog thread polls ncclCommGetAsyncError and the MPI heartbeats. On an NCCL
// error or a lost rank it aborts the NCCL communicator (ncclCommAbort) and tells one-shot
// kernels to stop waiting, so a rank blocked on its stream returns; the next call on this
// communicator then marks the MPI communicator failed (World aborts the job) and throws an
// Error(kRuntime) that says what happened. A one-shot kernel that waits longer than
// `timeout_s` for a peer gives up the same way.
#pragma once

#include <cstddef>
#include <memory>
#include <string>
#include <vector>

#include "parallel/communicator.h"

namespace tpnode {

namespace mpi {
class MpiCommunicator;
}

struct NcclCommunicatorOptions {
  int device = 0;          // this rank's GPU: the CUDA backend's device
  void* stream = nullptr;  // cudaStream_t: the CUDA backend's stream
  // All-reduces of at most this many bytes take the one-shot path; 0: always NCCL. On two
  // H200s (NVLink) the one-shot beat NCCL at every size from 4 KiB to 8 MiB when launched
  // on the stream, and from 512 KiB up when both were replayed from a CUDA graph (below
  // that NCCL's graph replays were up to 1 us faster): docs/benchmarks_tp_gpu.md.
  size_t one_shot_max_bytes = size_t{8} << 20;
  // Bytes of each one-shot receive slot; 0: one_shot_max_bytes. Larger only for benchmarks.
  size_t one_shot_capacity_bytes = 0;
  double timeout_s = 10.0;  // a one-shot kernel waits this long for a peer, then gives up
  // NCCL connects lazily, at the first all-reduce of each size class; the constructor runs
  // all-reduces up to this size so that no connection is made inside a step (see .cpp).
  size_t nccl_warmup_max_bytes = size_t{64} << 20;
  double watchdog_interval_s = 0.002;
};

enum class AllReducePath { kAuto, kOneShot, kNccl };

class NcclCommunicator final : public Communicator {
 public:
  // Collective over every rank of `host`: rank 0's ncclUniqueId travels by host broadcast,
  // the one-shot IPC handles by host all_gather. `host` must outlive this communicator.
  NcclCommunicator(mpi::MpiCommunicator& host, const NcclCommunicatorOptions& options);
  ~NcclCommunicator() override;
  NcclCommunicator(const NcclCommunicator&) = delete;
  NcclCommunicator& operator=(const NcclCommunicator&) = delete;

  int rank() const override;
  int size() const override;
  // [n] device floats, in place, on the stream.
  bool all_reduce_capturable(size_t n) const override;
  // The one-shot call as kernel parameters (a cuda::OneShotParams) for LL-sized messages.
  const void* device_reduce_plan(float* data, size_t n) override;
  void all_reduce_sum(float* data, size_t n) override;
  // The same with the path forced (tests, benchmarks); kOneShot needs one_shot_available()
  // and n * 4 <= one_shot_capacity_bytes().
  void all_reduce_sum(float* data, size_t n, AllReducePath path);
  bool one_shot_available() const;
  size_t one_shot_capacity_bytes() const;

  // Host collectives: the MPI communicator's.
  void gather_host(const float* send, size_t n, float* recv,
                   const std::vector<size_t>& counts) override;
  void broadcast(void* data, size_t bytes, int root) override;
  void all_gather(const void* send, size_t bytes_each, void* recv) override;
  void barrier() override;
  void broadcast_idle(void* data, size_t bytes, int root) override;
  void barrier_idle() override;
  void mark_failed(const std::string& why) override;
  bool failed() const override;
  std::string failure() const override;

 private:
  struct Impl;
  void check_usable();
  void wait_for_nccl();
  std::unique_ptr<Impl> impl_;
};

}  // namespace tpnode
