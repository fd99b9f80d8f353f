// Elapsed GPU time of the work enqueued on one stream between start() and stop_ms(), from a
// pair of CUDA events (benchmarks and start-up probes).
#pragma once

#include <cuda_runtime.h>

#include "kernels/cuda/cuda_check.h"

namespace tpnode::cuda {

class EventTimer {
 public:
  explicit EventTimer(cudaStream_t stream) : stream_(stream) {
    TPNODE_CUDA_CHECK(cudaEventCreate(&start_));
    TPNODE_CUDA_CHECK(cudaEventCreate(&stop_));
  }
  ~EventTimer() {
    cudaEventDestroy(start_);
    cudaEventDestroy(stop_);
  }
  EventTimer(const EventTimer&) = delete;
  EventTimer& operator=(const EventTimer&) = delete;

  void start() { TPNODE_CUDA_CHECK(cudaEventRecord(start_, stream_)); }
  // Waits for the work enqueued since start().
  double stop_ms() {
    TPNODE_CUDA_CHECK(cudaEventRecord(stop_, stream_));
    TPNODE_CUDA_CHECK(cudaEventSynchronize(stop_));
    float ms = 0.0f;
    TPNODE_CUDA_CHECK(cudaEventElapsedTime(&ms, start_, stop_));
    return ms;
  }

 private:
  cudaStream_t stream_;
  cudaEvent_t start_ = nullptr, stop_ = nullptr;
};

}  // namespace tpnode::cuda
