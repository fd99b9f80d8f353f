#include "kernels/cpu/attention.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "kernels/cpu/elementwise.h"
#include "node/common/error.h"

namespace tpnode::cpu {
namespace {

// Offset (in elements) of (block, slot, kv head 0) in one layer's K or V.
int64_t kv_offset(const KvLayerView& c, int64_t block, int64_t slot) {
  return ((block * c.block_size) + slot) * c.n_head_kv * c.head_dim;
}

const int32_t* table_of(const PagedBatchView& b, int64_t token) {
  return b.block_tables + static_cast<int64_t>(b.token_seq[token]) * b.max_blocks;
}

// Storage element: F32 or F16, chosen once per call.
template <typename T>
struct KvElem;

template <>
struct KvElem<float> {
  static float load(const float* p) { return *p; }
  static void store_row(float* dst, const float* src, int64_t n) {
    std::memcpy(dst, src, static_cast<size_t>(n) * sizeof(float));
  }
};

template <>
struct KvElem<uint16_t> {
  static float load(const uint16_t* p) { return fp16_to_f32(*p); }
  static void store_row(uint16_t* dst, const float* src, int64_t n) {
    f32_to_fp16_row(src, dst, n);
  }
};

template <typename T>
void store_impl(const PagedAttentionArgs& a, ThreadPool& pool) {
  const KvLayerView& c = a.cache;
  const int64_t row = c.n_head_kv * c.head_dim;
  pool.parallel_for(a.batch.n_tokens, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t pos = a.batch.positions[t];
      const int64_t block = table_of(a.batch, t)[pos / c.block_size];
      const int64_t off = kv_offset(c, block, pos % c.block_size);
      KvElem<T>::store_row(static_cast<T*>(c.k) + off, a.k + t * row, row);
      KvElem<T>::store_row(static_cast<T*>(c.v) + off, a.v + t * row, row);
    }
  });
}

template <typename T>
void attention_impl(const PagedAttentionArgs& a, ThreadPool& pool) {
  const KvLayerView& c = a.cache;
  const int64_t d = c.head_dim;
  const int64_t group = a.n_head / c.n_head_kv;
  const T* kc = static_cast<const T*>(c.k);
  const T* vc = static_cast<const T*>(c.v);
  pool.parallel_for(
      a.batch.n_tokens * a.n_head,
      [&](int64_t begin, int64_t end) {
        std::vector<float> scores;
        std::vector<float> acc(static_cast<size_t>(d));
        for (int64_t item = begin; item < end; ++item) {
          const int64_t t = item / a.n_head;
          const int64_t h = item % a.n_head;
          const int64_t kvh = h / group;
          const int64_t n_ctx = static_cast<int64_t>(a.batch.positions[t]) + 1;
          const int32_t* table = table_of(a.batch, t);
          const float* q = a.q + item * d;
          scores.resize(static_cast<size_t>(n_ctx));

          float max_score = -std::numeric_limits<float>::infinity();
          for (int64_t p = 0; p < n_ctx; ++p) {
            const T* k = kc + kv_offset(c, table[p / c.block_size], p % c.block_size) + kvh * d;
            float dot = 0.0f;
            for (int64_t i = 0; i < d; ++i) dot += q[i] * KvElem<T>::load(k + i);
            scores[p] = dot * a.scale;
            max_score = std::max(max_score, scores[p]);
          }
          float sum = 0.0f;
          for (int64_t p = 0; p < n_ctx; ++p) {
            scores[p] = std::exp(scores[p] - max_score);
            sum += scores[p];
          }
          std::fill(acc.begin(), acc.end(), 0.0f);
          for (int64_t p = 0; p < n_ctx; ++p) {
            const T* v = vc + kv_offset(c, table[p / c.block_size], p % c.block_size) + kvh * d;
            const float w = scores[p];
            for (int64_t i = 0; i < d; ++i) acc[i] += w * KvElem<T>::load(v + i);
          }
          float* out = a.out + item * d;
          const float inv_sum = 1.0f / sum;
          for (int64_t i = 0; i < d; ++i) out[i] = acc[i] * inv_sum;
        }
      },
      /*grain=*/4);
}

void check_shapes(const PagedAttentionArgs& a) {
  const KvLayerView& c = a.cache;
  TPNODE_CHECK(c.k != nullptr && c.v != nullptr, "paged attention: KV cache not initialised");
  TPNODE_CHECK(c.type == TensorType::kF32 || c.type == TensorType::kF16,
               "paged attention: KV type {} unsupported (F32 or F16)", type_name(c.type));
  TPNODE_CHECK(c.n_head_kv > 0 && c.head_dim > 0 && c.block_size > 0,
               "paged attention: bad cache shape n_head_kv={} head_dim={} block_size={}",
               c.n_head_kv, c.head_dim, c.block_size);
  TPNODE_CHECK(a.n_head > 0 && a.n_head % c.n_head_kv == 0,
               "paged attention: n_head {} is not a multiple of n_head_kv {}", a.n_head,
               c.n_head_kv);
  TPNODE_CHECK(a.batch.n_tokens == 0 || (a.q && a.k && a.v && a.out),
               "paged attention: null q/k/v/out");
}

template <typename Fn>
void dispatch_kv_type(TensorType type, Fn&& fn) {
  if (type == TensorType::kF16) {
    fn(uint16_t{});
  } else {
    fn(float{});
  }
}

}  // namespace

void check_paged_batch(const KvLayerView& c, const PagedBatchView& b) {
  for (int64_t t = 0; t < b.n_tokens; ++t) {
    const int64_t seq = b.token_seq[t];
    const int64_t pos = b.positions[t];
    TPNODE_CHECK(seq >= 0 && seq < b.n_seqs, "paged attention: token {} has sequence {} of {}", t,
                 seq, b.n_seqs);
    TPNODE_CHECK(pos >= 0 && pos / c.block_size < b.max_blocks,
                 "paged attention: token {} position {} outside its block table ({} blocks of {})",
                 t, pos, b.max_blocks, c.block_size);
    const int32_t* table = table_of(b, t);
    for (int64_t j = 0; j <= pos / c.block_size; ++j) {
      TPNODE_CHECK(table[j] >= 0 && table[j] < c.n_blocks,
                   "paged attention: sequence {} block table entry {} = {} outside [0, {})", seq, j,
                   table[j], c.n_blocks);
    }
  }
}

void paged_kv_store(const PagedAttentionArgs& a, ThreadPool& pool) {
  check_shapes(a);
  check_paged_batch(a.cache, a.batch);
  dispatch_kv_type(a.cache.type, [&](auto tag) { store_impl<decltype(tag)>(a, pool); });
}

void paged_attention(const PagedAttentionArgs& a, ThreadPool& pool) {
  check_shapes(a);
  check_paged_batch(a.cache, a.batch);
  dispatch_kv_type(a.cache.type, [&](auto tag) { attention_impl<decltype(tag)>(a, pool); });
}

void paged_attention_step(const PagedAttentionArgs& a, ThreadPool& pool) {
  paged_kv_store(a, pool);
  paged_attention(a, pool);
}

}  // namespace tpnode::cpu
