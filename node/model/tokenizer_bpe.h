// Byte-level BPE (tokenizer.ggml.model "gpt2"): text is pre-split by the vocabulary's regex,
// each piece's bytes are spelled with GPT-2's byte-to-unicode alphabet, and merges are applied
// lowest rank first (leftmost on ties), as Hugging Face tokenizers' BPE does.
#pragma once

#include <cstdint>
#include <string>
#include <unordered_map>
#include <vector>

#include "node/model/pretokenize.h"
#include "node/model/tokenizer.h"
#include "node/model/tokenizer_special.h"

namespace tpnode {

class BpeTokenizer final : public Tokenizer {
 public:
  explicit BpeTokenizer(const TokenizerData& data);
  BpeTokenizer(const BpeTokenizer&) = delete;
  BpeTokenizer& operator=(const BpeTokenizer&) = delete;

  std::vector<int32_t> encode(std::string_view text, bool add_special,
                              bool parse_special) const override;
  std::string token_to_piece(int32_t id, bool special = false) const override;

 private:
  struct Merge {
    int32_t rank;
    int32_t result;
  };
  // Appends the ids of one pre-tokenized piece.
  void encode_piece(std::string_view piece, std::vector<int32_t>& out) const;
  const Merge* find_merge(int32_t left, int32_t right) const;

  PreTokenizer pre_;
  bool ignore_merges_ = false;  // a piece that is itself a token is emitted whole (Llama 3)
  std::unordered_map<std::string, int32_t> token_to_id_;
  std::unordered_map<uint64_t, Merge> merges_;  // (left id << 32 | right id) -> merge
  int32_t byte_token_[256];                     // id of each byte's one-character token, or -1
  SpecialTokenMatcher specials_;
};

// GPT-2's reversible map from bytes to printable code points, and back (-1: not a byte char).
uint32_t byte_to_codepoint(uint8_t b);
int32_t codepoint_to_byte(uint32_t cp);

}  // namespace tpnode
