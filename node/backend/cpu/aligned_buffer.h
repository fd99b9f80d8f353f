// Owned, 64-byte aligned host memory: the CPU backend's allocation unit.
#pragma once

#include <cstddef>
#include <memory>

namespace tpnode {

class AlignedBuffer {
 public:
  static constexpr size_t kAlignment = 64;

  AlignedBuffer() = default;
  // Throws tpnode::Error(kOutOfMemory) when the allocation fails or asks for more than the
  // machine's installed memory. `bytes` may be 0.
  explicit AlignedBuffer(size_t bytes);

  void* data() const { return ptr_.get(); }
  size_t size() const { return size_; }

 private:
  struct Free {
    void operator()(void* p) const;
  };
  std::unique_ptr<void, Free> ptr_;
  size_t size_ = 0;
};

}  // namespace tpnode
