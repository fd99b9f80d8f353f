#include "node/model/tokenizer_spm.h"

#include <algorithm>
#include <queue>

#include "node/common/error.h"
#include "node/model/unicode.h"

namespace tpnode {
namespace {

constexpr std::string_view kSpace = "\xE2\x96\x81";  // U+2581 LOWER ONE EIGHTH BLOCK
// What SentencePiece prints for the unknown token.
constexpr std::string_view kUnknownSurface = " \xE2\x81\x87 ";

std::string escape_spaces(std::string_view text) {
  std::string out;
  out.reserve(text.size() + text.size() / 4);
  for (char c : text) {
    if (c == ' ') {
      out.append(kSpace);
    } else {
      out.push_back(c);
    }
  }
  return out;
}

// "<0xAB>" -> 0xAB, or -1.
int parse_byte_token(std::string_view t) {
  if (t.size() != 6 || t.substr(0, 3) != "<0x" || t[5] != '>') return -1;
  int v = 0;
  for (size_t i = 3; i < 5; ++i) {
    const char c = t[i];
    int d;
    if (c >= '0' && c <= '9') {
      d = c - '0';
    } else if (c >= 'A' && c <= 'F') {
      d = c - 'A' + 10;
    } else if (c >= 'a' && c <= 'f') {
      d = c - 'a' + 10;
    } else {
      return -1;
    }
    v = v * 16 + d;
  }
  return v;
}

}  // namespace

SpmTokenizer::SpmTokenizer(const TokenizerData& data) : Tokenizer(data), specials_(data_) {
  TPNODE_CHECK(data_.scores.empty() || data_.scores.size() == data_.tokens.size(),
               "SentencePiece vocabulary has {} scores for {} tokens", data_.scores.size(),
               data_.tokens.size());
  std::fill(std::begin(byte_token_), std::end(byte_token_), -1);
  token_to_id_.reserve(data_.tokens.size());
  for (size_t i = 0; i < data_.tokens.size(); ++i) {
    const auto id = static_cast<int32_t>(i);
    token_to_id_.emplace(data_.tokens[i], id);
    if (token_type_of(data_, id) == kTokenByte) {
      const int b = parse_byte_token(data_.tokens[i]);
      if (b >= 0 && byte_token_[b] < 0) byte_token_[b] = id;
    }
  }
  merge_rank_.reserve(data_.merges.size());
  for (size_t rank = 0; rank < data_.merges.size(); ++rank) {
    const std::string& m = data_.merges[rank];
    const size_t sp = m.find(' ', 1);
    TPNODE_CHECK(sp != std::string::npos, "merge #{} '{}' has no space between its parts", rank, m);
    const int32_t left = mergeable_token(std::string_view(m).substr(0, sp));
    const int32_t right = mergeable_token(std::string_view(m).substr(sp + 1));
    if (left < 0 || right < 0) continue;
    const uint64_t key = (static_cast<uint64_t>(left) << 32) | static_cast<uint32_t>(right);
    merge_rank_.emplace(key, static_cast<int32_t>(rank));  // the first listing counts
  }
}

bool SpmTokenizer::merge_priority(std::string_view left, std::string_view right,
                                  float& priority) const {
  if (data_.merges.empty()) {
    std::string joined(left);
    joined.append(right);
    const int32_t id = mergeable_token(joined);
    if (id < 0) return false;
    priority = data_.scores.empty() ? 0.0f : data_.scores[id];
    return true;
  }
  const int32_t l = mergeable_token(left);
  const int32_t r = mergeable_token(right);
  if (l < 0 || r < 0) return false;
  auto it = merge_rank_.find((static_cast<uint64_t>(l) << 32) | static_cast<uint32_t>(r));
  if (it == merge_rank_.end()) return false;
  priority = -static_cast<float>(it->second);
  return true;
}

int32_t SpmTokenizer::mergeable_token(std::string_view text) const {
  auto it = token_to_id_.find(std::string(text));
  if (it == token_to_id_.end()) return -1;
  const int32_t type = token_type_of(data_, it->second);
  if (type == kTokenControl || type == kTokenUnknown || type == kTokenByte) return -1;
  return it->second;
}

void SpmTokenizer::encode_escaped(const std::string& text, std::vector<int32_t>& out) const {
  struct Symbol {
    size_t begin;  // byte range in `text`
    size_t len;    // 0 once merged into its left neighbour
    int32_t prev;
    int32_t next;
  };
  std::vector<Symbol> syms;
  for (size_t pos = 0; pos < text.size();) {
    size_t len = unicode::sequence_length(static_cast<uint8_t>(text[pos]));
    len = std::min(std::max<size_t>(len, 1), text.size() - pos);
    const auto idx = static_cast<int32_t>(syms.size());
    syms.push_back({pos, len, idx - 1, idx + 1});
    pos += len;
  }
  if (syms.empty()) return;
  syms.back().next = -1;

  struct Bigram {
    float score;
    int32_t left;
    int32_t right;
    size_t size;
    // Highest score first; on ties the leftmost pair.
    bool operator<(const Bigram& o) const {
      return score != o.score ? score < o.score : left > o.left;
    }
  };
  std::priority_queue<Bigram> queue;
  const std::string_view view(text);
  auto consider = [&](int32_t left, int32_t right) {
    if (left < 0 || right < 0) return;
    float priority = 0.0f;
    if (!merge_priority(view.substr(syms[left].begin, syms[left].len),
                        view.substr(syms[right].begin, syms[right].len), priority)) {
      return;
    }
    queue.push({priority, left, right, syms[left].len + syms[right].len});
  };
  for (int32_t i = 1; i < static_cast<int32_t>(syms.size()); ++i) consider(i - 1, i);

  while (!queue.empty()) {
    const Bigram bg = queue.top();
    queue.pop();
    Symbol& l = syms[bg.left];
    Symbol& r = syms[bg.right];
    // Stale: a side was merged away, or grew, since this pair was queued.
    if (l.len == 0 || r.len == 0 || l.len + r.len != bg.size || l.next != bg.right) continue;
    l.len += r.len;
    r.len = 0;
    l.next = r.next;
    if (r.next >= 0) syms[r.next].prev = bg.left;
    consider(l.prev, bg.left);
    consider(bg.left, l.next);
  }

  for (int32_t i = 0; i >= 0; i = syms[i].next) {
    const std::string_view piece = std::string_view(text).substr(syms[i].begin, syms[i].len);
    const int32_t id = mergeable_token(piece);
    if (id >= 0) {
      out.push_back(id);
      continue;
    }
    for (unsigned char b : piece) {
      const int32_t byte_id = byte_token_[b];
      TPNODE_CHECK(byte_id >= 0 || data_.unk_id >= 0,
                   "SentencePiece vocabulary has neither a byte token for 0x{:02X} nor unk",
                   static_cast<unsigned>(b));
      if (byte_id >= 0) {
        out.push_back(byte_id);
      } else {
        // Without byte fallback a whole unknown character is one unk.
        out.push_back(data_.unk_id);
        break;
      }
    }
  }
}

std::vector<int32_t> SpmTokenizer::encode(std::string_view text, bool add_special,
                                          bool parse_special) const {
  std::vector<int32_t> out;
  if (add_special && data_.add_bos && data_.bos_id >= 0) out.push_back(data_.bos_id);
  // As llama.cpp: the text at the start and right after a special token gets the space prefix.
  bool after_special = true;
  for (const TextFragment& frag : specials_.split(text, parse_special)) {
    if (frag.token >= 0) {
      out.push_back(frag.token);
      after_special = true;
      continue;
    }
    std::string plain;
    if (data_.add_space_prefix && after_special) plain.push_back(' ');
    plain.append(frag.text);
    encode_escaped(escape_spaces(plain), out);
    after_special = false;
  }
  if (add_special && data_.add_eos && data_.eos_id >= 0) out.push_back(data_.eos_id);
  return out;
}

std::string SpmTokenizer::token_to_piece(int32_t id, bool special) const {
  TPNODE_CHECK(id >= 0 && id < n_vocab(), "token id {} out of range [0, {})", id, n_vocab());
  const std::string& text = data_.tokens[id];
  switch (token_type_of(data_, id)) {
    case kTokenControl:
      return special ? text : std::string();
    case kTokenUnknown:
      return special ? text : std::string(kUnknownSurface);
    case kTokenByte: {
      const int b = parse_byte_token(text);
      if (b >= 0) return std::string(1, static_cast<char>(b));
      break;
    }
    default:
      break;
  }
  std::string out;
  out.reserve(text.size());
  for (size_t pos = 0; pos < text.size();) {
    if (text.compare(pos, kSpace.size(), kSpace) == 0) {
      out.push_back(' ');
      pos += kSpace.size();
    } else {
      out.push_back(text[pos++]);
    }
  }
  return out;
}

}  // namespace tpnode
