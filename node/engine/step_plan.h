// The unit rank 0 broadcasts each iteration: which sequences run, with which new tokens,
// where their KV lives. Every rank runs the same plan on its own shard.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace tpnode {

struct SamplingParams;  // node/engine/sampler.h

// Sampling the engine may do where the logits are, instead of returning them: the host
// Sampler's greedy / temperature / top-k / top-p / min-p, without the penalties (they need the
// token history). The engine draws with counter = the sampled token's position in its
// sequence, so a request's tokens do not depend on the batch it runs in.
struct DeviceSampling {
  bool enabled = false;      // false: return this sequence's logits
  float temperature = 0.0f;  // 0 = greedy
  int32_t top_k = 0;         // 0 = off
  float top_p = 1.0f;
  float min_p = 0.0f;
  uint64_t seed = 0;

  void validate() const;  // throws tpnode::Error naming the bad field (when enabled)
  bool operator==(const DeviceSampling&) const = default;
};

// The device form of `p`, disabled when `p` uses penalties.
DeviceSampling device_sampling_for(const SamplingParams& p);

// A decode token that is not on the host yet: the one the engine's previous submitted step
// drew on the device for this sequence (Engine::submit, on engines that chain()).
inline constexpr int32_t kChainedToken = -1;

struct SeqStep {
  uint64_t seq_id = 0;
  int32_t n_past = 0;             // tokens of this sequence already in the KV cache
  std::vector<int32_t> tokens;    // new tokens this step (a prefill chunk or one decode token,
                                  // which may be kChainedToken)
  std::vector<int32_t> blocks;    // KV block table covering n_past + tokens.size() tokens
  bool want_logits = true;        // return logits of the last new token
  // With want_logits: sample on the device when the engine can. (`= {}` keeps aggregate
  // initializers that stop before it free of missing-initializer warnings.)
  DeviceSampling sampling = {};
};

// What a step returns on rank 0: one row per sequence with want_logits, in plan order.
// Rows whose sequence asked for device sampling, on an engine that can (one rank, a backend
// that samples), come back as token ids; the others as logits for the host to sample.
struct StepOutput {
  // Empty when every row is logits; else [rows]: the sampled id, or -1 for a logits row.
  std::vector<int32_t> tokens;
  // [logits rows, n_vocab]: the rows with no token, in order.
  std::vector<float> logits;

  bool sampled(size_t row) const { return !tokens.empty() && tokens[row] >= 0; }
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
