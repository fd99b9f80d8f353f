// Device allocations under one budget (gpu_memory_fraction of the card): a request past the
// budget, or one the driver refuses, is a tpnode::Error(kOutOfMemory) naming what it was for.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <unordered_map>

namespace tpnode::cuda {

class DeviceMemory {
 public:
  explicit DeviceMemory(uint64_t budget) : budget_(budget) {}
  ~DeviceMemory();
  DeviceMemory(const DeviceMemory&) = delete;
  DeviceMemory& operator=(const DeviceMemory&) = delete;

  void* alloc(size_t bytes, const char* what);
  void free(void* p);  // synchronizes the device (cudaFree)
  uint64_t used() const { return used_; }
  uint64_t budget() const { return budget_; }
  bool fits(uint64_t bytes) const { return used_ + bytes <= budget_; }
  // How many times a Scratch moved to a larger buffer: work captured in a CUDA graph before
  // a move points at freed memory.
  uint64_t scratch_moves() const { return scratch_moves_; }
  void note_scratch_move() { ++scratch_moves_; }

 private:
  uint64_t budget_;
  uint64_t used_ = 0;
  uint64_t scratch_moves_ = 0;
  std::unordered_map<void*, size_t> sizes_;
};

// A scratch buffer that grows (never shrinks) to the largest request; growth frees the old
// buffer, so it happens between warm-up steps, never inside a captured graph.
class Scratch {
 public:
  Scratch(DeviceMemory& mem, const char* what) : mem_(mem), what_(what) {}
  void* get(size_t bytes);
  template <typename T>
  T* as(size_t count) { return static_cast<T*>(get(count * sizeof(T))); }

 private:
  DeviceMemory& mem_;
  const char* what_;
  void* p_ = nullptr;
  size_t bytes_ = 0;
};

}  // namespace tpnode::cuda
