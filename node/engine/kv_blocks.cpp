#include "node/engine/kv_blocks.h"

#include "node/common/error.h"

namespace tpnode {

KvBlockManager::KvBlockManager(int64_t n_blocks, int64_t block_size)
    : n_blocks_(n_blocks), block_size_(block_size) {
  TPNODE_CHECK(n_blocks > 0 && block_size > 0, "KV cache: {} blocks of {} tokens", n_blocks,
               block_size);
  free_.reserve(static_cast<size_t>(n_blocks));
  // Highest id at the bottom so that block 0 is handed out first.
  for (int64_t b = n_blocks - 1; b >= 0; --b) free_.push_back(static_cast<int32_t>(b));
}

bool KvBlockManager::reserve(uint64_t seq, int64_t tokens) {
  auto& table = tables_[seq];
  const int64_t need = blocks_for(tokens) - static_cast<int64_t>(table.size());
  if (need <= 0) return true;
  if (need > static_cast<int64_t>(free_.size())) {
    if (table.empty()) tables_.erase(seq);
    return false;
  }
  for (int64_t i = 0; i < need; ++i) {
    table.push_back(free_.back());
    free_.pop_back();
  }
  return true;
}

void KvBlockManager::release(uint64_t seq) {
  auto it = tables_.find(seq);
  if (it == tables_.end()) return;
  // Return in reverse so a re-admitted sequence tends to get the same blocks back.
  for (auto b = it->second.rbegin(); b != it->second.rend(); ++b) free_.push_back(*b);
  tables_.erase(it);
}

const std::vector<int32_t>& KvBlockManager::table(uint64_t seq) const {
  auto it = tables_.find(seq);
  TPNODE_CHECK(it != tables_.end(), "KV cache: no blocks for sequence {}", seq);
  return it->second;
}

}  // namespace tpnode
