// Logical KV block bookkeeping, owned by rank 0's scheduler. Block ids travel in the
// StepPlan, so every rank's physical KV storage stays in step without its own allocator.
#pragma once

#include <cstdint>
#include <unordered_map>
#include <vector>

namespace tpnode {

class KvBlockManager {
 public:
  KvBlockManager(int64_t n_blocks, int64_t block_size);

  int64_t block_size() const { return block_size_; }
  int64_t total_blocks() const { return n_blocks_; }
  int64_t free_blocks() const { return static_cast<int64_t>(free_.size()); }
  int64_t blocks_for(int64_t tokens) const { return (tokens + block_size_ - 1) / block_size_; }

  // Grows seq's table to cover `tokens` tokens. Returns false (and changes nothing) when
  // there are not enough free blocks.
  bool reserve(uint64_t seq, int64_t tokens);
  void release(uint64_t seq);
  const std::vector<int32_t>& table(uint64_t seq) const;
  bool has(uint64_t seq) const { return tables_.count(seq) != 0; }

 private:
  int64_t n_blocks_;
  int64_t block_size_;
  std::vector<int32_t> free_;  // LIFO of free block ids
  std::unordered_map<uint64_t, std::vector<int32_t>> tables_;
};

}  // namespace tpnode
