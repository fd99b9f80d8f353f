// Paged causal attention over a block-table KV cache, with grouped-query heads.
//
// One layer's cache holds K and V as [n_blocks, block_size, n_head_kv, head_dim] each, in
// F32 or F16. Token position p of a sequence lives in block table[p / block_size], slot
// p % block_size. The kernel checks every block id and position it touches and throws
// tpnode::Error instead of reading or writing outside the cache.
#pragma once

#include <cstdint>

#include "kernels/cpu/thread_pool.h"
#include "node/model/tensor_type.h"

namespace tpnode::cpu {

struct KvLayerView {
  void* k = nullptr;                   // [n_blocks, block_size, n_head_kv, head_dim]
  void* v = nullptr;                   // [n_blocks, block_size, n_head_kv, head_dim]
  TensorType type = TensorType::kF32;  // kF32 or kF16
  int64_t n_blocks = 0;
  int64_t block_size = 0;
  int64_t n_head_kv = 0;
  int64_t head_dim = 0;
};

// Where each token of the batch sits. Tokens of one sequence are contiguous.
struct PagedBatchView {
  int64_t n_tokens = 0;
  const int32_t* positions = nullptr;     // [n_tokens]
  const int32_t* token_seq = nullptr;     // [n_tokens]
  const int32_t* block_tables = nullptr;  // [n_seqs, max_blocks]
  int64_t n_seqs = 0;
  int64_t max_blocks = 0;
};

struct PagedAttentionArgs {
  const float* q = nullptr;  // [n_tokens, n_head, head_dim]
  const float* k = nullptr;  // [n_tokens, n_head_kv, head_dim] new keys (already rotated)
  const float* v = nullptr;  // [n_tokens, n_head_kv, head_dim]
  float* out = nullptr;      // [n_tokens, n_head, head_dim]
  int64_t n_head = 0;        // multiple of cache.n_head_kv
  float scale = 1.0f;
  KvLayerView cache;
  PagedBatchView batch;
};

// Throws tpnode::Error when a token's position or any block id it needs (for positions
// 0..pos) falls outside the table or the cache.
void check_paged_batch(const KvLayerView& cache, const PagedBatchView& batch);

// Writes the batch's k, v into the cache at the tokens' positions (checks the batch first).
void paged_kv_store(const PagedAttentionArgs& args, ThreadPool& pool);

// out = softmax(q·Kᵀ·scale)·V over positions 0..pos of each token's sequence, read through
// the block table; query head h reads KV head h / (n_head / n_head_kv). Checks the batch.
void paged_attention(const PagedAttentionArgs& args, ThreadPool& pool);

// paged_kv_store, then paged_attention: the order a forward needs.
void paged_attention_step(const PagedAttentionArgs& args, ThreadPool& pool);

}  // namespace tpnode::cpu
