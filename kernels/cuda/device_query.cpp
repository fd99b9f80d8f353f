#include "kernels/cuda/device_query.h"

#include <algorithm>
#include <atomic>

#include "kernels/cuda/cuda_check.h"

namespace tpnode::cuda {

int current_device(const char* who) {
  int dev = 0;
  TPNODE_CUDA_CHECK(cudaGetDevice(&dev));
  TPNODE_CHECK(dev >= 0 && dev < kMaxCachedDevices, "{}: device {} beyond {}", who, dev,
               kMaxCachedDevices);
  return dev;
}

int current_device_sms(const char* who) {
  static std::atomic<int> cache[kMaxCachedDevices] = {};  // 0: not asked yet
  const int dev = current_device(who);
  int sms = cache[dev].load(std::memory_order_relaxed);
  if (sms == 0) {
    TPNODE_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
    cache[dev].store(sms, std::memory_order_relaxed);
  }
  return sms;
}

int resident_ctas(const void* kernel, const ResidentQuery& q, PerDeviceCount& cache) {
  const int dev = current_device(q.who);
  int n = cache[dev].load(std::memory_order_relaxed);
  if (n == 0) {
    int per_sm = 0;
    TPNODE_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, q.threads, 0));
    per_sm = std::max(per_sm, 1);
    if (q.max_per_sm > 0) per_sm = std::min(per_sm, q.max_per_sm);
    n = current_device_sms(q.who) * per_sm;
    cache[dev].store(n, std::memory_order_relaxed);
  }
  return n;
}

void PerDeviceSetup::mark_done() {
  done_[current_device(who_)].store(true, std::memory_order_release);
}

bool PerDeviceSetup::needed(cudaStream_t stream) const {
  if (done_[current_device(who_)].load(std::memory_order_acquire)) return false;
  cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
  TPNODE_CUDA_CHECK(cudaStreamIsCapturing(stream, &status));
  TPNODE_CHECK_KIND(status == cudaStreamCaptureStatusNone, ErrorKind::kRuntime,
                    "{}: call {}_init() before capturing a graph", who_, who_);
  return true;
}

}  // namespace tpnode::cuda
