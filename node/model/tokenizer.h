// Tokenizers built from TokenizerData: SentencePiece-style (model "llama", byte fallback)
// and byte-level BPE (model "gpt2", with the llama3 / qwen2 / smollm pre-tokenizers).
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "node/model/model_file.h"

namespace tpnode {

class Tokenizer {
 public:
  // Throws tpnode::Error for an unknown model or pre-tokenizer kind.
  static std::unique_ptr<Tokenizer> create(const TokenizerData& data);
  virtual ~Tokenizer() = default;

  // add_special: add BOS/EOS as the file asks (tokenizer.ggml.add_bos_token, ...).
  // parse_special: text like "<|im_start|>" becomes its control token instead of plain text.
  virtual std::vector<int32_t> encode(std::string_view text, bool add_special,
                                      bool parse_special) const = 0;
  // The raw bytes a token stands for (byte-fallback and byte-level tokens resolved).
  // Control tokens give their text only when `special` is true.
  virtual std::string token_to_piece(int32_t id, bool special = false) const = 0;

  std::string decode(std::span<const int32_t> ids, bool special = false) const;

  int32_t n_vocab() const { return static_cast<int32_t>(data_.tokens.size()); }
  int32_t bos() const { return data_.bos_id; }
  int32_t eos() const { return data_.eos_id; }
  // End of generation: EOS, EOT, or another control token the vocabulary marks as such.
  virtual bool is_eog(int32_t id) const;
  const TokenizerData& data() const { return data_; }

 protected:
  explicit Tokenizer(const TokenizerData& data) : data_(data) {}
  TokenizerData data_;
};

// Turns a token stream into text without ever emitting half a UTF-8 character.
class StreamDecoder {
 public:
  explicit StreamDecoder(const Tokenizer& tok) : tok_(tok) {}
  std::string push(int32_t id);  // complete characters available so far
  std::string flush();           // whatever is left (invalid tails become U+FFFD)

 private:
  const Tokenizer& tok_;
  std::string pending_;
};

// Reads tokenizer.json (Hugging Face tokenizers) into TokenizerData.
// `model_type` is config.json's model_type, used to pick the pre-tokenizer.
TokenizerData tokenizer_data_from_json(const std::string& tokenizer_json_path,
                                       const std::string& model_type);

}  // namespace tpnode
