// A read-only view of a model: one GGUF file, or a Hugging Face folder of config.json +
// *.safetensors (+ model.safetensors.index.json) + tokenizer.json. Both are mmapped and
// every offset is checked against the file before a view is handed out.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "node/model/hparams.h"
#include "node/model/tensor_type.h"

namespace tpnode {

// Internal tensor names follow GGUF: token_embd.weight, output_norm.weight, output.weight,
// blk.N.{attn_norm,attn_q,attn_k,attn_v,attn_output,ffn_norm,ffn_gate,ffn_up,ffn_down}.weight,
// blk.N.attn_{q,k,v}.bias. Hugging Face names are mapped onto these at load.
struct TensorView {
  std::string name;
  TensorType type = TensorType::kF32;
  std::vector<int64_t> shape;  // GGUF order: shape[0] is the contiguous (inner) dimension
  const uint8_t* data = nullptr;
  uint64_t nbytes = 0;
  uint64_t file_offset = 0;  // absolute offset of data in `file`
  std::string file;          // the file that holds it (safetensors may be sharded)

  int64_t cols() const { return shape.empty() ? 0 : shape[0]; }  // inner dimension
  int64_t rows() const;                                          // product of the others
  int64_t elements() const;
};

// Everything a tokenizer needs, from GGUF tokenizer.* metadata or from tokenizer.json.
struct TokenizerData {
  std::string model;  // "llama" (SentencePiece) or "gpt2" (byte-level BPE)
  std::string pre;    // pre-tokenizer for gpt2: "llama3", "qwen2", "smollm", "gpt2", "default"
  std::vector<std::string> tokens;
  std::vector<float> scores;          // SentencePiece scores (may be empty for BPE)
  std::vector<int32_t> token_types;   // 1 normal, 2 unknown, 3 control, 4 user-defined, 6 byte
  std::vector<std::string> merges;    // "a b" pairs for BPE, in rank order
  int32_t bos_id = -1;
  int32_t eos_id = -1;
  int32_t eot_id = -1;  // end of turn, when the vocabulary has a distinct one
  int32_t unk_id = -1;
  int32_t pad_id = -1;
  bool add_bos = false;
  bool add_eos = false;
  bool add_space_prefix = true;  // SentencePiece: prepend "▁" to the text
  std::string chat_template;     // Jinja source, empty when the file has none
};

class ModelFile {
 public:
  // Opens a .gguf file or a safetensors model folder. Throws tpnode::Error that names the
  // file and what is wrong (bad magic, truncated, offsets past the end, missing keys, ...).
  static std::unique_ptr<ModelFile> open(const std::string& path);

  virtual ~ModelFile() = default;

  virtual std::string_view format() const = 0;  // "gguf" or "safetensors"
  const std::string& path() const { return path_; }
  const HParams& hparams() const { return hparams_; }
  const TokenizerData& tokenizer() const { return tokenizer_; }
  const std::vector<TensorView>& tensors() const { return tensors_; }

  const TensorView* find(std::string_view name) const;
  // Throws tpnode::Error naming the file and the missing tensor.
  const TensorView& get(std::string_view name) const;

  // Tells the OS the mapped pages may be dropped (after a rank has copied its shard out).
  virtual void release_pages() const = 0;

  // Human-readable key/value metadata for `tpnode inspect` (GGUF keys, or config.json).
  virtual std::vector<std::pair<std::string, std::string>> metadata_summary() const = 0;

 protected:
  std::string path_;
  HParams hparams_;
  TokenizerData tokenizer_;
  std::vector<TensorView> tensors_;
};

}  // namespace tpnode
