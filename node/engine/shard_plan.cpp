#include "node/engine/shard_plan.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "node/common/error.h"

namespace tpnode {

namespace {

// Returns an empty string when `tp` can split the model, else why not.
std::string check(const HParams& hp, int tp, int64_t block) {
  if (tp < 1) return "tensor-parallel size must be at least 1";
  if (hp.n_head % tp != 0) {
    return fmt::format("{} attention heads do not divide by {}", hp.n_head, tp);
  }
  const int64_t heads = hp.n_head / tp;
  const int64_t group = hp.n_head / hp.n_head_kv;  // query heads per KV head
  // Each rank's query heads must use its KV heads in the same uniform pattern:
  // whole groups per rank, or several ranks inside one group.
  if (heads % group != 0 && group % heads != 0) {
    return fmt::format("{} query heads per rank do not align with groups of {} per KV head",
                       heads, group);
  }
  if ((heads * hp.head_dim) % block != 0) {
    return fmt::format("attention output columns per rank ({}) are not a multiple of the "
                       "quantization block ({})", heads * hp.head_dim, block);
  }
  if (hp.n_ff % tp != 0) {
    return fmt::format("FFN size {} does not divide by {}", hp.n_ff, tp);
  }
  if ((hp.n_ff / tp) % block != 0) {
    return fmt::format("FFN columns per rank ({}) are not a multiple of the quantization "
                       "block ({})", hp.n_ff / tp, block);
  }
  if (hp.n_vocab < tp) return fmt::format("vocabulary of {} is smaller than {}", hp.n_vocab, tp);
  return {};
}

}  // namespace

bool ShardPlan::is_valid(const HParams& hp, int tp, int64_t block, std::string* why) {
  std::string reason = check(hp, tp, block);
  if (why) *why = reason;
  return reason.empty();
}

std::vector<int> ShardPlan::valid_sizes(const HParams& hp, int64_t block, int max_tp) {
  std::vector<int> sizes;
  for (int tp = 1; tp <= max_tp; ++tp) {
    if (is_valid(hp, tp, block)) sizes.push_back(tp);
  }
  return sizes;
}

ShardPlan ShardPlan::make(const HParams& hp, int tp, int rank, int64_t block) {
  std::string why;
  if (!is_valid(hp, tp, block, &why)) {
    TPNODE_THROW(ErrorKind::kInvalidInput,
                 "cannot split this model over {} ranks: {}; valid tensor-parallel sizes: {}", tp,
                 why, fmt::join(valid_sizes(hp, block), ", "));
  }
  TPNODE_CHECK(rank >= 0 && rank < tp, "rank {} out of range for tp {}", rank, tp);
  ShardPlan s;
  s.tp = tp;
  s.rank = rank;
  s.n_head = hp.n_head / tp;
  s.head0 = s.n_head * rank;
  const int64_t group = hp.n_head / hp.n_head_kv;
  s.kv_head0 = s.head0 / group;
  s.n_head_kv = s.n_head >= group ? s.n_head / group : 1;
  s.n_ff = hp.n_ff / tp;
  s.ff0 = s.n_ff * rank;
  int64_t start = 0;
  for (int r = 0; r < tp; ++r) {
    const int64_t count = hp.n_vocab / tp + (r < hp.n_vocab % tp ? 1 : 0);
    s.vocab_counts.push_back(count);
    if (r == rank) {
      s.vocab0 = start;
      s.n_vocab = count;
    }
    start += count;
  }
  return s;
}

}  // namespace tpnode
