// The unit rank 0 broadcasts each iteration: which sequences run, with which new tokens,
// where their KV lives. Every rank runs the same plan on its own shard.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace tpnode {

struct SeqStep {
  uint64_t seq_id = 0;
  int32_t n_past = 0;             // tokens of this sequence already in the KV cache
  std::vector<int32_t> tokens;    // new tokens this step (a prefill chunk or one decode token)
  std::vector<int32_t> blocks;    // KV block table covering n_past + tokens.size() tokens
  bool want_logits = true;        // return logits of the last new token
};

struct StepPlan {
  uint64_t step = 0;
  std::vector<SeqStep> seqs;
  bool shutdown = false;  // workers leave their loop

  int64_t n_tokens() const;
  int64_t n_logits() const;
};

// Compact binary form for the broadcast; deserialize validates every count.
std::string serialize(const StepPlan& plan);
StepPlan deserialize_step_plan(const std::string& bytes);

}  // namespace tpnode
