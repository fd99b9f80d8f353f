// Helpers shared by the CPU backend tests: seeded random data, batches with shuffled
// (non-contiguous) block tables, and a plain half-precision rounding reference.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <random>
#include <vector>

#include "node/engine/backend.h"
#include "node/model/hparams.h"

namespace tpnode::test {

inline std::vector<float> random_floats(size_t n, uint32_t seed, float scale = 1.0f) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(-scale, scale);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

// The compiler's own half type, independent of the backend's bit conversion.
inline float round_f16(float x) { return static_cast<float>(static_cast<_Float16>(x)); }

inline RopeScaling linear_scaling(float factor) {
  RopeScaling s;
  s.kind = RopeScaling::Kind::kLinear;
  s.factor = factor;
  return s;
}

// Llama 3.1's defaults unless told otherwise.
inline RopeScaling llama3_scaling(float factor = 8.0f, float low = 1.0f, float high = 4.0f,
                                  int64_t original_context = 8192) {
  RopeScaling s;
  s.kind = RopeScaling::Kind::kLlama3;
  s.factor = factor;
  s.low_freq_factor = low;
  s.high_freq_factor = high;
  s.original_context = original_context;
  return s;
}

// One sequence of a step: n_past tokens already cached, n_new arriving now.
struct SeqSpec {
  int32_t n_past = 0;
  int32_t n_new = 0;
};

// Builds a BatchMeta for `seqs` whose block tables come from `tables` (one per sequence,
// covering at least n_past + n_new tokens), padded with -1 to a common width.
inline BatchMeta make_batch(const std::vector<SeqSpec>& seqs,
                            const std::vector<std::vector<int32_t>>& tables) {
  BatchMeta b;
  size_t width = 0;
  for (const auto& t : tables) width = std::max(width, t.size());
  b.max_blocks = static_cast<int32_t>(width);
  b.seq_start.push_back(0);
  for (size_t s = 0; s < seqs.size(); ++s) {
    for (int32_t i = 0; i < seqs[s].n_new; ++i) {
      b.tokens.push_back(static_cast<int32_t>((s * 131 + i * 7) % 97));
      b.positions.push_back(seqs[s].n_past + i);
      b.token_seq.push_back(static_cast<int32_t>(s));
    }
    b.seq_start.push_back(b.n_tokens());
    b.seq_kv_len.push_back(seqs[s].n_past + seqs[s].n_new);
    if (seqs[s].n_new > 0) b.logit_rows.push_back(b.n_tokens() - 1);
    std::vector<int32_t> row = tables[s];
    row.resize(width, -1);
    b.block_tables.insert(b.block_tables.end(), row.begin(), row.end());
  }
  return b;
}

// Hands out distinct block ids from a shuffled pool, so tables are never contiguous.
class BlockPool {
 public:
  BlockPool(int32_t n_blocks, uint32_t seed) : ids_(static_cast<size_t>(n_blocks)) {
    std::iota(ids_.begin(), ids_.end(), 0);
    std::mt19937 rng(seed);
    std::shuffle(ids_.begin(), ids_.end(), rng);
  }
  // Extends `table` to cover `tokens` tokens.
  void grow(std::vector<int32_t>& table, int64_t tokens, int64_t block_size) {
    while (static_cast<int64_t>(table.size()) * block_size < tokens) {
      table.push_back(ids_.at(next_++));
    }
  }

 private:
  std::vector<int32_t> ids_;
  size_t next_ = 0;
};

}  // namespace tpnode::test
