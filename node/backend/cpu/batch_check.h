// Checks a BatchMeta before any op reads it: consistent sizes, tokens grouped by sequence,
// positions inside their KV length, and (once the KV cache shape is known) block tables that
// stay inside the cache and never let one sequence write a block another one uses.
#pragma once

#include <cstdint>
#include <vector>

#include "node/engine/backend.h"

namespace tpnode {

class BatchChecker {
 public:
  // Throws tpnode::Error naming the first inconsistency. `kv` may be null (no cache yet).
  void check(const BatchMeta& batch, const KvCacheShape* kv);

 private:
  void check_structure(const BatchMeta& b);
  void check_blocks(const BatchMeta& b, const KvCacheShape& kv);

  std::vector<int32_t> writer_;   // [n_blocks] sequence writing the block this step, or -1
  std::vector<int32_t> seen_;     // [n_blocks] last sequence whose table used the block, or -1
  std::vector<int32_t> touched_;  // block ids marked by the current check
};

}  // namespace tpnode
