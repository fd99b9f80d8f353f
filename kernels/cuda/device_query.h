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
