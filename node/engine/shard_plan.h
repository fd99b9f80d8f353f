// Which part of every weight this rank holds for a given tensor-parallel size.
//   column-parallel (split output rows): q, k, v (whole heads), gate, up, LM head (vocab rows)
//   row-parallel (split input columns):  attn_output, ffn_down — one all-reduce after each
//   replicated: token_embd, norms
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "node/model/hparams.h"

namespace tpnode {

struct ShardPlan {
  int tp = 1;
  int rank = 0;
  int64_t head0 = 0, n_head = 0;        // query heads [head0, head0 + n_head)
  int64_t kv_head0 = 0, n_head_kv = 0;  // KV heads this rank keeps
  int64_t ff0 = 0, n_ff = 0;            // FFN columns
  int64_t vocab0 = 0, n_vocab = 0;      // LM head rows
  std::vector<int64_t> vocab_counts;    // LM head rows of every rank, for the gather

  // `block` is the largest quantization block among the row-parallel weights: their column
  // split must land on block boundaries. Throws tpnode::Error listing the valid sizes.
  static ShardPlan make(const HParams& hp, int tp, int rank, int64_t block = 1);
  static bool is_valid(const HParams& hp, int tp, int64_t block, std::string* why = nullptr);
  static std::vector<int> valid_sizes(const HParams& hp, int64_t block, int max_tp = 64);
};

}  // namespace tpnode
