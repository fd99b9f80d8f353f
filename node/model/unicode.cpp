#include "node/model/unicode.h"

#include <algorithm>
#include <array>

namespace tpnode::unicode {
namespace {

// ASCII is by far the most common input; answer it without a search.
std::array<uint8_t, 128> make_ascii_flags() {
  std::array<uint8_t, 128> table{};
  for (size_t i = 0; i < kCodepointRangeCount && kCodepointRanges[i].first < 128; ++i) {
    const CodepointRange& r = kCodepointRanges[i];
    for (uint32_t cp = r.first; cp <= r.last && cp < 128; ++cp) table[cp] = r.flags;
  }
  return table;
}

const std::array<uint8_t, 128> kAsciiFlags = make_ascii_flags();

bool is_continuation(uint8_t b) { return (b & 0xC0) == 0x80; }

}  // namespace

uint8_t flags_of(uint32_t cp) {
  if (cp < 128) return kAsciiFlags[cp];
  if (cp > 0x10FFFF) return 0;
  const CodepointRange* begin = kCodepointRanges;
  const CodepointRange* end = kCodepointRanges + kCodepointRangeCount;
  // First range whose last code point is >= cp.
  const CodepointRange* it = std::lower_bound(
      begin, end, cp, [](const CodepointRange& r, uint32_t v) { return r.last < v; });
  if (it == end || it->first > cp) return 0;
  return it->flags;
}

size_t sequence_length(uint8_t lead) {
  if (lead < 0x80) return 1;
  if ((lead & 0xE0) == 0xC0) return 2;
  if ((lead & 0xF0) == 0xE0) return 3;
  if ((lead & 0xF8) == 0xF0) return 4;
  return 0;
}

uint32_t decode_one(std::string_view text, size_t pos, size_t& len) {
  const auto* s = reinterpret_cast<const uint8_t*>(text.data());
  const size_t n = text.size();
  len = 1;
  const uint8_t lead = s[pos];
  const size_t want = sequence_length(lead);
  if (want == 1) return lead;
  if (want == 0 || pos + want > n) return kInvalidCodepoint;
  uint32_t cp = lead & (0x7F >> want);
  for (size_t i = 1; i < want; ++i) {
    if (!is_continuation(s[pos + i])) return kInvalidCodepoint;
    cp = (cp << 6) | (s[pos + i] & 0x3F);
  }
  static constexpr uint32_t kMinForLength[5] = {0, 0, 0x80, 0x800, 0x10000};
  // Overlong forms, surrogates and values past U+10FFFF are not valid UTF-8.
  if (cp < kMinForLength[want] || (cp >= 0xD800 && cp <= 0xDFFF) || cp > 0x10FFFF) {
    return kInvalidCodepoint;
  }
  len = want;
  return cp;
}

void append_utf8(std::string& out, uint32_t cp) {
  if (cp < 0x80) {
    out.push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out.push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out.push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out.push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

std::string to_utf8(uint32_t cp) {
  std::string s;
  append_utf8(s, cp);
  return s;
}

CodepointText decode(std::string_view text) {
  CodepointText out;
  out.cps.reserve(text.size());
  out.offsets.reserve(text.size() + 1);
  size_t pos = 0;
  while (pos < text.size()) {
    size_t len = 1;
    out.offsets.push_back(pos);
    out.cps.push_back(decode_one(text, pos, len));
    pos += len;
  }
  out.offsets.push_back(text.size());
  return out;
}

size_t complete_prefix_length(std::string_view text) {
  const auto* s = reinterpret_cast<const uint8_t*>(text.data());
  const size_t n = text.size();
  // Only the last 3 bytes can belong to a sequence that is still incomplete.
  for (size_t back = 1; back <= 3 && back <= n; ++back) {
    const size_t i = n - back;
    if (is_continuation(s[i])) continue;
    const size_t want = sequence_length(s[i]);
    return (want > back) ? i : n;
  }
  return n;
}

std::string sanitize(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  size_t pos = 0;
  while (pos < text.size()) {
    size_t len = 1;
    const uint32_t cp = decode_one(text, pos, len);
    if (cp == kInvalidCodepoint) {
      append_utf8(out, kReplacementCharacter);
    } else {
      out.append(text.substr(pos, len));
    }
    pos += len;
  }
  return out;
}

}  // namespace tpnode::unicode
