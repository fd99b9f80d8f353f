// Rotary position embedding, with the frequencies computed as Hugging Face computes them
// (inv_freq in float32, angle = float32(position * inv_freq)), so that CPU results match
// transformers to float rounding.
#pragma once

#include <cstdint>
#include <vector>

#include "kernels/cpu/thread_pool.h"
#include "node/model/hparams.h"

namespace tpnode::cpu {

// inv_freq[i], i < head_dim/2: theta^(-2i/head_dim), then the scaling's adjustment
// (kLinear: / factor; kLlama3: transformers' _compute_llama3_parameters), then divided by
// scaling.freq_factors[i] when given (llama.cpp's rope_freqs). Throws on a wrong count.
std::vector<float> rope_inv_freq(int64_t head_dim, float theta, const RopeScaling& scaling);

// cos/sin of each token's angles: [n_tokens, half] each.
struct RopeTable {
  int64_t half = 0;
  std::vector<float> cos;
  std::vector<float> sin;
};

RopeTable rope_table(const int32_t* positions, int64_t n_tokens,
                     const std::vector<float>& inv_freq);

struct RopeRotateArgs {
  float* x = nullptr;  // [n_tokens, n_heads, head_dim], rotated in place
  int64_t n_tokens = 0;
  int64_t n_heads = 0;
  int64_t head_dim = 0;  // even; table.half == head_dim / 2
  RopeStyle style = RopeStyle::kNeox;
  const RopeTable* table = nullptr;
};

void rope_rotate(const RopeRotateArgs& args, ThreadPool& pool);

}  // namespace tpnode::cpu
