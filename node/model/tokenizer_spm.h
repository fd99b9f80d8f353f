// SentencePiece-style BPE (tokenizer.ggml.model "llama"): spaces become "▁", a "▁" is put in
// front of the text (add_space_prefix), adjacent symbols are merged highest score first, and a
// symbol that is no token falls back to its bytes (<0xXX> tokens) or to unk.
// When the data carries merges (a Hugging Face tokenizer.json of this kind), a pair merges only
// if it is a listed merge, lowest rank first, exactly as Hugging Face's BPE with byte_fallback.
#pragma once

#include <cstdint>
#include <string>
#include <unordered_map>
#include <vector>

#include "node/model/tokenizer.h"
#include "node/model/tokenizer_special.h"

namespace tpnode {

class SpmTokenizer final : public Tokenizer {
 public:
  explicit SpmTokenizer(const TokenizerData& data);
  SpmTokenizer(const SpmTokenizer&) = delete;
  SpmTokenizer& operator=(const SpmTokenizer&) = delete;

  std::vector<int32_t> encode(std::string_view text, bool add_special,
                              bool parse_special) const override;
  std::string token_to_piece(int32_t id, bool special = false) const override;

 private:
  // Appends the ids of `text` (spaces already escaped to "▁").
  void encode_escaped(const std::string& text, std::vector<int32_t>& out) const;
  // A token that merging may produce (not control, unknown or byte), or -1.
  int32_t mergeable_token(std::string_view text) const;
  // Priority of merging two adjacent symbols (higher first), or false when they do not merge.
  bool merge_priority(std::string_view left, std::string_view right, float& priority) const;

  std::unordered_map<std::string, int32_t> token_to_id_;
  std::unordered_map<uint64_t, int32_t> merge_rank_;  // (left id << 32 | right id) -> rank
  int32_t byte_token_[256];  // <0xXX>, or -1 when the vocabulary has no byte fallback
  SpecialTokenMatcher specials_;
};

}  // namespace tpnode
