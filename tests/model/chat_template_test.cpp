// Chat templates: our renderings must be byte-identical to Jinja2 rendering the model's own
// template (fixture made by tools/make_tokenizer_fixtures.py).
#include "node/model/chat_template.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "node/common/error.h"
#include "tests/model/tokenizer_fixture.h"

namespace tpnode {
namespace {

using test::str_of;

TokenizerData data_with(const std::string& source, const std::string& bos, const std::string& eos) {
  TokenizerData d;
  d.tokens = {bos, eos, "x"};
  d.bos_id = 0;
  d.eos_id = 1;
  d.chat_template = source;
  return d;
}

TEST(ChatTemplate, MatchesJinjaRenderings) {
  const auto fixture = test::read_json("chat_cases.json");
  const auto& templates = fixture.at("templates").as_object();
  size_t checked = 0;
  std::map<std::string, size_t> per_family;
  for (const auto& c : fixture.at("cases").as_array()) {
    const auto& obj = c.as_object();
    const std::string name = str_of(obj.at("name"));
    const auto& t = templates.at(name).as_object();
    const TokenizerData d =
        data_with(str_of(t.at("source")), str_of(t.at("bos")), str_of(t.at("eos")));
    const ChatTemplate tmpl = ChatTemplate::from_tokenizer(d);
    std::vector<ChatMessage> messages;
    for (const auto& m : obj.at("messages").as_array()) {
      messages.push_back({str_of(m.at("role")), str_of(m.at("content"))});
    }
    const bool gen = obj.at("add_generation_prompt").as_bool();
    EXPECT_EQ(tmpl.apply(messages, gen), str_of(obj.at("expected")))
        << name << " case " << checked << " add_generation_prompt=" << gen;
    ++checked;
    ++per_family[name];
  }
  EXPECT_GE(per_family["smollm2"], 10u);
  EXPECT_GE(per_family["llama3"], 10u);
  EXPECT_GE(per_family["llama2"], 4u);
  EXPECT_GE(per_family["mistral"], 4u);
}

TEST(ChatTemplate, RecognisesFamiliesAndTheSmolLM2Default) {
  const auto fixture = test::read_json("chat_cases.json");
  const auto& templates = fixture.at("templates").as_object();
  auto family_of = [&](const char* name) {
    const auto& t = templates.at(name).as_object();
    return ChatTemplate::from_tokenizer(
               data_with(str_of(t.at("source")), str_of(t.at("bos")), str_of(t.at("eos"))))
        .family();
  };
  EXPECT_EQ(family_of("smollm2"), ChatTemplate::Family::kChatML);
  EXPECT_EQ(family_of("llama3"), ChatTemplate::Family::kLlama3);
  EXPECT_EQ(family_of("llama2"), ChatTemplate::Family::kMistral);
  EXPECT_EQ(family_of("mistral"), ChatTemplate::Family::kMistral);

  const auto& smol = templates.at("smollm2").as_object();
  const ChatTemplate t = ChatTemplate::from_tokenizer(
      data_with(str_of(smol.at("source")), "<|im_start|>", "<|im_end|>"));
  EXPECT_EQ(t.apply({{"user", "Hi"}}, true),
            "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
            "Face<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
  EXPECT_EQ(t.apply({}, true), "<|im_start|>assistant\n");
}

TEST(ChatTemplate, PlainChatMLHasNoDefaultSystemTurn) {
  const std::string chatml =
      "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + "
      "message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}"
      "{{ '<|im_start|>assistant\\n' }}{% endif %}";
  const ChatTemplate t = ChatTemplate::from_tokenizer(data_with(chatml, "<s>", "</s>"));
  EXPECT_EQ(t.apply({{"user", "Hi"}}, false), "<|im_start|>user\nHi<|im_end|>\n");
}

TEST(ChatTemplate, RefusesUnknownAndEmptyTemplates) {
  try {
    ChatTemplate::from_tokenizer(
        data_with("{{ bos_token }}<start_of_turn>user ...", "<s>", "</s>"));
    ADD_FAILURE() << "an unknown template must be refused";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kUnsupported);
    EXPECT_NE(std::string(e.what()).find("unsupported chat template"), std::string::npos);
    EXPECT_NE(std::string(e.what()).find("<start_of_turn>user"), std::string::npos) << e.what();
  }
  EXPECT_THROW(ChatTemplate::from_tokenizer(data_with("", "<s>", "</s>")), Error);
}

TEST(ChatTemplate, InstTemplatesNeedAlternatingTurns) {
  const auto fixture = test::read_json("chat_cases.json");
  const auto& m = fixture.at("templates").at("mistral").as_object();
  const ChatTemplate t =
      ChatTemplate::from_tokenizer(data_with(str_of(m.at("source")), "<s>", "</s>"));
  EXPECT_THROW(t.apply({{"user", "a"}, {"user", "b"}}, true), Error);
  EXPECT_THROW(t.apply({{"assistant", "a"}}, true), Error);
  // Mistral's template has no system role: we fold it into the first user turn.
  EXPECT_EQ(t.apply({{"system", "S"}, {"user", "U"}}, true), "<s>[INST] S\n\nU [/INST]");
}

TEST(ChatTemplate, OfFamilyUsesTheVocabularysSpecialTokens) {
  TokenizerData d = data_with("", "<|begin_of_text|>", "<|eot_id|>");
  const ChatTemplate t = ChatTemplate::of_family(ChatTemplate::Family::kLlama3, d);
  EXPECT_EQ(t.apply({{"user", " hi "}}, true),
            "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\n");
}

}  // namespace
}  // namespace tpnode
