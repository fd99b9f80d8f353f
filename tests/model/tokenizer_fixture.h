// Loading the tokenizer fixtures of tests/fixtures/tokenizer/ (made by
// tools/make_tokenizer_fixtures.py, which documents the .bin layout).
#pragma once

#include <boost/json.hpp>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "node/model/model_file.h"

namespace tpnode::test {

inline std::string fixture_path(const std::string& name) {
  return std::string(TPNODE_SOURCE_DIR) + "/tests/fixtures/tokenizer/" + name;
}

inline std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot open fixture " + path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

inline boost::json::value read_json(const std::string& name) {
  return boost::json::parse(read_file(fixture_path(name)));
}

class VocabReader {
 public:
  explicit VocabReader(std::string bytes) : b_(std::move(bytes)) {}

  uint64_t varint() {
    uint64_t v = 0;
    for (int shift = 0;; shift += 7) {
      const uint8_t byte = next();
      v |= static_cast<uint64_t>(byte & 0x7F) << shift;
      if (!(byte & 0x80)) return v;
    }
  }
  std::string str() {
    const uint64_t n = varint();
    need(n);
    std::string s = b_.substr(pos_, n);
    pos_ += n;
    return s;
  }
  template <typename T>
  T pod() {
    need(sizeof(T));
    T v;
    std::memcpy(&v, b_.data() + pos_, sizeof(T));
    pos_ += sizeof(T);
    return v;
  }
  uint8_t next() {
    need(1);
    return static_cast<uint8_t>(b_[pos_++]);
  }
  bool done() const { return pos_ == b_.size(); }

 private:
  void need(uint64_t n) const {
    if (n > b_.size() - pos_) throw std::runtime_error("truncated vocabulary fixture");
  }
  std::string b_;
  size_t pos_ = 0;
};

inline TokenizerData load_vocab(const std::string& name) {
  VocabReader r(read_file(fixture_path(name)));
  for (char c : std::string("TPVOCAB1")) {
    if (r.next() != static_cast<uint8_t>(c)) throw std::runtime_error("bad vocabulary magic");
  }
  TokenizerData d;
  d.model = r.str();
  d.pre = r.str();
  d.chat_template = r.str();
  d.tokens.resize(r.varint());
  for (auto& t : d.tokens) t = r.str();
  d.token_types.resize(d.tokens.size());
  for (auto& t : d.token_types) t = r.next();
  d.scores.resize(r.varint());
  for (auto& s : d.scores) s = r.pod<float>();
  d.merges.resize(r.varint());
  for (auto& m : d.merges) {
    const uint64_t a = r.varint();
    const uint64_t b = r.varint();
    m = d.tokens.at(a) + " " + d.tokens.at(b);
  }
  d.bos_id = r.pod<int32_t>();
  d.eos_id = r.pod<int32_t>();
  d.eot_id = r.pod<int32_t>();
  d.unk_id = r.pod<int32_t>();
  d.pad_id = r.pod<int32_t>();
  d.add_bos = r.next() != 0;
  d.add_eos = r.next() != 0;
  d.add_space_prefix = r.next() != 0;
  if (!r.done()) throw std::runtime_error("trailing bytes in vocabulary fixture");
  return d;
}

inline std::vector<int32_t> ids_of(const boost::json::value& v) {
  std::vector<int32_t> out;
  for (const auto& x : v.as_array()) out.push_back(static_cast<int32_t>(x.to_number<int64_t>()));
  return out;
}

inline std::string str_of(const boost::json::value& v) {
  const auto& s = v.as_string();
  return std::string(s.data(), s.size());
}

}  // namespace tpnode::test
