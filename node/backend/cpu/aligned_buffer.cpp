#include "node/backend/cpu/aligned_buffer.h"

#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <limits>

#include "node/common/error.h"

namespace tpnode {

namespace {

// Installed RAM: a request beyond it can only end in swapping or the OOM killer, so it is
// refused up front (overcommit would otherwise let it "succeed").
size_t physical_memory_bytes() {
  const long pages = sysconf(_SC_PHYS_PAGES);
  const long page_size = sysconf(_SC_PAGESIZE);
  if (pages <= 0 || page_size <= 0) return std::numeric_limits<size_t>::max();
  return static_cast<size_t>(pages) * static_cast<size_t>(page_size);
}

}  // namespace

AlignedBuffer::AlignedBuffer(size_t bytes) : size_(bytes) {
  static const size_t kPhysical = physical_memory_bytes();
  TPNODE_CHECK_KIND(bytes <= kPhysical && bytes <= std::numeric_limits<size_t>::max() - kAlignment,
                    ErrorKind::kOutOfMemory,
                    "cpu alloc: {} bytes is more than this machine's {} bytes of memory", bytes,
                    kPhysical);
  // aligned_alloc wants a multiple of the alignment; a zero-byte request still gets a block
  // so that every allocation has a distinct, valid pointer.
  const size_t rounded =
      std::max<size_t>(kAlignment, (bytes + kAlignment - 1) / kAlignment * kAlignment);
  ptr_.reset(std::aligned_alloc(kAlignment, rounded));
  TPNODE_CHECK_KIND(ptr_ != nullptr, ErrorKind::kOutOfMemory,
                    "cpu alloc: out of host memory allocating {} bytes", bytes);
}

void AlignedBuffer::Free::operator()(void* p) const { std::free(p); }

}  // namespace tpnode
