// tokenizer.json -> TokenizerData -> Tokenizer, against the ids Hugging Face `tokenizers` gives
// for the same files (fixtures made by tools/make_tokenizer_fixtures.py).
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>

#include "node/common/error.h"
#include "node/model/tokenizer.h"
#include "tests/model/tokenizer_fixture.h"

namespace tpnode {
namespace {

using test::ids_of;
using test::str_of;

struct JsonCase {
  const char* folder;
  const char* model_type;
  const char* expect_model;
  const char* expect_pre;
};

void PrintTo(const JsonCase& c, std::ostream* os) { *os << c.folder; }

class TokenizerJson : public ::testing::TestWithParam<JsonCase> {};

TEST_P(TokenizerJson, MatchesHuggingFaceIds) {
  const JsonCase& p = GetParam();
  const std::string dir = test::fixture_path(p.folder);
  const TokenizerData d = tokenizer_data_from_json(dir + "/tokenizer.json", p.model_type);
  EXPECT_EQ(d.model, p.expect_model);
  EXPECT_EQ(d.pre, p.expect_pre);
  auto tok = Tokenizer::create(d);
  const auto cases = test::read_json(std::string(p.folder) + "/cases.json");
  const bool add_special = cases.at("add_special").as_bool();
  const bool spm = d.model == "llama";
  size_t checked = 0;
  for (const auto& c : cases.at("cases").as_array()) {
    const std::string text = str_of(c.as_object().at("text"));
    // A Metaspace pre-tokenizer does not add the prefix to text that already starts with a
    // space; SentencePiece (and llama.cpp, and we) always add it.
    if (std::string(p.folder) == "hf_mistral" && !text.empty() && text[0] == ' ') continue;
    const auto expected = ids_of(c.as_object().at("ids"));
    const auto got = tok->encode(text, add_special, /*parse_special=*/true);
    EXPECT_EQ(got, expected) << p.folder << " text='" << text << "'";
    if (!spm) {
      EXPECT_EQ(tok->decode(tok->encode(text, false, true), /*special=*/true), text);
    } else if (text.find("<s>") == std::string::npos) {
      EXPECT_EQ(tok->decode(got), text);
    }
    ++checked;
  }
  EXPECT_GE(checked, 100u);
}

INSTANTIATE_TEST_SUITE_P(Fixtures, TokenizerJson,
                         ::testing::Values(JsonCase{"hf_bytelevel", "gpt2", "gpt2", "gpt2"},
                                           JsonCase{"hf_llama3", "llama", "gpt2", "llama3"},
                                           JsonCase{"hf_llama2", "llama", "llama", "default"},
                                           JsonCase{"hf_mistral", "mistral", "llama", "default"}),
                         [](const auto& info) { return std::string(info.param.folder); });

TEST(TokenizerJsonFields, SpecialTokensAndFlags) {
  const TokenizerData b =
      tokenizer_data_from_json(test::fixture_path("hf_bytelevel/tokenizer.json"), "gpt2");
  EXPECT_FALSE(b.add_bos);
  EXPECT_EQ(b.bos_id, -1);
  ASSERT_GE(b.eos_id, 0);
  EXPECT_EQ(b.tokens[b.eos_id], "<|endoftext|>");
  EXPECT_EQ(b.token_types[b.eos_id], 3);
  // <tool> was added as a plain (not special) token: user-defined, matched even without
  // parse_special.
  const auto tool = std::find(b.tokens.begin(), b.tokens.end(), "<tool>") - b.tokens.begin();
  ASSERT_LT(tool, static_cast<long>(b.tokens.size()));
  EXPECT_EQ(b.token_types[tool], 4);
  auto tok = Tokenizer::create(b);
  const auto ids = tok->encode("a <tool> b", false, false);
  EXPECT_NE(std::find(ids.begin(), ids.end(), tool), ids.end());

  const TokenizerData l3 =
      tokenizer_data_from_json(test::fixture_path("hf_llama3/tokenizer.json"), "llama");
  EXPECT_TRUE(l3.add_bos);  // from the post-processor template
  EXPECT_EQ(l3.tokens.at(l3.bos_id), "<|begin_of_text|>");
  EXPECT_EQ(l3.tokens.at(l3.eos_id), "<|eot_id|>");

  const TokenizerData l2 =
      tokenizer_data_from_json(test::fixture_path("hf_llama2/tokenizer.json"), "llama");
  EXPECT_TRUE(l2.add_bos);
  EXPECT_TRUE(l2.add_space_prefix);
  EXPECT_EQ(l2.tokens.at(l2.bos_id), "<s>");
  EXPECT_EQ(l2.tokens.at(l2.eos_id), "</s>");
  EXPECT_EQ(l2.tokens.at(l2.unk_id), "<unk>");
  EXPECT_EQ(l2.token_types.at(l2.unk_id), 3);  // an added special token stays control
  const auto byte = std::find(l2.tokens.begin(), l2.tokens.end(), "<0x0A>") - l2.tokens.begin();
  EXPECT_EQ(l2.token_types.at(byte), 6);
}

class TempDir {
 public:
  TempDir() {
    path_ = std::filesystem::temp_directory_path() /
            ("tpnode_tokjson_" + std::to_string(::getpid()) + "_" +
             ::testing::UnitTest::GetInstance()->current_test_info()->name());
    std::filesystem::create_directories(path_);
  }
  ~TempDir() { std::filesystem::remove_all(path_); }
  std::string write(const std::string& name, const std::string& text) const {
    const auto p = path_ / name;
    std::ofstream(p) << text;
    return p.string();
  }

 private:
  std::filesystem::path path_;
};

TEST(TokenizerJsonFields, RejectsWhatItCannotRead) {
  TempDir dir;
  EXPECT_THROW(tokenizer_data_from_json(dir.write("missing_dir_file.json", "") + ".nope", "x"),
               Error);
  EXPECT_THROW(tokenizer_data_from_json(dir.write("bad.json", "{not json"), "x"), Error);
  EXPECT_THROW(
      tokenizer_data_from_json(
          dir.write("unigram.json", R"({"model":{"type":"Unigram","vocab":[["a",0.0]]}})"), "t5"),
      Error);
  EXPECT_THROW(tokenizer_data_from_json(
                   dir.write("dup.json", R"({"model":{"type":"BPE","vocab":{"a":0,"b":0},
                       "merges":[]},"decoder":{"type":"ByteLevel"}})"),
                   "gpt2"),
               Error);
  try {
    tokenizer_data_from_json(
        dir.write("rx.json", R"({"model":{"type":"BPE","vocab":{"a":0},"merges":[]},
            "pre_tokenizer":{"type":"Sequence","pretokenizers":[
              {"type":"Split","pattern":{"Regex":"[a-z]+"},"behavior":"Isolated"},
              {"type":"ByteLevel","use_regex":false}]}})"),
        "mystery");
    ADD_FAILURE() << "an unknown regex with an unknown model_type must be refused";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kUnsupported);
    EXPECT_NE(std::string(e.what()).find("[a-z]+"), std::string::npos) << e.what();
  }
}

TEST(TokenizerJsonFields, MergesAsPairsAndChatTemplateFromConfig) {
  TempDir dir;
  const std::string path = dir.write("tokenizer.json", R"({
    "model":{"type":"BPE","vocab":{"a":0,"b":1,"ab":2,"<|im_end|>":3},"merges":[["a","b"]]},
    "added_tokens":[{"id":3,"content":"<|im_end|>","special":true}],
    "pre_tokenizer":{"type":"ByteLevel","add_prefix_space":false,"use_regex":true},
    "decoder":{"type":"ByteLevel"}})");
  dir.write("tokenizer_config.json",
            R"({"eos_token":{"content":"<|im_end|>"},"chat_template":"{{ '<|im_start|>' }}"})");
  const TokenizerData d = tokenizer_data_from_json(path, "gpt2");
  ASSERT_EQ(d.merges.size(), 1u);
  EXPECT_EQ(d.merges[0], "a b");
  EXPECT_EQ(d.eos_id, 3);
  EXPECT_EQ(d.chat_template, "{{ '<|im_start|>' }}");
  auto tok = Tokenizer::create(d);
  EXPECT_EQ(tok->encode("ab", false, false), (std::vector<int32_t>{2}));
  EXPECT_TRUE(tok->is_eog(3));
}

}  // namespace
}  // namespace tpnode
