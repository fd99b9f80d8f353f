#include "parallel/local_communicator.h"

#include <cstring>

#include "node/common/error.h"

namespace tpnode {

void LocalCommunicator::check_usable() const {
  if (!failure_.empty()) TPNODE_THROW(ErrorKind::kRuntime, "{}", failure_);
}

void LocalCommunicator::all_reduce_sum(float*, size_t) { check_usable(); }

void LocalCommunicator::gather_host(const float* send, size_t n, float* recv,
                                    const std::vector<size_t>& counts) {
  check_usable();
  TPNODE_CHECK(counts.size() == 1 && counts[0] == n,
               "gather_host: counts must hold this rank's {} floats (got {} entries)", n,
               counts.size());
  if (n > 0 && recv != send) std::memcpy(recv, send, n * sizeof(float));
}

void LocalCommunicator::broadcast(void*, size_t, int root) {
  check_usable();
  TPNODE_CHECK(root == 0, "broadcast: root {} out of range for 1 rank", root);
}

void LocalCommunicator::all_gather(const void* send, size_t bytes_each, void* recv) {
  check_usable();
  if (bytes_each > 0 && recv != send) std::memcpy(recv, send, bytes_each);
}

void LocalCommunicator::barrier() { check_usable(); }

void LocalCommunicator::broadcast_idle(void* data, size_t bytes, int root) {
  broadcast(data, bytes, root);
}

void LocalCommunicator::barrier_idle() { check_usable(); }

void LocalCommunicator::mark_failed(const std::string& why) {
  if (failure_.empty()) failure_ = why;
}

}  // namespace tpnode
