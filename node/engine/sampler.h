// Token sampling on the host: greedy, temperature, top-k, top-p, min-p, repetition /
// presence / frequency penalties, per-request seed. Same seed + same logits = same tokens.
#pragma once

#include <cstdint>
#include <random>
#include <span>
#include <vector>

namespace tpnode {

struct SamplingParams {
  float temperature = 0.0f;  // 0 = greedy
  int32_t top_k = 0;         // 0 = off
  float top_p = 1.0f;
  float min_p = 0.0f;
  float repetition_penalty = 1.0f;
  float presence_penalty = 0.0f;
  float frequency_penalty = 0.0f;
  int32_t penalty_last_n = 64;  // how many recent tokens the penalties look at
  uint64_t seed = 0;

  void validate() const;  // throws tpnode::Error naming the bad field
};

class Sampler {
 public:
  explicit Sampler(const SamplingParams& params);
  // history: prompt + generated tokens so far (for penalties).
  int32_t sample(std::span<const float> logits, std::span<const int32_t> history);
  const SamplingParams& params() const { return params_; }

 private:
  SamplingParams params_;
  std::mt19937_64 rng_;
  std::vector<std::pair<float, int32_t>> scratch_;
};

}  // namespace tpnode
