#include "coordinator/utf8.h"

namespace tpnode::coord {
namespace {

// Expected length of a sequence starting with lead byte `c`; 0 when `c` cannot start one.
int sequence_length(unsigned char c) {
  if (c < 0x80) return 1;
  if (c >= 0xC2 && c <= 0xDF) return 2;
  if (c >= 0xE0 && c <= 0xEF) return 3;
  if (c >= 0xF0 && c <= 0xF4) return 4;
  return 0;
}

bool is_continuation(unsigned char c) { return (c & 0xC0) == 0x80; }

// Length of the valid sequence at s[i], or 0 when it is invalid or cut short.
size_t valid_sequence_at(std::string_view s, size_t i) {
  const auto lead = static_cast<unsigned char>(s[i]);
  const int n = sequence_length(lead);
  if (n == 0 || i + n > s.size()) return 0;
  for (int k = 1; k < n; ++k) {
    if (!is_continuation(static_cast<unsigned char>(s[i + k]))) return 0;
  }
  if (n >= 3) {
    // Overlong forms, surrogates and values past U+10FFFF.
    const auto second = static_cast<unsigned char>(s[i + 1]);
    if (lead == 0xE0 && second < 0xA0) return 0;
    if (lead == 0xED && second > 0x9F) return 0;
    if (lead == 0xF0 && second < 0x90) return 0;
    if (lead == 0xF4 && second > 0x8F) return 0;
  }
  return static_cast<size_t>(n);
}

}  // namespace

size_t utf8_complete_prefix(std::string_view s) {
  // Only the last three bytes can belong to an unfinished character.
  const size_t start = s.size() > 3 ? s.size() - 3 : 0;
  for (size_t i = s.size(); i > start; --i) {
    const auto c = static_cast<unsigned char>(s[i - 1]);
    if (is_continuation(c)) continue;
    const int n = sequence_length(c);
    if (n > 1 && (i - 1) + n > s.size()) {
      // A lead byte whose continuation has not arrived yet: hold it back, but only if the
      // bytes so far are themselves continuations (otherwise it is just invalid).
      bool all_cont = true;
      for (size_t k = i; k < s.size(); ++k) {
        all_cont = all_cont && is_continuation(static_cast<unsigned char>(s[k]));
      }
      return all_cont ? i - 1 : s.size();
    }
    return s.size();
  }
  return s.size();
}

std::string utf8_sanitize(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  size_t i = 0;
  while (i < s.size()) {
    const size_t n = valid_sequence_at(s, i);
    if (n == 0) {
      out += "\xEF\xBF\xBD";
      ++i;
    } else {
      out.append(s.substr(i, n));
      i += n;
    }
  }
  return out;
}

}  // namespace tpnode::coord
