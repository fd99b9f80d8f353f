#include "node/model/tokenizer_special.h"

#include <algorithm>

namespace tpnode {

SpecialTokenMatcher::SpecialTokenMatcher(const TokenizerData& data) {
  for (size_t i = 0; i < data.tokens.size(); ++i) {
    const int32_t type = token_type_of(data, static_cast<int32_t>(i));
    if (type != kTokenControl && type != kTokenUserDefined) continue;
    const std::string& text = data.tokens[i];
    if (text.empty()) continue;
    by_first_byte_[static_cast<uint8_t>(text[0])].push_back(
        {text, static_cast<int32_t>(i), type == kTokenControl});
  }
  for (auto& bucket : by_first_byte_) {
    std::stable_sort(bucket.begin(), bucket.end(),
                     [](const Entry& a, const Entry& b) { return a.text.size() > b.text.size(); });
  }
}

std::vector<TextFragment> SpecialTokenMatcher::split(std::string_view text,
                                                     bool parse_special) const {
  std::vector<TextFragment> out;
  size_t plain_start = 0;
  size_t pos = 0;
  while (pos < text.size()) {
    const Entry* hit = nullptr;
    for (const Entry& e : by_first_byte_[static_cast<uint8_t>(text[pos])]) {
      if (e.control && !parse_special) continue;
      if (text.compare(pos, e.text.size(), e.text) == 0) {
        hit = &e;  // buckets are longest first
        break;
      }
    }
    if (hit == nullptr) {
      ++pos;
      continue;
    }
    if (plain_start < pos) out.push_back({text.substr(plain_start, pos - plain_start), -1});
    out.push_back({hit->text, hit->id});
    pos += hit->text.size();
    plain_start = pos;
  }
  if (plain_start < text.size()) out.push_back({text.substr(plain_start), -1});
  return out;
}

}  // namespace tpnode
