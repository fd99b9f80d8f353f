#include "node/model/pretokenize.h"

#include <cstdint>
#include <utility>

#include "node/common/error.h"
#include "node/model/unicode.h"

namespace tpnode {
namespace {

using unicode::CodepointText;

struct Span {
  size_t begin;  // code point indices, [begin, end)
  size_t end;
};

// A matcher looks at code point `pos` of a piece [.., end) and returns how many code points
// the regex matches there (0: no alternative matches at pos). The piece end is the regex's
// end of input: lookaheads see nothing past it.
struct Cursor {
  const CodepointText& text;
  size_t end;

  uint32_t cp(size_t i) const { return i < end ? text.cps[i] : unicode::kInvalidCodepoint; }
  uint8_t flags(size_t i) const { return i < end ? unicode::flags_of(text.cps[i]) : 0; }
  bool in(size_t i) const { return i < end; }
  bool letter(size_t i) const { return flags(i) & unicode::kLetter; }
  bool number(size_t i) const { return flags(i) & unicode::kNumber; }
  bool space(size_t i) const { return flags(i) & unicode::kWhitespace; }
  // [^\s\p{L}\p{N}]: anything else, unassigned and invalid code points included.
  bool other(size_t i) const {
    return in(i) && !(flags(i) & (unicode::kWhitespace | unicode::kLetter | unicode::kNumber));
  }
  bool newline(size_t i) const { return cp(i) == '\r' || cp(i) == '\n'; }
};

uint32_t ascii_lower(uint32_t c) {
  if (c >= 'A' && c <= 'Z') return c + 32;
  if (c == 0x17F) return 's';  // LATIN SMALL LETTER LONG S case-folds to 's'
  return c;
}

// 's|'t|'re|'ve|'m|'ll|'d, optionally case-insensitive.
size_t match_contraction(const Cursor& c, size_t pos, bool ignore_case) {
  if (c.cp(pos) != '\'') return 0;
  auto at = [&](size_t i) { return ignore_case ? ascii_lower(c.cp(i)) : c.cp(i); };
  const uint32_t a = at(pos + 1);
  if (a == 's' || a == 't' || a == 'm' || a == 'd') return 2;
  const uint32_t b = at(pos + 2);
  if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l')) return 3;
  return 0;
}

// \s+(?!\S)|\s+ at a whitespace code point; `run` is the length of the whitespace run.
size_t match_trailing_space(const Cursor& c, size_t pos, size_t run) {
  if (!c.in(pos + run)) return run;  // the run reaches the end: (?!\S) holds for all of it
  if (run > 1) return run - 1;       // leave the last space to the word that follows
  return run;                        // \s+
}

size_t whitespace_run(const Cursor& c, size_t pos) {
  size_t n = 0;
  while (c.space(pos + n)) ++n;
  return n;
}

size_t match_gpt2(const Cursor& c, size_t pos) {
  if (size_t n = match_contraction(c, pos, /*ignore_case=*/false)) return n;
  const size_t q = pos + (c.cp(pos) == ' ' ? 1 : 0);
  size_t i = q;
  if (c.letter(q)) {
    while (c.letter(i)) ++i;
    return i - pos;
  }
  if (c.number(q)) {
    while (c.number(i)) ++i;
    return i - pos;
  }
  if (c.other(q)) {
    while (c.other(i)) ++i;
    return i - pos;
  }
  const size_t run = whitespace_run(c, pos);
  return run > 0 ? match_trailing_space(c, pos, run) : 1;
}

size_t match_llama3_family(const Cursor& c, size_t pos, size_t max_digits) {
  if (size_t n = match_contraction(c, pos, /*ignore_case=*/true)) return n;
  // [^\r\n\p{L}\p{N}]?\p{L}+
  size_t i = pos;
  if (!c.letter(i) && !c.number(i) && !c.newline(i) && c.letter(i + 1)) ++i;
  if (c.letter(i)) {
    while (c.letter(i)) ++i;
    return i - pos;
  }
  // \p{N}{1,max_digits}
  if (c.number(pos)) {
    i = pos;
    while (c.number(i) && i - pos < max_digits) ++i;
    return i - pos;
  }
  //  ?[^\s\p{L}\p{N}]+[\r\n]*
  const size_t q = pos + (c.cp(pos) == ' ' ? 1 : 0);
  if (c.other(q)) {
    i = q;
    while (c.other(i)) ++i;
    while (c.newline(i)) ++i;
    return i - pos;
  }
  const size_t run = whitespace_run(c, pos);
  if (run == 0) return 1;
  // \s*[\r\n]+ : up to the last newline inside the whitespace run.
  size_t last_newline_end = 0;
  for (size_t k = 0; k < run; ++k) {
    if (c.newline(pos + k)) last_newline_end = k + 1;
  }
  if (last_newline_end > 0) return last_newline_end;
  return match_trailing_space(c, pos, run);
}

// [\p{P}\$\+<=>\^~\|]+
size_t match_punct_run(const Cursor& c, size_t pos) {
  auto is_punct = [&](size_t i) {
    if (!c.in(i)) return false;
    const uint32_t cp = c.cp(i);
    return (c.flags(i) & unicode::kPunctuation) || cp == '$' || cp == '+' || cp == '<' ||
           cp == '=' || cp == '>' || cp == '^' || cp == '~' || cp == '|';
  };
  size_t i = pos;
  while (is_punct(i)) ++i;
  return i - pos;
}

size_t match_number_run(const Cursor& c, size_t pos) {
  size_t i = pos;
  while (c.number(i)) ++i;
  return i - pos;
}

size_t match_single_number(const Cursor& c, size_t pos) { return c.number(pos) ? 1 : 0; }

size_t match_three_ascii_digits(const Cursor& c, size_t pos) {
  for (size_t k = 0; k < 3; ++k) {
    const uint32_t cp = c.cp(pos + k);
    if (cp < '0' || cp > '9') return 0;
  }
  return 3;
}

enum class Stage { kGpt2, kLlama3, kQwen2, kSingleNumber, kNumberRun, kPunctRun, kThreeDigits };

size_t match_stage(Stage stage, const Cursor& c, size_t pos) {
  switch (stage) {
    case Stage::kGpt2:
      return match_gpt2(c, pos);
    case Stage::kLlama3:
      return match_llama3_family(c, pos, 3);
    case Stage::kQwen2:
      return match_llama3_family(c, pos, 1);
    case Stage::kSingleNumber:
      return match_single_number(c, pos);
    case Stage::kNumberRun:
      return match_number_run(c, pos);
    case Stage::kPunctRun:
      return match_punct_run(c, pos);
    case Stage::kThreeDigits:
      return match_three_ascii_digits(c, pos);
  }
  return 1;
}

// One Split(regex, behavior=isolated) over every piece: matches become pieces, and so does
// the text between matches.
std::vector<Span> apply_stage(Stage stage, const CodepointText& text, const std::vector<Span>& in) {
  std::vector<Span> out;
  out.reserve(in.size() * 2);
  for (const Span& piece : in) {
    const Cursor c{text, piece.end};
    size_t unmatched = piece.begin;
    size_t pos = piece.begin;
    while (pos < piece.end) {
      const size_t n = match_stage(stage, c, pos);
      if (n == 0) {
        ++pos;
        continue;
      }
      if (unmatched < pos) out.push_back({unmatched, pos});
      out.push_back({pos, pos + n});
      pos += n;
      unmatched = pos;
    }
    if (unmatched < piece.end) out.push_back({unmatched, piece.end});
  }
  return out;
}

std::vector<Stage> stages_of(PreTokenizer kind) {
  switch (kind) {
    case PreTokenizer::kGpt2:
      return {Stage::kGpt2};
    case PreTokenizer::kLlama3:
      return {Stage::kLlama3};
    case PreTokenizer::kQwen2:
      return {Stage::kQwen2};
    case PreTokenizer::kSmolLM:
      return {Stage::kSingleNumber, Stage::kGpt2};
    case PreTokenizer::kDefault:
      return {Stage::kPunctRun, Stage::kGpt2, Stage::kNumberRun, Stage::kThreeDigits};
  }
  return {Stage::kGpt2};
}

}  // namespace

PreTokenizer pre_tokenizer_from_name(std::string_view name) {
  static const std::pair<std::string_view, PreTokenizer> kNames[] = {
      {"default", PreTokenizer::kDefault},   {"gpt2", PreTokenizer::kGpt2},
      {"gpt-2", PreTokenizer::kGpt2},        {"mpt", PreTokenizer::kGpt2},
      {"olmo", PreTokenizer::kGpt2},         {"jais", PreTokenizer::kGpt2},
      {"llama3", PreTokenizer::kLlama3},     {"llama-bpe", PreTokenizer::kLlama3},
      {"llama-v3", PreTokenizer::kLlama3},   {"dbrx", PreTokenizer::kLlama3},
      {"smaug-bpe", PreTokenizer::kLlama3},  {"qwen2", PreTokenizer::kQwen2},
      {"stablelm2", PreTokenizer::kQwen2},   {"deepseek-r1-qwen", PreTokenizer::kQwen2},
      {"smollm", PreTokenizer::kSmolLM},     {"starcoder", PreTokenizer::kSmolLM},
      {"refact", PreTokenizer::kSmolLM},     {"command-r", PreTokenizer::kSmolLM},
      {"codeshell", PreTokenizer::kSmolLM},  {"exaone", PreTokenizer::kSmolLM},
      {"minerva-7b", PreTokenizer::kSmolLM},
  };
  for (const auto& [n, kind] : kNames) {
    if (n == name) return kind;
  }
  TPNODE_THROW(ErrorKind::kUnsupported, "unsupported BPE pre-tokenizer '{}' (tokenizer.ggml.pre)",
               name);
}

std::vector<std::string_view> pre_tokenize(PreTokenizer kind, std::string_view text) {
  const CodepointText cps = unicode::decode(text);
  std::vector<Span> pieces;
  if (!cps.cps.empty()) pieces.push_back({0, cps.cps.size()});
  for (Stage stage : stages_of(kind)) pieces = apply_stage(stage, cps, pieces);
  std::vector<std::string_view> out;
  out.reserve(pieces.size());
  for (const Span& s : pieces) {
    const size_t b = cps.offsets[s.begin];
    out.push_back(text.substr(b, cps.offsets[s.end] - b));
  }
  return out;
}

}  // namespace tpnode
