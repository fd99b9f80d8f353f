// The ranks' CUDA IPC buffers for the one-shot all-reduce (kernels/cuda/allreduce.h): each
// rank allocates and zeroes its buffer, the IPC handles travel through the host
// communicator, and each rank maps every peer's buffer. Also holds the two host-mapped words
// the kernel shares with the host: `abort` (host -> device: stop waiting for peers) and
// `error` (device -> host: why a call gave up).
#pragma once

#include <cuda_runtime.h>

#include <array>
#include <cstdint>

#include "kernels/cuda/allreduce.h"
#include "parallel/communicator.h"

namespace tpnode {

class OneShotGroup {
 public:
  // Collective over `host`. True on every rank when all ranks share this host and each GPU
  // can access every other by peer memory (cudaDeviceCanAccessPeer); the same answer on
  // every rank, so that all take the same path.
  static bool peers_reachable(Communicator& host, int device);

  // Collective over `host`: call only where peers_reachable() was true. `capacity_bytes` is
  // rounded up to whole float4s; the same value on every rank.
  OneShotGroup(Communicator& host, int device, size_t capacity_bytes, double timeout_s);
  ~OneShotGroup();
  OneShotGroup(const OneShotGroup&) = delete;
  OneShotGroup& operator=(const OneShotGroup&) = delete;

  size_t capacity_floats() const { return static_cast<size_t>(layout_.capacity); }
  // In place on `stream`; n <= capacity_floats(). Same call sequence on every rank.
  void all_reduce(float* data, size_t n, cudaStream_t stream);
  // The kernel parameters of that call, for a kernel that runs it itself
  // (one_shot_all_reduce_rmsnorm).
  cuda::OneShotParams params(float* data, size_t n) const;

  // Thread-safe: makes waiting kernels (now and later) give up. For the failure watchdog.
  void raise_abort() { *abort_ = 1; }
  // kOneShotAborted / kOneShotTimedOut once a call gave up; 0 otherwise. Thread-safe.
  int32_t error_code() const { return *error_; }

 private:
  void map_buffers(Communicator& host);
  void release();

  int rank_ = 0, size_ = 0, device_ = 0;
  uint64_t timeout_ns_ = 0;
  cuda::OneShotLayout layout_;
  uint8_t* own_ = nullptr;                                 // device, this rank's buffer
  std::array<uint8_t*, cuda::kAllReduceMaxRanks> mapped_{};  // every rank's, in this process
  volatile int32_t* abort_ = nullptr;  // pinned host memory, mapped into the device
  volatile int32_t* error_ = nullptr;
  volatile int32_t* abort_dev_ = nullptr;  // the same words, as the device addresses them
  volatile int32_t* error_dev_ = nullptr;
};

}  // namespace tpnode
