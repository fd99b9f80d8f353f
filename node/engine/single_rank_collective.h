// The Collective of a lone rank: nothing to reduce, the gather is a copy. For single-process
// engines that need no parallel/ world (benchmarks, tests, references beside a tp run).
#pragma once

#include <algorithm>
#include <vector>

#include "node/engine/collective.h"

namespace tpnode {

class SingleRankCollective final : public Collective {
 public:
  int rank() const override { return 0; }
  int size() const override { return 1; }
  void all_reduce_sum(float*, size_t) override {}
  void gather_host(const float* send, size_t n, float* recv,
                   const std::vector<size_t>&) override {
    std::copy_n(send, n, recv);
  }
};

}  // namespace tpnode
