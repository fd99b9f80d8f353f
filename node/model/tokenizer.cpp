#include "node/model/tokenizer.h"

#include <string_view>

#include "node/common/error.h"
#include "node/model/tokenizer_bpe.h"
#include "node/model/tokenizer_special.h"
#include "node/model/tokenizer_spm.h"

namespace tpnode {
namespace {

void validate(const TokenizerData& data) {
  const size_t n = data.tokens.size();
  TPNODE_CHECK(n > 0, "tokenizer has an empty vocabulary");
  TPNODE_CHECK(n <= static_cast<size_t>(INT32_MAX), "tokenizer vocabulary too large ({})", n);
  TPNODE_CHECK(data.token_types.empty() || data.token_types.size() == n,
               "tokenizer has {} token types for {} tokens", data.token_types.size(), n);
  const std::pair<const char*, int32_t> ids[] = {{"bos", data.bos_id},
                                                 {"eos", data.eos_id},
                                                 {"eot", data.eot_id},
                                                 {"unk", data.unk_id},
                                                 {"pad", data.pad_id}};
  for (const auto& [name, id] : ids) {
    TPNODE_CHECK(id >= -1 && id < static_cast<int64_t>(n),
                 "tokenizer {} token id {} is outside the vocabulary of {}", name, id, n);
  }
}

// Control tokens that end a turn in the chat formats we know, whatever eos says.
bool is_end_of_turn_text(std::string_view t) {
  static constexpr std::string_view kTexts[] = {"<|im_end|>", "<|eot_id|>",    "<|end_of_text|>",
                                                "</s>",       "<|endoftext|>", "<|eom_id|>",
                                                "<|end|>",    "<end_of_turn>", "<EOT>"};
  for (std::string_view k : kTexts) {
    if (t == k) return true;
  }
  return false;
}

}  // namespace

std::unique_ptr<Tokenizer> Tokenizer::create(const TokenizerData& data) {
  validate(data);
  if (data.model == "gpt2") return std::make_unique<BpeTokenizer>(data);
  if (data.model == "llama") return std::make_unique<SpmTokenizer>(data);
  TPNODE_THROW(ErrorKind::kUnsupported,
               "unsupported tokenizer model '{}' (tokenizer.ggml.model; supported: gpt2, llama)",
               data.model);
}

std::string Tokenizer::decode(std::span<const int32_t> ids, bool special) const {
  std::string out;
  bool first_text = true;
  for (int32_t id : ids) {
    std::string piece = token_to_piece(id, special);
    if (piece.empty()) continue;
    // SentencePiece drops the space its prefix added, once, at the start of the text.
    if (first_text && data_.model == "llama" && data_.add_space_prefix &&
        token_type_of(data_, id) != kTokenControl && piece[0] == ' ') {
      piece.erase(0, 1);
    }
    first_text = false;
    out += piece;
  }
  return out;
}

bool Tokenizer::is_eog(int32_t id) const {
  if (id < 0 || id >= n_vocab()) return false;
  if (id == data_.eos_id || id == data_.eot_id) return true;
  return token_type_of(data_, id) == kTokenControl && is_end_of_turn_text(data_.tokens[id]);
}

}  // namespace tpnode
