#include "node/engine/synthetic_mix.h"

#include <fmt/format.h>

#include <optional>

#include "node/common/error.h"

namespace tpnode {

bool q4_k_m_more_bits(int64_t layer, int64_t n_layer) {
  return layer < n_layer / 8 || layer >= 7 * n_layer / 8 || (layer - n_layer / 8) % 3 == 2;
}

SyntheticMix synthetic_mix(const std::string& name, const HParams& hp) {
  if (name == "q4_k_m") {
    // llama-quant.cpp's test for a 70B, which keeps its (8x smaller) attn_v at Q5_K at least.
    const bool is_70b = hp.arch == "llama" && hp.n_layer == 80 && hp.n_head != hp.n_head_kv;
    SyntheticMix mix{TensorType::kQ4_K, {{"output.weight", TensorType::kQ6_K}}};
    for (int64_t l = 0; l < hp.n_layer; ++l) {
      const bool more = q4_k_m_more_bits(l, hp.n_layer);
      const std::string blk = fmt::format("blk.{}.", l);
      if (more || is_70b) {
        mix.overrides.emplace_back(blk + "attn_v.weight",
                                   more ? TensorType::kQ6_K : TensorType::kQ5_K);
      }
      if (more) mix.overrides.emplace_back(blk + "ffn_down.weight", TensorType::kQ6_K);
    }
    return mix;
  }
  if (name == "q4_k_m-flat") {
    return {TensorType::kQ4_K,
            {{"ffn_down.weight", TensorType::kQ6_K}, {"output.weight", TensorType::kQ6_K}}};
  }
  if (const std::optional<TensorType> type = tensor_type_from_name(name)) return {*type, {}};
  TPNODE_THROW(ErrorKind::kInvalidInput,
               "--type {}: expected q4_k_m, q4_k_m-flat or a weight type (f32, f16, bf16, q8_0, "
               "q4_0, q4_1, q5_0, q5_1, q4_k, q5_k, q6_k)",
               name);
}

}  // namespace tpnode
