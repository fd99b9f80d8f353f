// The generated code point category table (node/model/unicode_data.cpp, written by
// tools/make_unicode_tables.py). Use node/model/unicode.h rather than this directly.
#pragma once

#include <cstddef>
#include <cstdint>

namespace tpnode::unicode {

// Bits of CodepointRange::flags. Letter/number/punctuation/mark/symbol/separator are the
// general category's major class; whitespace is the White_Space property (regex \s).
enum CodepointFlag : uint8_t {
  kLetter = 1 << 0,
  kNumber = 1 << 1,
  kPunctuation = 1 << 2,
  kMark = 1 << 3,
  kSymbol = 1 << 4,
  kSeparator = 1 << 5,
  kControl = 1 << 6,
  kWhitespace = 1 << 7,
};

struct CodepointRange {
  uint32_t first;
  uint32_t last;  // inclusive
  uint8_t flags;
};

// Sorted, non-overlapping; code points in no range are unassigned (flags 0).
extern const CodepointRange kCodepointRanges[];
extern const size_t kCodepointRangeCount;
extern const char kUnicodeVersion[];

}  // namespace tpnode::unicode
