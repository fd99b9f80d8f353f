// Uploads a step's batch metadata with one asynchronous copy from pinned memory. Two pinned
// slots alternate; a slot is rewritten only after its previous copy has completed, so the
// host never waits on the step that is still running.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <vector>

#include "node/backend/cuda/device_memory.h"

namespace tpnode::cuda {

class StepUploader {
 public:
  StepUploader(DeviceMemory& mem, cudaStream_t stream);
  ~StepUploader();
  StepUploader(const StepUploader&) = delete;
  StepUploader& operator=(const StepUploader&) = delete;

  // Copies `words` to the device; returns the device copy, valid until the next upload.
  const int32_t* upload(const std::vector<int32_t>& words);
  // Sizes the device buffer up front so its address stays fixed for steps of this size.
  void reserve(size_t words) { device_.as<int32_t>(words + 1024); }

 private:
  struct Slot {
    int32_t* host = nullptr;
    size_t capacity = 0;  // words
    cudaEvent_t done = nullptr;
  };
  cudaStream_t stream_;
  Slot slots_[2];
  int next_ = 0;
  Scratch device_;
};

}  // namespace tpnode::cuda
