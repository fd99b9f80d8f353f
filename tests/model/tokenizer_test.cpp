// Tokenizers against independent references: the default model's vocabulary with Hugging Face
// `tokenizers` ids, and a small SentencePiece model with sentencepiece's own ids (fixtures made by
// tools/make_tokenizer_fixtures.py).
#include "node/model/tokenizer.h"

#include <gtest/gtest.h>

#include <chrono>
#include <filesystem>
#include <string>
#include <vector>

#include "node/common/error.h"
#include "node/model/pretokenize.h"
#include "node/model/unicode.h"
#include "tests/model/tokenizer_fixture.h"

namespace tpnode {
namespace {

using test::ids_of;
using test::str_of;

std::string show(const std::vector<int32_t>& ids) {
  std::string s;
  for (int32_t id : ids) s += std::to_string(id) + " ";
  return s;
}

class SmolLM2Tokenizer : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    data_ = new TokenizerData(test::load_vocab("smollm2_vocab.bin"));
    cases_ = new boost::json::value(test::read_json("smollm2_cases.json"));
  }
  static void TearDownTestSuite() {
    delete data_;
    delete cases_;
  }
  // Checks every case's ids for one pre-tokenizer; returns the number of cases checked.
  static size_t check_pre(const std::string& pre, const char* key, bool parse_special) {
    TokenizerData d = *data_;
    d.pre = pre;
    auto tok = Tokenizer::create(d);
    size_t checked = 0;
    for (const auto& c : cases_->at("cases").as_array()) {
      const auto& obj = c.as_object();
      if (!obj.contains(key)) continue;
      const std::string text = str_of(obj.at("text"));
      const auto expected = ids_of(obj.at(key));
      const auto got = tok->encode(text, /*add_special=*/false, parse_special);
      EXPECT_EQ(got, expected) << "pre=" << pre << " text='" << text << "'\n got: " << show(got)
                               << "\nwant: " << show(expected);
      ++checked;
    }
    return checked;
  }
  static TokenizerData* data_;
  static boost::json::value* cases_;
};

TokenizerData* SmolLM2Tokenizer::data_ = nullptr;
boost::json::value* SmolLM2Tokenizer::cases_ = nullptr;

TEST_F(SmolLM2Tokenizer, VocabularyLooksLikeTheDefaultModel) {
  EXPECT_EQ(data_->model, "gpt2");
  EXPECT_EQ(data_->pre, "smollm");
  EXPECT_EQ(data_->tokens.size(), 49152u);
  EXPECT_EQ(data_->merges.size(), 48900u);
  EXPECT_EQ(data_->tokens[1], "<|im_start|>");
  EXPECT_GE(cases_->at("cases").as_array().size(), 250u);
}

TEST_F(SmolLM2Tokenizer, MatchesHuggingFaceWithItsOwnPreTokenizer) {
  EXPECT_GE(check_pre("smollm", "smollm", /*parse_special=*/true), 200u);
}

TEST_F(SmolLM2Tokenizer, SpecialTextStaysTextWithoutParseSpecial) {
  EXPECT_GE(check_pre("smollm", "smollm_plain", /*parse_special=*/false), 20u);
}

TEST_F(SmolLM2Tokenizer, Gpt2PreTokenizerMatchesHuggingFace) {
  EXPECT_GE(check_pre("gpt2", "gpt2", true), 200u);
}

TEST_F(SmolLM2Tokenizer, Llama3PreTokenizerMatchesHuggingFace) {
  EXPECT_GE(check_pre("llama3", "llama3", true), 200u);
}

TEST_F(SmolLM2Tokenizer, Qwen2PreTokenizerMatchesHuggingFace) {
  EXPECT_GE(check_pre("qwen2", "qwen2", true), 200u);
}

TEST_F(SmolLM2Tokenizer, LlamaCppDefaultPreTokenizerMatchesItsRegexes) {
  EXPECT_GE(check_pre("default", "default", true), 200u);
}

// The split itself, independent of which pieces the vocabulary happens to merge.
TEST_F(SmolLM2Tokenizer, PreTokenizerPiecesMatchHuggingFace) {
  const std::pair<const char*, PreTokenizer> kinds[] = {{"smollm", PreTokenizer::kSmolLM},
                                                        {"gpt2", PreTokenizer::kGpt2},
                                                        {"llama3", PreTokenizer::kLlama3},
                                                        {"qwen2", PreTokenizer::kQwen2},
                                                        {"default", PreTokenizer::kDefault}};
  for (const auto& [name, kind] : kinds) {
    size_t checked = 0;
    const std::string key = std::string(name) + "_pieces";
    for (const auto& c : cases_->at("cases").as_array()) {
      const auto& obj = c.as_object();
      if (!obj.contains(key)) continue;
      const std::string text = str_of(obj.at("text"));
      std::vector<std::string> expected;
      for (const auto& p : obj.at(key).as_array()) expected.push_back(str_of(p));
      std::vector<std::string> got;
      for (auto p : pre_tokenize(kind, text)) got.emplace_back(p);
      EXPECT_EQ(got, expected) << name << " text='" << text << "'";
      ++checked;
    }
    EXPECT_GE(checked, 200u) << name;
  }
}

TEST_F(SmolLM2Tokenizer, DecodeInvertsEncode) {
  auto tok = Tokenizer::create(*data_);
  for (const auto& c : cases_->at("cases").as_array()) {
    const std::string text = str_of(c.as_object().at("text"));
    const auto ids = tok->encode(text, false, true);
    EXPECT_EQ(tok->decode(ids, /*special=*/true), text);
  }
  // Without `special`, control tokens vanish from the text.
  const auto ids = tok->encode("<|im_start|>user\nHi<|im_end|>", false, true);
  EXPECT_EQ(tok->decode(ids, false), "user\nHi");
}

TEST_F(SmolLM2Tokenizer, SpecialIdsAndEndOfGeneration) {
  auto tok = Tokenizer::create(*data_);
  EXPECT_EQ(tok->n_vocab(), 49152);
  EXPECT_EQ(tok->bos(), 1);
  EXPECT_EQ(tok->eos(), 2);
  EXPECT_TRUE(tok->is_eog(2));   // <|im_end|>
  EXPECT_TRUE(tok->is_eog(0));   // <|endoftext|>
  EXPECT_FALSE(tok->is_eog(1));  // <|im_start|>
  EXPECT_FALSE(tok->is_eog(tok->encode("Hello", false, false).at(0)));
  EXPECT_FALSE(tok->is_eog(-1));
  EXPECT_EQ(tok->token_to_piece(1, false), "");
  EXPECT_EQ(tok->token_to_piece(1, true), "<|im_start|>");
  // The file says add_bos = false: add_special adds nothing.
  EXPECT_EQ(tok->encode("Hi", true, false), tok->encode("Hi", false, false));
  EXPECT_THROW(tok->token_to_piece(49152), Error);
}

TEST_F(SmolLM2Tokenizer, AddsBosAndEosWhenAsked) {
  TokenizerData d = *data_;
  d.add_bos = true;
  d.add_eos = true;
  auto tok = Tokenizer::create(d);
  const auto plain = tok->encode("Hello world", false, false);
  const auto with = tok->encode("Hello world", true, false);
  ASSERT_EQ(with.size(), plain.size() + 2);
  EXPECT_EQ(with.front(), 1);
  EXPECT_EQ(with.back(), 2);
}

TEST_F(SmolLM2Tokenizer, LongInputIsFastAndInvertible) {
  auto tok = Tokenizer::create(*data_);
  std::string text;
  for (int i = 0; i < 400; ++i) {
    text += "Paragraph " + std::to_string(i) + ": the quick brown fox, 你好 😀 it's   fine.\n\t";
  }
  text += std::string(20000, 'x') + std::string(5000, ' ') + "end";
  const auto start = std::chrono::steady_clock::now();
  const auto ids = tok->encode(text, false, false);
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EXPECT_EQ(tok->decode(ids), text);
  EXPECT_LT(seconds, 2.0) << "encoding " << text.size() << " bytes took " << seconds << " s";
}

// The same vocabulary read from the model file itself, when it is present.
TEST_F(SmolLM2Tokenizer, DefaultModelFileGivesTheSameTokenizer) {
  const std::string path =
      std::string(TPNODE_SOURCE_DIR) + "/models/SmolLM2-135M-Instruct.Q4_1.gguf";
  if (!std::filesystem::exists(path)) GTEST_SKIP() << "default model not present at " << path;
  const auto file = ModelFile::open(path);
  const TokenizerData& d = file->tokenizer();
  EXPECT_EQ(d.tokens, data_->tokens);
  EXPECT_EQ(d.merges, data_->merges);
  EXPECT_EQ(d.token_types, data_->token_types);
  EXPECT_EQ(d.pre, "smollm");
  EXPECT_EQ(d.chat_template, data_->chat_template);
  auto tok = Tokenizer::create(d);
  size_t checked = 0;
  for (const auto& c : cases_->at("cases").as_array()) {
    const auto& obj = c.as_object();
    EXPECT_EQ(tok->encode(str_of(obj.at("text")), false, true), ids_of(obj.at("smollm")));
    ++checked;
  }
  EXPECT_GE(checked, 200u);
}

TEST(Tokenizer, RejectsUnknownModelsAndPreTokenizers) {
  TokenizerData d;
  d.tokens = {"a", "b"};
  d.model = "wordpiece";
  EXPECT_THROW(Tokenizer::create(d), Error);
  d.model = "gpt2";
  d.pre = "no-such-pre";
  EXPECT_THROW(Tokenizer::create(d), Error);
  d.pre = "gpt2";
  d.bos_id = 7;  // outside the vocabulary
  EXPECT_THROW(Tokenizer::create(d), Error);
  d.bos_id = -1;
  d.token_types = {1};  // wrong count
  EXPECT_THROW(Tokenizer::create(d), Error);
  d.tokens.clear();
  d.token_types.clear();
  EXPECT_THROW(Tokenizer::create(d), Error);
}

std::vector<std::string> pieces(PreTokenizer kind, std::string_view text) {
  std::vector<std::string> out;
  for (auto p : pre_tokenize(kind, text)) out.emplace_back(p);
  return out;
}

using Pieces = std::vector<std::string>;

TEST(PreTokenize, HandCheckedSplits) {
  EXPECT_EQ(pieces(PreTokenizer::kGpt2, "Hello   world  "),
            (Pieces{"Hello", "  ", " world", "  "}));
  EXPECT_EQ(pieces(PreTokenizer::kGpt2, "it's 2024!"), (Pieces{"it", "'s", " 2024", "!"}));
  EXPECT_EQ(pieces(PreTokenizer::kGpt2, "\tb"), (Pieces{"\t", "b"}));
  EXPECT_EQ(pieces(PreTokenizer::kSmolLM, "ab 123"), (Pieces{"ab", " ", "1", "2", "3"}));
  EXPECT_EQ(pieces(PreTokenizer::kLlama3, "IT'S 12345 (x)\n\n y"),
            (Pieces{"IT", "'S", " ", "123", "45", " (", "x", ")\n\n", " y"}));
  EXPECT_EQ(pieces(PreTokenizer::kLlama3, "a  \n  b"), (Pieces{"a", "  \n", " ", " b"}));
  EXPECT_EQ(pieces(PreTokenizer::kQwen2, "x12"), (Pieces{"x", "1", "2"}));
  EXPECT_TRUE(pieces(PreTokenizer::kGpt2, "").empty());
  // Invalid UTF-8 bytes are kept, each as "other" text.
  EXPECT_EQ(pieces(PreTokenizer::kGpt2, "a\xff\xfe b"), (Pieces{"a", "\xff\xfe", " b"}));
}

TEST(Unicode, CategoriesAndUtf8) {
  using namespace unicode;
  EXPECT_TRUE(is_letter('a'));
  EXPECT_TRUE(is_letter(0x4F60));  // 你
  EXPECT_TRUE(is_letter(0x01C5));  // ǅ (Lt)
  EXPECT_TRUE(is_number(0x0662));  // Arabic-Indic two
  EXPECT_TRUE(is_number(0x216B));  // Roman numeral twelve (Nl)
  EXPECT_TRUE(is_whitespace(0x3000));
  EXPECT_TRUE(is_whitespace(0x85));
  EXPECT_FALSE(is_whitespace(0x200B));  // zero width space is a format character
  EXPECT_FALSE(is_letter(0x1F600));     // emoji
  EXPECT_TRUE(is_punctuation(0x2014));
  EXPECT_EQ(flags_of(0x0378), 0);  // unassigned
  size_t len = 0;
  EXPECT_EQ(decode_one("\xF0\x9F\x98\x80", 0, len), 0x1F600u);
  EXPECT_EQ(len, 4u);
  EXPECT_EQ(decode_one("\xC0\xAF", 0, len), kInvalidCodepoint);      // overlong
  EXPECT_EQ(decode_one("\xED\xA0\x80", 0, len), kInvalidCodepoint);  // surrogate
  EXPECT_EQ(to_utf8(0x20AC), "\xE2\x82\xAC");
  EXPECT_EQ(complete_prefix_length("ab\xE4\xBD"), 2u);
  EXPECT_EQ(complete_prefix_length("ab\xE4\xBD\xA0"), 5u);
  EXPECT_EQ(complete_prefix_length("\xBD"), 1u);
  EXPECT_EQ(sanitize("a\xFF"
                     "b"),
            "a\xEF\xBF\xBD"
            "b");
}

// --- SentencePiece --------------------------------------------------------------------------

TEST(SpmTokenizer, MatchesSentencePiece) {
  const TokenizerData d = test::load_vocab("spm_vocab.bin");
  EXPECT_EQ(d.model, "llama");
  auto tok = Tokenizer::create(d);
  const auto cases = test::read_json("spm_cases.json");
  size_t checked = 0;
  for (const auto& c : cases.at("cases").as_array()) {
    const auto& obj = c.as_object();
    const std::string text = str_of(obj.at("text"));
    const auto expected = ids_of(obj.at("ids"));
    const auto got = tok->encode(text, false, false);
    EXPECT_EQ(got, expected) << "text='" << text << "'\n got: " << show(got)
                             << "\nwant: " << show(expected);
    EXPECT_EQ(tok->decode(expected), str_of(obj.at("decoded"))) << "text='" << text << "'";
    ++checked;
  }
  EXPECT_GE(checked, 200u);
}

TEST(SpmTokenizer, BosByteFallbackAndPieces) {
  const TokenizerData d = test::load_vocab("spm_vocab.bin");
  auto tok = Tokenizer::create(d);
  const auto ids = tok->encode("x\n", /*add_special=*/true, false);
  ASSERT_GE(ids.size(), 2u);
  EXPECT_EQ(ids.front(), d.bos_id);
  EXPECT_EQ(d.tokens[ids.back()], "<0x0A>");  // no "\n" piece: byte fallback
  EXPECT_EQ(tok->token_to_piece(ids.back()), "\n");
  EXPECT_EQ(tok->token_to_piece(d.bos_id), "");
  EXPECT_EQ(tok->token_to_piece(d.bos_id, true), "<s>");
  EXPECT_TRUE(tok->is_eog(d.eos_id));
  // Without the space prefix the first word has no leading "▁".
  TokenizerData no_prefix = d;
  no_prefix.add_space_prefix = false;
  auto tok2 = Tokenizer::create(no_prefix);
  EXPECT_EQ(tok2->encode(" the", false, false), tok->encode("the", false, false));
}

}  // namespace
}  // namespace tpnode
