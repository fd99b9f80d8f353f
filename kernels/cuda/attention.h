// Paged KV cache and attention over it.
//   kv_store:           K, V of this step's tokens into their cache slots.
//   decode_attention:   one CTA per (token, KV head, head chunk, key split). Lanes split a key
//                       row's head_dim (coalesced 16-byte loads), warps split the keys, all
//                       query heads of the chunk share each K/V read (GQA); K/V go through a
//                       per-thread cp.async ring. Splits merge without a second launch: the
//                       splits of a (token, head chunk) form one thread-block cluster and merge
//                       through distributed shared memory (Hopper), or, with more splits than a
//                       cluster holds, in the last CTA of their group to finish (an atomic
//                       ticket over partials in global memory). When every
//                       token decodes alone it can also store this step's K/V (kv_store
//                       fused), rotate q and the new key on the way in (RoPE fused), and write
//                       the 8-bit copy of its output that the next quantized GEMV reads.
//                       With DecodeAttentionParams::mma the same launch runs on tensor cores
//                       (decode_attention_mma.h: a KV head's whole query group per CTA).
//   prefill_attention:  tiles of up to 64 consecutive tokens of one sequence, flash-attention
//                       style on tensor cores (mma.sync m16n8k16, BF16/F16 in, F32 accum).
// Cache layout per layer: K and V each [n_blocks][n_head_kv][block_size][head_dim].
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/cuda/gemv.h"   // QuantActs
#include "node/model/hparams.h"  // RopeStyle

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

// Key splits of one (token, KV head, head chunk) merge through a ticket counter; at most this
// many counters and splits exist (plan_decode_split keeps within them).
inline constexpr int64_t kDecodeMaxCounters = 4096;
inline constexpr int kDecodeMaxSplits = 128;
// Splits that merge inside one cluster: the portable cluster size.
inline constexpr int kDecodeMaxClusterSplits = 8;

// RoPE applied inside decode_attention: the rope kernel's inverse frequencies and style.
struct DecodeRope {
  const float* inv_freq = nullptr;  // [head_dim / 2] device; null: no rotation
  RopeStyle style = RopeStyle::kNeox;
};

struct DecodeAttentionParams {
  PagedKv kv;
  DeviceBatch batch;
  const float* q = nullptr;         // [n_tokens, n_head, head_dim]
  float* out = nullptr;             // [n_tokens, n_head, head_dim]
  const int32_t* tokens = nullptr;  // [n] batch token indices; nullptr: entry i is token i
  int64_t n = 0;
  int64_t n_head = 0;
  float scale = 1.0f;
  int n_splits = 1;              // key-axis splits per (token, KV head, head chunk)
  int split_len = 0;             // keys per split (n_splits * split_len >= every length)
  // The splits of a (token, head chunk) are one cluster and merge in shared memory
  // (n_splits <= kDecodeMaxClusterSplits, compute capability >= 9.0); the three buffers
  // below are then unused.
  bool cluster = false;
  // Query heads per CTA: 1, 2, 4 or 8, at most the KV head's group rounded up to a power of
  // two; 0: two, or one for grids that would be small (attention.cu). Fewer heads, more CTAs
  // each with a shorter chain of dependent instructions.
  int heads_per_cta = 0;
  float* part_out = nullptr;     // [n, n_head, n_splits, head_dim] when n_splits > 1
  float* part_lse = nullptr;     // [n, n_head, n_splits]
  uint32_t* counters = nullptr;  // [kDecodeMaxCounters], zero on entry, left zero
  // When set, this launch also stores the tokens' K and V in the cache (no kv_store before
  // it). Only valid when each token is the only new token of its sequence in the step.
  const float* k_new = nullptr;  // [n_tokens, n_head_kv, head_dim]
  const float* v_new = nullptr;  // [n_tokens, n_head_kv, head_dim]
  // With k_new only: q and k_new are rotated at the tokens' positions as they are read (the
  // rope kernel's math; decode_rope_supports), and the rotated key is what the cache stores.
  // q and k_new themselves are left unrotated.
  DecodeRope rope{};
  // When set, the CTA that writes a head's output also writes its 8-bit copy, bitwise what
  // quantize_acts(out, n, n_head * head_dim) writes. Needs head_dim % 32 == 0 and
  // tokens == nullptr (row i of the copy is token i).
  QuantActs quant{};
  // When set, the CTA that writes its heads' outputs also writes their gemm_kq records (the
  // heads are whole 256-value stages: decode_kq_records_supports), gemm_kq_acts' bytes for m = n
  // tokens of n_head * head_dim values, padding tokens included. tokens == nullptr.
  uint8_t* kq = nullptr;
  // The tensor-core kernel (decode_attention_mma.h: decode_mma_supports), which takes a KV
  // head's whole query group per CTA; heads_per_cta is then unused.
  bool mma = false;
  // With mma: warps per CTA, 4, 2 (the narrow variant, five CTAs per SM instead of three) or
  // 12 (the whole variant, one CTA per SM; plan_decode_split's DecodeSplit::mma_warps); 0: 4. A split's keys go in rounds of 16 per
  // warp, so split_len is a multiple of decode_mma_stage_keys(warps) when n_splits > 1.
  int mma_warps = 0;
  // With mma_warps 2: three-tile rings per warp (four CTAs per SM instead of five).
  bool mma_deep = false;
};
void decode_attention(const DecodeAttentionParams& p, cudaStream_t stream);
// Whether a launch whose CTAs take heads_per_cta heads (decode_heads_per_cta) can write
// gemm_kq's records: each CTA's heads are whole 256-value stages, and no cluster merges
// a head's outputs over several CTAs.
bool decode_kq_records_supports(int64_t n_head, int64_t n_head_kv, int64_t head_dim,
                                int heads_per_cta, bool cluster);
// The query heads per CTA a decode launch of n tokens takes (DecodeAttentionParams::
// heads_per_cta = want) for KV heads of `group` query heads each; with mma, the whole group.
int decode_heads_per_cta(int64_t group, int want, int64_t n, int64_t n_head_kv,
                         bool mma = false);
bool decode_attention_supports(int64_t n_head, int64_t n_head_kv, int64_t head_dim);
// Whether decode_attention can rotate q and k_new itself (head_dim % 8 == 0).
bool decode_rope_supports(int64_t head_dim);

// The key split of a decode launch, planned from the block tables' capacity (max_keys) rather
// than this step's lengths, so that a captured graph replays right for every step of a shape
// (a split past a token's length does nothing).
struct DecodeShape {
  int64_t n = 0;  // decode tokens
  int64_t n_head = 0;
  int64_t n_head_kv = 0;
  int64_t head_dim = 0;
  int64_t max_keys = 0;  // max_blocks * block_size
  int n_sms = 1;
  int max_splits = 0;    // cap on the key splits (0: the planner's own)
  bool clusters = false;  // the device runs thread-block clusters (compute capability >= 9.0)
  int heads_per_cta = 0;  // as DecodeAttentionParams::heads_per_cta
  bool mma = false;       // as DecodeAttentionParams::mma
  int mma_warps = 0;      // with mma: 4, 2 or 12 warps per CTA, 0: the planner's pick
  bool mma_deep = false;  // with mma: narrow CTAs may take three-tile rings (decode_mma_deep)
  bool mma_whole = true;  // with mma: the device holds twelve-warp CTAs (decode_mma_whole_fits)
};
struct DecodeSplit {
  int n_splits = 1;
  int split_len = 0;
  bool cluster = false;         // the splits merge in a cluster (no buffers needed)
  int64_t part_out_floats = 0;  // part_out size when split over global memory, else 0
  int64_t part_lse_floats = 0;
  int mma_warps = 4;  // with mma: DecodeAttentionParams::mma_warps
  bool mma_deep = false;  // DecodeAttentionParams::mma_deep
};
DecodeSplit plan_decode_split(const DecodeShape& s);

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
