// The weight types of a synthetic model (SyntheticWeightSource) by the names `tpnode bench
// --type` takes: one type for every matrix, or a quantization mix with per-tensor overrides.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "node/model/hparams.h"
#include "node/model/tensor_type.h"

namespace tpnode {

struct SyntheticMix {
  TensorType matrix = TensorType::kF32;                       // every 2-D weight not overridden
  std::vector<std::pair<std::string, TensorType>> overrides;  // SyntheticWeightSource's form
};

// Layers whose attn_v and ffn_down llama.cpp's Q4_K_M keeps in Q6_K (its use_more_bits): the
// first and last eighth of the layers and every third one between.
bool q4_k_m_more_bits(int64_t layer, int64_t n_layer);

// "q4_k_m": llama.cpp's Q4_K_M for a llama-architecture model (Q4_K; Q6_K for the output
// layer and for attn_v and ffn_down of the q4_k_m_more_bits layers; Q5_K for the other attn_v
// of a model llama.cpp takes for a 70B: a llama of 80 layers with grouped-query attention).
// "q4_k_m-flat": Q4_K with Q6_K ffn_down in every layer and the output layer (the mix of the
// benchmark records before 2026-12-01). Else a weight type's name (f32, bf16, q8_0, q4_k, ...) for
// every matrix. Throws kInvalidInput for any other name.
SyntheticMix synthetic_mix(const std::string& name, const HParams& hp);

}  // namespace tpnode
