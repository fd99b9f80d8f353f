// StreamDecoder: whole characters only, whatever way the bytes are split over tokens.
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "node/model/tokenizer.h"
#include "tests/model/tokenizer_fixture.h"

namespace tpnode {
namespace {

bool is_valid_utf8(const std::string& s) {
  size_t i = 0;
  while (i < s.size()) {
    const auto c = static_cast<unsigned char>(s[i]);
    const size_t n = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
    if (n == 0 || i + n > s.size()) return false;
    for (size_t k = 1; k < n; ++k) {
      if ((static_cast<unsigned char>(s[i + k]) & 0xC0) != 0x80) return false;
    }
    i += n;
  }
  return true;
}

// A SentencePiece vocabulary with byte fallback: every non-ASCII character the model does not
// know arrives as one <0xXX> token per byte, the hardest case for streaming.
class StreamDecoderTest : public ::testing::Test {
 protected:
  void SetUp() override { tok_ = Tokenizer::create(test::load_vocab("spm_vocab.bin")); }

  int32_t byte_token(uint8_t b) const {
    const std::string name = fmt::format("<0x{:02X}>", b);
    const auto& tokens = tok_->data().tokens;
    for (size_t i = 0; i < tokens.size(); ++i) {
      if (tokens[i] == name) return static_cast<int32_t>(i);
    }
    ADD_FAILURE() << "no byte token " << name;
    return 0;
  }
  std::unique_ptr<Tokenizer> tok_;
};

TEST_F(StreamDecoderTest, HoldsBackSplitCharacters) {
  StreamDecoder dec(*tok_);
  const std::string emoji = "\xF0\x9F\x98\x80";  // U+1F600, four byte tokens
  for (size_t i = 0; i + 1 < emoji.size(); ++i) {
    EXPECT_EQ(dec.push(byte_token(static_cast<uint8_t>(emoji[i]))), "") << "byte " << i;
  }
  EXPECT_EQ(dec.push(byte_token(static_cast<uint8_t>(emoji.back()))), emoji);
  EXPECT_EQ(dec.flush(), "");
}

TEST_F(StreamDecoderTest, EveryChunkIsValidAndTheWholeIsExact) {
  const std::string text = "naïve 你好 😀 ok\n€ ǅ 👨‍👩‍👧";
  const auto ids = tok_->encode(text, false, false);
  StreamDecoder dec(*tok_);
  std::string streamed;
  size_t chunks = 0;
  for (int32_t id : ids) {
    const std::string chunk = dec.push(id);
    EXPECT_TRUE(is_valid_utf8(chunk)) << "chunk after token " << id;
    if (!chunk.empty()) ++chunks;
    streamed += chunk;
  }
  streamed += dec.flush();
  // The stream keeps the space the SentencePiece prefix put in front of the first word.
  EXPECT_EQ(streamed, " " + text);
  EXPECT_EQ(tok_->decode(ids), text);
  EXPECT_GT(chunks, 5u);
}

TEST_F(StreamDecoderTest, InvalidBytesBecomeReplacementCharacters) {
  StreamDecoder dec(*tok_);
  // A lead byte followed by ASCII: the lead can never complete.
  EXPECT_EQ(dec.push(byte_token(0xE4)), "");
  EXPECT_EQ(dec.push(byte_token('a')),
            "\xEF\xBF\xBD"
            "a");
  // A stray continuation byte is invalid at once.
  EXPECT_EQ(dec.push(byte_token(0x80)), "\xEF\xBF\xBD");
  // An unfinished sequence at the end is flushed as one U+FFFD per byte.
  EXPECT_EQ(dec.push(byte_token(0xF0)), "");
  EXPECT_EQ(dec.push(byte_token(0x9F)), "");
  EXPECT_EQ(dec.flush(), "\xEF\xBF\xBD\xEF\xBF\xBD");
  EXPECT_EQ(dec.flush(), "");
}

TEST(StreamDecoderSmolLM2, ByteLevelTokensSplitOverCharacters) {
  const TokenizerData d = test::load_vocab("smollm2_vocab.bin");
  auto tok = Tokenizer::create(d);
  // Rare CJK and emoji are spelled with byte-level tokens that cut characters apart.
  const std::string text = "龘靐齉 🦩🪿 <|im_end|>";
  const auto ids = tok->encode(text, false, true);
  StreamDecoder dec(*tok);
  std::string streamed;
  for (int32_t id : ids) {
    const std::string chunk = dec.push(id);
    EXPECT_TRUE(is_valid_utf8(chunk));
    streamed += chunk;
  }
  streamed += dec.flush();
  EXPECT_EQ(streamed, "龘靐齉 🦩🪿 ");  // the control token is not text
  EXPECT_TRUE(tok->is_eog(ids.back()));
}

}  // namespace
}  // namespace tpnode
