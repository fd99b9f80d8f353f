#include "node/backend/cuda/device_memory.h"

#include "kernels/cuda/cuda_check.h"

namespace tpnode::cuda {

namespace {
constexpr size_t kAlign = 256;
size_t round_up(size_t n) { return (n + kAlign - 1) / kAlign * kAlign; }
double gib(uint64_t b) { return static_cast<double>(b) / (1024.0 * 1024.0 * 1024.0); }
}  // namespace

DeviceMemory::~DeviceMemory() {
  for (auto& [p, n] : sizes_) cudaFree(p);
}

void* DeviceMemory::alloc(size_t bytes, const char* what) {
  const size_t n = round_up(bytes == 0 ? 1 : bytes);
  if (used_ + n > budget_) {
    TPNODE_THROW(ErrorKind::kOutOfMemory,
                 "GPU memory budget exceeded allocating {:.3f} GiB for {}: {:.3f} of {:.3f} GiB "
                 "in use (raise --gpu-memory-fraction or shrink the KV cache / batch)",
                 gib(n), what, gib(used_), gib(budget_));
  }
  void* p = nullptr;
  const cudaError_t err = cudaMalloc(&p, n);
  if (err == cudaErrorMemoryAllocation) {
    cudaGetLastError();  // clear the sticky-free error state
    TPNODE_THROW(ErrorKind::kOutOfMemory, "cudaMalloc of {:.3f} GiB for {} failed ({:.3f} GiB in use)",
                 gib(n), what, gib(used_));
  }
  TPNODE_CUDA_CHECK(err);
  used_ += n;
  sizes_[p] = n;
  return p;
}

void DeviceMemory::free(void* p) {
  auto it = sizes_.find(p);
  if (it == sizes_.end()) return;
  TPNODE_CUDA_CHECK(cudaFree(p));
  used_ -= it->second;
  sizes_.erase(it);
}

void* Scratch::get(size_t bytes) {
  if (bytes <= bytes_) return p_;
  if (p_) {
    mem_.free(p_);
    mem_.note_scratch_move();
  }
  p_ = nullptr;
  bytes_ = 0;
  const size_t n = bytes + bytes / 4;  // headroom: fewer regrowths while shapes settle
  p_ = mem_.alloc(n, what_);
  bytes_ = n;
  return p_;
}

}  // namespace tpnode::cuda
