// UTF-8 helpers for streaming text: tokens can end in the middle of a character, and a
// reply must never carry half of one (JSON and SSE clients reject invalid UTF-8).
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

namespace tpnode::coord {

// Length of the longest prefix of `s` that does not end inside an incomplete multi-byte
// character. Invalid bytes count as complete (sanitize() replaces them later).
size_t utf8_complete_prefix(std::string_view s);

// `s` with every invalid or truncated sequence replaced by U+FFFD.
std::string utf8_sanitize(std::string_view s);

}  // namespace tpnode::coord
