#include "node/model/hf_names.h"

#include <array>
#include <charconv>
#include <utility>

namespace tpnode {

namespace {

using Pair = std::pair<std::string_view, std::string_view>;

constexpr std::array<Pair, 3> kGlobal = {{
    {"model.embed_tokens", "token_embd"},
    {"model.norm", "output_norm"},
    {"lm_head", "output"},
}};

constexpr std::array<Pair, 9> kPerLayer = {{
    {"input_layernorm", "attn_norm"},
    {"self_attn.q_proj", "attn_q"},
    {"self_attn.k_proj", "attn_k"},
    {"self_attn.v_proj", "attn_v"},
    {"self_attn.o_proj", "attn_output"},
    {"post_attention_layernorm", "ffn_norm"},
    {"mlp.gate_proj", "ffn_gate"},
    {"mlp.up_proj", "ffn_up"},
    {"mlp.down_proj", "ffn_down"},
}};

// Splits "stem.weight" / "stem.bias" into the stem and the suffix.
std::optional<std::pair<std::string_view, std::string_view>> split_suffix(std::string_view name) {
  for (std::string_view suffix : {std::string_view(".weight"), std::string_view(".bias")}) {
    if (name.size() > suffix.size() && name.ends_with(suffix)) {
      return std::pair{name.substr(0, name.size() - suffix.size()), suffix};
    }
  }
  return std::nullopt;
}

}  // namespace

std::optional<std::string> internal_name_from_hf(std::string_view hf_name) {
  auto split = split_suffix(hf_name);
  if (!split) return std::nullopt;
  auto [stem, suffix] = *split;
  for (auto [hf, ours] : kGlobal) {
    if (stem == hf) return std::string(ours) + std::string(suffix);
  }
  constexpr std::string_view kLayers = "model.layers.";
  if (!stem.starts_with(kLayers)) return std::nullopt;
  stem.remove_prefix(kLayers.size());
  size_t dot = stem.find('.');
  if (dot == std::string_view::npos || dot == 0) return std::nullopt;
  std::string_view index = stem.substr(0, dot);
  unsigned layer = 0;
  auto [end, ec] = std::from_chars(index.data(), index.data() + index.size(), layer);
  // Canonical decimal only: "01" or "+1" would alias another layer's name.
  if (ec != std::errc() || end != index.data() + index.size() ||
      (index.size() > 1 && index[0] == '0')) {
    return std::nullopt;
  }
  std::string_view rest = stem.substr(dot + 1);
  for (auto [hf, ours] : kPerLayer) {
    if (rest == hf)
      return "blk." + std::string(index) + "." + std::string(ours) + std::string(suffix);
  }
  return std::nullopt;
}

}  // namespace tpnode
