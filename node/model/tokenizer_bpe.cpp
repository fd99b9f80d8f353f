#include "node/model/tokenizer_bpe.h"

#include <array>
#include <queue>

#include "node/common/error.h"
#include "node/model/unicode.h"

namespace tpnode {
namespace {

// Printable bytes map to themselves; the other 68 take code points 256.. in byte order.
struct ByteAlphabet {
  std::array<uint32_t, 256> to_cp{};
  std::array<int16_t, 512> from_cp{};  // every mapped code point is < 512

  ByteAlphabet() {
    from_cp.fill(-1);
    uint32_t next = 256;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
      to_cp[b] = printable ? static_cast<uint32_t>(b) : next++;
      from_cp[to_cp[b]] = static_cast<int16_t>(b);
    }
  }
};

const ByteAlphabet& alphabet() {
  static const ByteAlphabet kAlphabet;
  return kAlphabet;
}

uint64_t pair_key(int32_t left, int32_t right) {
  return (static_cast<uint64_t>(static_cast<uint32_t>(left)) << 32) | static_cast<uint32_t>(right);
}

}  // namespace

uint32_t byte_to_codepoint(uint8_t b) { return alphabet().to_cp[b]; }

int32_t codepoint_to_byte(uint32_t cp) { return cp < 512 ? alphabet().from_cp[cp] : -1; }

BpeTokenizer::BpeTokenizer(const TokenizerData& data)
    : Tokenizer(data),
      pre_(pre_tokenizer_from_name(data.pre.empty() ? "default" : data.pre)),
      specials_(data_) {
  // Llama 3's tokenizer.json sets ignore_merges; llama.cpp does the same for its pre types.
  ignore_merges_ = pre_ == PreTokenizer::kLlama3;
  token_to_id_.reserve(data_.tokens.size());
  for (size_t i = 0; i < data_.tokens.size(); ++i) {
    // The first of duplicate spellings wins, as in a Hugging Face vocab built from the same list.
    token_to_id_.emplace(data_.tokens[i], static_cast<int32_t>(i));
  }
  for (int b = 0; b < 256; ++b) {
    auto it = token_to_id_.find(unicode::to_utf8(byte_to_codepoint(static_cast<uint8_t>(b))));
    byte_token_[b] = it == token_to_id_.end() ? -1 : it->second;
  }
  merges_.reserve(data_.merges.size());
  for (size_t rank = 0; rank < data_.merges.size(); ++rank) {
    const std::string& m = data_.merges[rank];
    // A token never starts with the separating space, so the first space after byte 0 splits.
    const size_t sp = m.find(' ', 1);
    TPNODE_CHECK(sp != std::string::npos, "BPE merge #{} '{}' has no space between its parts", rank,
                 m);
    auto left = token_to_id_.find(m.substr(0, sp));
    auto right = token_to_id_.find(m.substr(sp + 1));
    auto result = token_to_id_.find(m.substr(0, sp) + m.substr(sp + 1));
    if (left == token_to_id_.end() || right == token_to_id_.end() || result == token_to_id_.end()) {
      continue;  // a merge whose parts are not tokens can never apply
    }
    merges_.emplace(pair_key(left->second, right->second),
                    Merge{static_cast<int32_t>(rank), result->second});
  }
}

const BpeTokenizer::Merge* BpeTokenizer::find_merge(int32_t left, int32_t right) const {
  auto it = merges_.find(pair_key(left, right));
  return it == merges_.end() ? nullptr : &it->second;
}

void BpeTokenizer::encode_piece(std::string_view piece, std::vector<int32_t>& out) const {
  if (piece.empty()) return;
  if (ignore_merges_ || piece.size() == 1) {
    std::string spelled;
    for (unsigned char b : piece) unicode::append_utf8(spelled, byte_to_codepoint(b));
    auto it = token_to_id_.find(spelled);
    if (it != token_to_id_.end()) {
      out.push_back(it->second);
      return;
    }
  }
  // Symbols in a doubly linked list; candidate merges in a min-heap by (rank, position).
  struct Symbol {
    int32_t id;
    int32_t prev;
    int32_t next;
  };
  std::vector<Symbol> syms;
  syms.reserve(piece.size());
  for (size_t i = 0; i < piece.size(); ++i) {
    const int32_t id = byte_token_[static_cast<uint8_t>(piece[i])];
    TPNODE_CHECK(id >= 0, "BPE vocabulary has no token for byte 0x{:02X}",
                 static_cast<unsigned>(static_cast<uint8_t>(piece[i])));
    syms.push_back({id, static_cast<int32_t>(i) - 1, static_cast<int32_t>(i) + 1});
  }
  syms.back().next = -1;

  struct Candidate {
    int32_t rank;
    int32_t left;  // symbol index
    int32_t left_id;
    int32_t right_id;
    bool operator>(const Candidate& o) const {
      return rank != o.rank ? rank > o.rank : left > o.left;
    }
  };
  std::priority_queue<Candidate, std::vector<Candidate>, std::greater<>> queue;
  auto consider = [&](int32_t left) {
    if (left < 0 || syms[left].next < 0) return;
    const Symbol& a = syms[left];
    const Symbol& b = syms[a.next];
    if (const Merge* m = find_merge(a.id, b.id)) queue.push({m->rank, left, a.id, b.id});
  };
  for (int32_t i = 0; i + 1 < static_cast<int32_t>(syms.size()); ++i) consider(i);

  while (!queue.empty()) {
    const Candidate c = queue.top();
    queue.pop();
    Symbol& a = syms[c.left];
    // Stale: one side was merged away or changed since this candidate was queued.
    if (a.id != c.left_id || a.next < 0 || syms[a.next].id != c.right_id) continue;
    Symbol& b = syms[a.next];
    a.id = find_merge(c.left_id, c.right_id)->result;
    a.next = b.next;
    if (b.next >= 0) syms[b.next].prev = c.left;
    b.id = -1;
    consider(a.prev);
    consider(c.left);
  }
  for (int32_t i = 0; i >= 0; i = syms[i].next) out.push_back(syms[i].id);
}

std::vector<int32_t> BpeTokenizer::encode(std::string_view text, bool add_special,
                                          bool parse_special) const {
  std::vector<int32_t> out;
  if (add_special && data_.add_bos && data_.bos_id >= 0) out.push_back(data_.bos_id);
  for (const TextFragment& frag : specials_.split(text, parse_special)) {
    if (frag.token >= 0) {
      out.push_back(frag.token);
      continue;
    }
    for (std::string_view piece : pre_tokenize(pre_, frag.text)) encode_piece(piece, out);
  }
  if (add_special && data_.add_eos && data_.eos_id >= 0) out.push_back(data_.eos_id);
  return out;
}

std::string BpeTokenizer::token_to_piece(int32_t id, bool special) const {
  TPNODE_CHECK(id >= 0 && id < n_vocab(), "token id {} out of range [0, {})", id, n_vocab());
  const std::string& text = data_.tokens[id];
  const int32_t type = token_type_of(data_, id);
  if (type == kTokenControl || type == kTokenUnknown) return special ? text : std::string();
  if (type == kTokenUserDefined) return text;  // added tokens are stored as plain text
  std::string out;
  out.reserve(text.size());
  size_t pos = 0;
  while (pos < text.size()) {
    size_t len = 1;
    const uint32_t cp = unicode::decode_one(text, pos, len);
    const int32_t b = cp == unicode::kInvalidCodepoint ? -1 : codepoint_to_byte(cp);
    if (b >= 0) {
      out.push_back(static_cast<char>(b));
    } else {
      out.append(text, pos, len);  // not in the byte alphabet: keep as written
    }
    pos += len;
  }
  return out;
}

}  // namespace tpnode
