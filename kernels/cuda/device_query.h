// The current CUDA device for host code that keeps per-device state (kernel attributes set
// once, occupancy and SM counts asked once): one process may drive several GPUs.
#pragma once

#include <cuda_runtime.h>

#include <array>
#include <atomic>

namespace tpnode::cuda {

inline constexpr int kMaxCachedDevices = 64;

// The current device's index; throws, naming `who`, at kMaxCachedDevices or beyond.
int current_device(const char* who);
// The current device's SM count, asked once per device.
int current_device_sms(const char* who);

// Resident CTAs of one kernel on the current device: SMs x CTAs per SM, asked once per device.
// `cache` must belong to that kernel alone (a static of a template instantiated per kernel);
// kernels sharing a signature would otherwise share the answer.
struct ResidentQuery {
  int threads = 0;     // per CTA, no dynamic shared memory
  int max_per_sm = 0;  // cap on CTAs per SM (0: none)
  const char* who = "";
};
using PerDeviceCount = std::array<std::atomic<int>, kMaxCachedDevices>;
int resident_ctas(const void* kernel, const ResidentQuery& q, PerDeviceCount& cache);

// A kernel family's set-up that runs once per device (kernel attributes such as the dynamic
// shared-memory limit). `who`_init() does it and calls mark_done(); a launch that finds it
// not done runs it first, but never inside a graph capture, where such calls cannot go.
class PerDeviceSetup {
 public:
  explicit PerDeviceSetup(const char* who) : who_(who) {}
  void mark_done();
  // Whether the current device still needs the set-up before a launch on `stream`; throws
  // when it does and `stream` is capturing.
  bool needed(cudaStream_t stream) const;

 private:
  const char* who_;
  std::array<std::atomic<bool>, kMaxCachedDevices> done_{};
};

}  // namespace tpnode::cuda
