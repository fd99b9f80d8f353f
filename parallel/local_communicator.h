// The communicator of a single rank: collectives are copies or no-ops. Used when tpnode runs
// without mpirun (development, one GPU) and by tests of code above the communicator.
#pragma once

#include <string>

#include "parallel/communicator.h"

namespace tpnode {

class LocalCommunicator final : public Communicator {
 public:
  int rank() const override { return 0; }
  int size() const override { return 1; }
  void all_reduce_sum(float* data, size_t n) override;
  void gather_host(const float* send, size_t n, float* recv,
                   const std::vector<size_t>& counts) override;
  void broadcast(void* data, size_t bytes, int root) override;
  void all_gather(const void* send, size_t bytes_each, void* recv) override;
  void barrier() override;
  void broadcast_idle(void* data, size_t bytes, int root) override;
  void barrier_idle() override;
  void mark_failed(const std::string& why) override;
  bool failed() const override { return !failure_.empty(); }
  std::string failure() const override { return failure_; }

 private:
  void check_usable() const;
  std::string failure_;
};

}  // namespace tpnode
