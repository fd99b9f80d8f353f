#include "node/model/tokenizer.h"
#include "node/model/unicode.h"

namespace tpnode {

std::string StreamDecoder::push(int32_t id) {
  pending_ += tok_.token_to_piece(id, /*special=*/false);
  const size_t ready = unicode::complete_prefix_length(pending_);
  // Bytes that can no longer become a character are final: they become U+FFFD now.
  std::string out = unicode::sanitize(std::string_view(pending_).substr(0, ready));
  pending_.erase(0, ready);
  return out;
}

std::string StreamDecoder::flush() {
  std::string out = unicode::sanitize(pending_);
  pending_.clear();
  return out;
}

}  // namespace tpnode
