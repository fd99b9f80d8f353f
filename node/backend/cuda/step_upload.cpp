#include "node/backend/cuda/step_upload.h"

#include <cstring>

#include "kernels/cuda/cuda_check.h"

namespace tpnode::cuda {

StepUploader::StepUploader(DeviceMemory& mem, cudaStream_t stream)
    : stream_(stream), device_(mem, "step metadata") {
  for (Slot& s : slots_) {
    TPNODE_CUDA_CHECK(cudaEventCreateWithFlags(&s.done, cudaEventDisableTiming));
  }
}

StepUploader::~StepUploader() {
  for (Slot& s : slots_) {
    if (s.done) cudaEventSynchronize(s.done);
    if (s.host) cudaFreeHost(s.host);
    if (s.done) cudaEventDestroy(s.done);
  }
}

const int32_t* StepUploader::upload(const std::vector<int32_t>& words) {
  Slot& s = slots_[next_];
  next_ ^= 1;
  TPNODE_CUDA_CHECK(cudaEventSynchronize(s.done));  // its last copy has left the slot
  if (words.size() > s.capacity) {
    if (s.host) TPNODE_CUDA_CHECK(cudaFreeHost(s.host));
    s.capacity = words.size() + words.size() / 2 + 1024;
    TPNODE_CUDA_CHECK(cudaMallocHost(reinterpret_cast<void**>(&s.host), s.capacity * 4));
  }
  std::memcpy(s.host, words.data(), words.size() * 4);
  int32_t* dev = device_.as<int32_t>(words.size() + 1024);
  TPNODE_CUDA_CHECK(cudaMemcpyAsync(dev, s.host, words.size() * 4, cudaMemcpyHostToDevice, stream_));
  TPNODE_CUDA_CHECK(cudaEventRecord(s.done, stream_));
  return dev;
}

}  // namespace tpnode::cuda
