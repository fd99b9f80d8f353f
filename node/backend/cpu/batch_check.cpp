#include "node/backend/cpu/batch_check.h"

#include "node/common/error.h"

namespace tpnode {

void BatchChecker::check(const BatchMeta& b, const KvCacheShape* kv) {
  check_structure(b);
  if (kv != nullptr) check_blocks(b, *kv);
}

void BatchChecker::check_structure(const BatchMeta& b) {
  const int64_t n_tokens = b.n_tokens();
  const int64_t n_seqs = b.n_seqs();
  if (n_tokens == 0 && n_seqs == 0 && b.seq_start.size() <= 1 && b.positions.empty() &&
      b.token_seq.empty() && b.block_tables.empty() && b.logit_rows.empty()) {
    return;  // an empty step, with or without the seq_start sentinel
  }
  TPNODE_CHECK(static_cast<int64_t>(b.positions.size()) == n_tokens &&
                   static_cast<int64_t>(b.token_seq.size()) == n_tokens,
               "batch: {} tokens but {} positions and {} token_seq entries", n_tokens,
               b.positions.size(), b.token_seq.size());
  TPNODE_CHECK(static_cast<int64_t>(b.seq_start.size()) == n_seqs + 1,
               "batch: seq_start has {} entries for {} sequences", b.seq_start.size(), n_seqs);
  TPNODE_CHECK(
      b.max_blocks >= 0 && static_cast<int64_t>(b.block_tables.size()) == n_seqs * b.max_blocks,
      "batch: block_tables has {} entries, want {} sequences x {} blocks", b.block_tables.size(),
      n_seqs, b.max_blocks);
  TPNODE_CHECK(b.seq_start[0] == 0 && b.seq_start[n_seqs] == n_tokens,
               "batch: seq_start must run from 0 to {} tokens, got {}..{}", n_tokens,
               b.seq_start[0], b.seq_start[n_seqs]);
  for (int64_t s = 0; s < n_seqs; ++s) {
    const int32_t first = b.seq_start[s];
    const int32_t last = b.seq_start[s + 1];
    TPNODE_CHECK(first <= last, "batch: seq_start decreases at sequence {}", s);
    for (int32_t t = first; t < last; ++t) {
      TPNODE_CHECK(b.token_seq[t] == s, "batch: token {} lies in sequence {}'s range but says {}",
                   t, s, b.token_seq[t]);
      TPNODE_CHECK(b.positions[t] >= 0 && b.positions[t] < b.seq_kv_len[s],
                   "batch: token {} position {} outside sequence {}'s KV length {}", t,
                   b.positions[t], s, b.seq_kv_len[s]);
      TPNODE_CHECK(t == first || b.positions[t] > b.positions[t - 1],
                   "batch: positions of sequence {} are not increasing at token {}", s, t);
    }
  }
  for (size_t j = 0; j < b.logit_rows.size(); ++j) {
    TPNODE_CHECK(b.logit_rows[j] >= 0 && b.logit_rows[j] < n_tokens,
                 "batch: logit row {} = {} outside {} tokens", j, b.logit_rows[j], n_tokens);
  }
}

void BatchChecker::check_blocks(const BatchMeta& b, const KvCacheShape& kv) {
  const int64_t n_seqs = b.n_seqs();
  // The marks persist between steps; only the entries this batch touches are reset, so a
  // step costs O(its blocks), not O(cache size).
  if (static_cast<int64_t>(writer_.size()) != kv.n_blocks) {
    writer_.assign(static_cast<size_t>(kv.n_blocks), -1);
    seen_.assign(static_cast<size_t>(kv.n_blocks), -1);
  }
  touched_.clear();
  struct Reset {
    BatchChecker& c;
    ~Reset() {
      for (int32_t id : c.touched_) c.writer_[id] = c.seen_[id] = -1;
    }
  } reset{*this};
  // Pass 1: every block a sequence needs is inside the cache, once per table; note writers.
  for (int64_t s = 0; s < n_seqs; ++s) {
    const int64_t kv_len = b.seq_kv_len[s];
    const int64_t need = (kv_len + kv.block_size - 1) / kv.block_size;
    TPNODE_CHECK(kv_len >= 0 && need <= b.max_blocks,
                 "batch: sequence {} needs {} KV blocks for {} tokens, table has {}", s, need,
                 kv_len, b.max_blocks);
    const int32_t* table = b.block_tables.data() + s * b.max_blocks;
    for (int64_t j = 0; j < need; ++j) {
      const int32_t id = table[j];
      TPNODE_CHECK(id >= 0 && id < kv.n_blocks,
                   "batch: sequence {} block table entry {} = {} outside [0, {})", s, j, id,
                   kv.n_blocks);
      TPNODE_CHECK(seen_[id] != s, "batch: sequence {} lists block {} twice", s, id);
      if (seen_[id] == -1) touched_.push_back(id);
      seen_[id] = static_cast<int32_t>(s);
    }
    for (int32_t t = b.seq_start[s]; t < b.seq_start[s + 1]; ++t) {
      const int32_t id = table[b.positions[t] / kv.block_size];
      TPNODE_CHECK(writer_[id] == -1 || writer_[id] == s,
                   "batch: sequences {} and {} both write KV block {}", writer_[id], s, id);
      writer_[id] = static_cast<int32_t>(s);
    }
  }
  // Pass 2: no sequence reads a block that another one writes this step.
  for (int64_t s = 0; s < n_seqs; ++s) {
    const int64_t need = (b.seq_kv_len[s] + kv.block_size - 1) / kv.block_size;
    const int32_t* table = b.block_tables.data() + s * b.max_blocks;
    for (int64_t j = 0; j < need; ++j) {
      const int32_t w = writer_[table[j]];
      TPNODE_CHECK(w == -1 || w == s, "batch: sequence {} uses KV block {} that sequence {} writes",
                   s, table[j], w);
    }
  }
}

}  // namespace tpnode
