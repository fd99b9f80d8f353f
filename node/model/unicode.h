// UTF-8 decoding/encoding and code point categories for the tokenizers.
// Decoding never throws: a byte that does not start a valid sequence becomes one
// kInvalidCodepoint of length 1, so byte-level tokenizers still see every input byte.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "node/model/unicode_data.h"

namespace tpnode::unicode {

inline constexpr uint32_t kInvalidCodepoint = 0xFFFFFFFFu;
inline constexpr uint32_t kReplacementCharacter = 0xFFFD;

// Category bits (CodepointFlag) of a code point; 0 for unassigned and invalid ones.
uint8_t flags_of(uint32_t cp);
inline bool is_letter(uint32_t cp) { return flags_of(cp) & kLetter; }
inline bool is_number(uint32_t cp) { return flags_of(cp) & kNumber; }
inline bool is_whitespace(uint32_t cp) { return flags_of(cp) & kWhitespace; }
inline bool is_punctuation(uint32_t cp) { return flags_of(cp) & kPunctuation; }

// Decodes the code point at text[pos]; sets `len` to the bytes it used (>= 1).
uint32_t decode_one(std::string_view text, size_t pos, size_t& len);
void append_utf8(std::string& out, uint32_t cp);
std::string to_utf8(uint32_t cp);

// Length the lead byte announces (1..4), or 0 for a continuation/invalid lead byte.
size_t sequence_length(uint8_t lead);

// A text as code points, with the byte offset where each starts (offsets.size() == cps.size()+1).
struct CodepointText {
  std::vector<uint32_t> cps;
  std::vector<size_t> offsets;
};
CodepointText decode(std::string_view text);

// Bytes of `text` that end on a complete character: an incomplete sequence at the very end
// (which more bytes could still complete) is left out. Invalid bytes before it count as whole.
size_t complete_prefix_length(std::string_view text);

// Replaces every invalid byte with U+FFFD (the whole text is taken as final).
std::string sanitize(std::string_view text);

}  // namespace tpnode::unicode
