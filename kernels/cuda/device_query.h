// The current CUDA device for host code that keeps per-device state (kernel attributes set
// once, occupancy and SM counts asked once): one process may drive several GPUs.
#pragma once

namespace tpnode::cuda {

inline constexpr int kMaxCachedDevices = 64;

// The current device's index; throws, naming `who`, at kMaxCachedDevices or beyond.
int current_device(const char* who);
// The current device's SM count, asked once per device.
int current_device_sms(const char* who);

}  // namespace tpnode::cuda
