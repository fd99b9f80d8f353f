// Architecture facts of a llama-family model, from GGUF metadata or a config.json.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace tpnode {

// How RoPE pairs the elements of a head.
//  kInterleaved: (2i, 2i+1) — llama.cpp's "normal" mode; GGUF llama tensors are stored
//                permuted for it by the converter.
//  kNeox:        (i, i + head_dim/2) — Hugging Face's rotate_half; qwen2 GGUF and all
//                safetensors checkpoints.
// We keep each file's own layout and pick the matching RoPE instead of permuting weights.
enum class RopeStyle { kInterleaved, kNeox };

struct RopeScaling {
  enum class Kind { kNone, kLinear, kLlama3 };
  Kind kind = Kind::kNone;
  float factor = 1.0f;
  float low_freq_factor = 1.0f;   // llama3
  float high_freq_factor = 4.0f;  // llama3
  int64_t original_context = 8192;  // llama3
  // Per frequency pair (head_dim / 2 values): divides that pair's inverse frequency.
  // llama.cpp's converter stores llama3 scaling this way (the rope_freqs.weight tensor);
  // applied on top of `kind`, empty when absent.
  std::vector<float> freq_factors;
};

struct HParams {
  std::string arch;      // "llama", "qwen2", "mistral"
  std::string name;      // general.name or config _name_or_path, informational
  int64_t n_layer = 0;
  int64_t n_embd = 0;    // hidden size
  int64_t n_head = 0;
  int64_t n_head_kv = 0;
  int64_t head_dim = 0;  // usually n_embd / n_head
  int64_t n_ff = 0;
  int64_t n_vocab = 0;
  int64_t n_ctx_train = 0;
  float rope_theta = 10000.0f;
  RopeStyle rope_style = RopeStyle::kNeox;
  RopeScaling rope_scaling;
  float rms_eps = 1e-5f;
  bool tied_embeddings = false;  // no output.weight: the LM head reuses token_embd
  bool attn_bias = false;        // q/k/v biases (qwen2)

  // Throws tpnode::Error naming the first inconsistent field.
  void validate() const;
};

}  // namespace tpnode
