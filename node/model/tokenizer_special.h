// Finding special tokens in text before the model's own tokenization runs: control tokens
// (type 3, e.g. <|im_start|>) when the caller asks for it, user-defined tokens (type 4)
// always. Matching is leftmost-longest, as Hugging Face tokenizers matches added tokens.
#pragma once

#include <cstdint>
#include <string_view>
#include <vector>

#include "node/model/model_file.h"

namespace tpnode {

// Token types of TokenizerData::token_types (GGUF's llama_token_type).
enum TokenType : int32_t {
  kTokenNormal = 1,
  kTokenUnknown = 2,
  kTokenControl = 3,
  kTokenUserDefined = 4,
  kTokenUnused = 5,
  kTokenByte = 6,
};

inline int32_t token_type_of(const TokenizerData& data, int32_t id) {
  if (id < 0 || static_cast<size_t>(id) >= data.token_types.size()) return kTokenNormal;
  return data.token_types[id];
}

// A piece of the input: plain text to tokenize, or one special token.
struct TextFragment {
  std::string_view text;
  int32_t token = -1;  // >= 0: this fragment is that special token
};

class SpecialTokenMatcher {
 public:
  explicit SpecialTokenMatcher(const TokenizerData& data);
  std::vector<TextFragment> split(std::string_view text, bool parse_special) const;

 private:
  struct Entry {
    std::string_view text;  // views into TokenizerData::tokens (which outlive the matcher)
    int32_t id;
    bool control;
  };
  std::vector<Entry> by_first_byte_[256];  // longest first
};

}  // namespace tpnode
