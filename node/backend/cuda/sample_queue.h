// Token draws that run behind the host: the sampling kernel's parameters go up from pinned
// memory (only when they changed) and its ids come back to pinned memory on a stream of their
// own, each draw in one of two slots with an event, so the host can queue the next step
// before it reads a draw's ids. The device keeps the last draw's ids in one buffer at a fixed
// address, where the next step's embedding reads chained tokens (graphs capture that address).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <vector>

#include "kernels/cuda/sampling.h"
#include "node/backend/cuda/device_memory.h"
#include "node/engine/backend.h"

namespace tpnode::cuda {

// The device form of a row of draws.
SampleRowParams device_row(const ::tpnode::SampleRow& r);

class SampleQueue {
 public:
  // Draws of up to max_rows rows; the device buffers are allocated here, once.
  SampleQueue(DeviceMemory& mem, cudaStream_t stream, size_t max_rows);
  ~SampleQueue();
  SampleQueue(const SampleQueue&) = delete;
  SampleQueue& operator=(const SampleQueue&) = delete;

  // Enqueues the draws of `rows` from logits [*, n_vocab] (device) on the stream.
  void push(const float* logits, int64_t n_vocab, const std::vector<::tpnode::SampleRow>& rows);
  // Waits for the oldest draw not yet taken and copies its ids (n of them) to `tokens`.
  void take(int32_t* tokens, size_t n);
  // The last pushed draw's ids on the device: [max_rows] int32.
  const int32_t* device_ids() const { return ids_; }
  size_t max_rows() const { return max_rows_; }
  size_t outstanding() const { return outstanding_; }

 private:
  struct Slot {
    SampleRowParams* params = nullptr;  // pinned host: the draw's parameters
    int32_t* ids = nullptr;             // pinned host: its ids
    size_t n = 0;
    cudaEvent_t done = nullptr;         // ids on the host
  };
  DeviceMemory& mem_;
  cudaStream_t stream_;
  size_t max_rows_;
  SampleRowParams* params_ = nullptr;      // device
  int32_t* ids_ = nullptr;                 // device
  unsigned long long* partials_ = nullptr;  // device: split argmaxes (SampleParams)
  unsigned* counters_ = nullptr;            // device: their tickets, 0 between draws
  Slot slots_[2];
  cudaStream_t copies_ = nullptr;  // the ids' copies to the host
  cudaEvent_t drawn_ = nullptr;    // the last draw's kernel done (copies_ waits for it)
  std::vector<SampleRowParams> on_device_;  // what params_ holds
  int next_push_ = 0;
  size_t outstanding_ = 0;
};

}  // namespace tpnode::cuda
