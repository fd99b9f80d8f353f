// Pre-tokenizers of byte-level BPE vocabularies: the regex splits of GPT-2, Llama 3, Qwen2 and
// SmolLM (GPT-2 with digits split one by one), written as hand-coded matchers over Unicode
// categories. Each follows the Hugging Face tokenizers regex exactly (leftmost match, first
// alternative that matches, greedy with backtracking), including the text no alternative
// matches, which stays a piece of its own.
#pragma once

#include <string_view>
#include <vector>

namespace tpnode {

enum class PreTokenizer {
  kGpt2,     // 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
  kLlama3,   // (?i:'s|...)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|...
  kQwen2,    // as kLlama3 with \p{N} (one digit per piece)
  kSmolLM,   // \p{N} isolated, then kGpt2 (also StarCoder, Refact, Command-R)
  kDefault,  // llama.cpp's fallback: punctuation runs, kGpt2, \p{N}+, [0-9]{3}
};

// Maps tokenizer.ggml.pre (or our own names) to a pre-tokenizer; throws tpnode::Error
// (kUnsupported) for a name we do not implement.
PreTokenizer pre_tokenizer_from_name(std::string_view name);

// Splits `text` into the pieces BPE merges within. The pieces are views into `text`, in
// order, and together cover it exactly.
std::vector<std::string_view> pre_tokenize(PreTokenizer kind, std::string_view text);

}  // namespace tpnode
