// Paged KV cache and attention over it.
//   kv_store:           K, V of this step's tokens into their cache slots.
//   decode_attention:   one CTA per (token, KV head, split): all query heads of the KV head
//                       share each K/V read (GQA); long contexts split over the key axis
//                       (flash-decoding) and a second kernel merges the splits.
//   prefill_attention:  tiles of up to 64 consecutive tokens of one sequence, flash-attention
//                       style on tensor cores (mma.sync m16n8k16, BF16/F16 in, F32 accum).
// Cache layout per layer: K and V each [n_blocks][n_head_kv][block_size][head_dim].
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace tpnode::cuda {

enum class KvDtype { kBF16, kF16 };

struct PagedKv {
  void* k = nullptr;  // this layer's K blocks
  void* v = nullptr;  // this layer's V blocks
  int64_t block_size = 16;
  int64_t n_head_kv = 0;
  int64_t head_dim = 0;
  KvDtype dtype = KvDtype::kBF16;
};

// The step's batch as the kernels read it (device pointers).
struct DeviceBatch {
  const int32_t* positions = nullptr;     // [n_tokens]
  const int32_t* token_seq = nullptr;     // [n_tokens]
  const int32_t* block_tables = nullptr;  // [n_seqs][max_blocks]
  int32_t max_blocks = 0;
  int64_t n_tokens = 0;
};

struct KvStoreParams {
  PagedKv kv;
  DeviceBatch batch;
  const float* k = nullptr;  // [n_tokens, n_head_kv, head_dim]
  const float* v = nullptr;  // [n_tokens, n_head_kv, head_dim]
};
void kv_store(const KvStoreParams& p, cudaStream_t stream);

inline constexpr int kDecodeKeyTile = 128;
inline constexpr int kMaxDecodeOutputsPerThread = 16;  // n_head/n_head_kv * head_dim <= 2048

struct DecodeAttentionParams {
  PagedKv kv;
  DeviceBatch batch;
  const float* q = nullptr;         // [n_tokens, n_head, head_dim]
  float* out = nullptr;             // [n_tokens, n_head, head_dim]
  const int32_t* tokens = nullptr;  // [n] batch token indices this launch handles
  int64_t n = 0;
  int64_t n_head = 0;
  float scale = 1.0f;
  int n_splits = 1;                 // key-axis splits per (token, KV head)
  int split_len = 0;                // keys per split, a multiple of kDecodeKeyTile
  float* part_out = nullptr;        // [n, n_head, n_splits, head_dim] when n_splits > 1
  float* part_lse = nullptr;        // [n, n_head, n_splits]
};
void decode_attention(const DecodeAttentionParams& p, cudaStream_t stream);
bool decode_attention_supports(int64_t n_head, int64_t n_head_kv, int64_t head_dim);

inline constexpr int kPrefillTile = 64;  // query rows and keys per tile

struct PrefillAttentionParams {
  PagedKv kv;
  DeviceBatch batch;
  const float* q = nullptr;        // [n_tokens, n_head, head_dim]
  float* out = nullptr;            // [n_tokens, n_head, head_dim]
  const int32_t* tiles = nullptr;  // [n_tiles][2]: first batch token, count (<= 64) of one seq
  int64_t n_tiles = 0;
  int64_t n_head = 0;
  float scale = 1.0f;
};
void prefill_attention(const PrefillAttentionParams& p, cudaStream_t stream);
bool prefill_attention_supports(int64_t head_dim);

}  // namespace tpnode::cuda
