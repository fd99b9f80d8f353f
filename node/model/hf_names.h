// Hugging Face checkpoint tensor names -> the internal GGUF-style names of model_file.h.
#pragma once

#include <optional>
#include <string>
#include <string_view>

namespace tpnode {

// "model.layers.3.self_attn.q_proj.weight" -> "blk.3.attn_q.weight"; nullopt for tensors a
// llama-family forward does not use (rotary inv_freq buffers and the like).
std::optional<std::string> internal_name_from_hf(std::string_view hf_name);

}  // namespace tpnode
