// Renders the three template families the way their reference Jinja templates do:
//  ChatML   (SmolLM2, Qwen): <|im_start|>role\ncontent<|im_end|>\n, optional default system turn;
//  Llama 3:  BOS once, <|start_header_id|>role<|end_header_id|>\n\n trim(content) <|eot_id|>;
//  [INST]:   Llama 2 (BOS [INST] <<SYS>>..<</SYS>> user [/INST] assistant EOS) and
//            Mistral v0.1/v0.2 (BOS once, [INST] user [/INST]assistant EOS).
// Recognition looks for each family's markers in the template source.
#include "node/model/chat_template.h"

#include <initializer_list>
#include <string_view>
#include <utility>

#include "node/common/error.h"
#include "node/model/unicode.h"

namespace tpnode {
namespace {

std::string token_text(const TokenizerData& data, int32_t id) {
  if (id < 0 || static_cast<size_t>(id) >= data.tokens.size()) return {};
  return data.tokens[id];
}

// Jinja's trim / Python's str.strip(): Unicode whitespace at both ends.
std::string strip(std::string_view s) {
  auto is_space = [](uint32_t cp) {
    return unicode::is_whitespace(cp) || (cp >= 0x1C && cp <= 0x1F);  // str.isspace() has these
  };
  const unicode::CodepointText t = unicode::decode(s);
  size_t b = 0;
  size_t e = t.cps.size();
  while (b < e && is_space(t.cps[b])) ++b;
  while (e > b && is_space(t.cps[e - 1])) --e;
  return std::string(s.substr(t.offsets[b], t.offsets[e] - t.offsets[b]));
}

// A Jinja string literal's escapes, for the few a template's literal text uses.
std::string unescape(std::string_view s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '\\' && i + 1 < s.size()) {
      const char c = s[++i];
      out.push_back(c == 'n' ? '\n' : c == 't' ? '\t' : c);
    } else {
      out.push_back(s[i]);
    }
  }
  return out;
}

// The literal system turn a ChatML template writes when the conversation has none, e.g.
// '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, ...<|im_end|>\n'.
std::string find_default_system(std::string_view src) {
  for (std::string_view head : {"<|im_start|>system\n", "<|im_start|>system\\n"}) {
    const size_t at = src.find(head);
    if (at == std::string_view::npos) continue;
    const size_t begin = at + head.size();
    const size_t end = src.find("<|im_end|>", begin);
    if (end == std::string_view::npos) continue;
    const std::string_view text = src.substr(begin, end - begin);
    // Literal text only: an expression here (system message content, tools) is no default.
    if (text.find_first_of("'\"{}+") != std::string_view::npos) continue;
    return unescape(text);
  }
  return {};
}

void append(std::string& out, std::initializer_list<std::string_view> parts) {
  for (std::string_view p : parts) out.append(p);
}

std::string template_start(std::string_view src) {
  std::string s(src.substr(0, 60));
  for (char& c : s) {
    if (c == '\n') c = ' ';
  }
  return s + (src.size() > 60 ? "..." : "");
}

}  // namespace

ChatTemplate ChatTemplate::of_family(Family family, const TokenizerData& data) {
  ChatTemplate t;
  t.family_ = family;
  t.bos_text_ = token_text(data, data.bos_id);
  t.eos_text_ = token_text(data, data.eos_id);
  return t;
}

ChatTemplate ChatTemplate::from_tokenizer(const TokenizerData& data) {
  const std::string& src = data.chat_template;
  TPNODE_CHECK_KIND(!src.empty(), ErrorKind::kUnsupported,
                    "unsupported chat template: the model has none");
  if (src.find("<|start_header_id|>") != std::string::npos) {
    ChatTemplate t = of_family(Family::kLlama3, data);
    if (t.bos_text_.empty()) t.bos_text_ = "<|begin_of_text|>";
    return t;
  }
  if (src.find("<|im_start|>") != std::string::npos) {
    ChatTemplate t = of_family(Family::kChatML, data);
    t.default_system_ = find_default_system(src);
    return t;
  }
  if (src.find("[INST]") != std::string::npos) {
    ChatTemplate t = of_family(Family::kMistral, data);
    t.llama2_style_ = src.find("<<SYS>>") != std::string::npos;
    if (src.find("eos_token + ' '") != std::string::npos) t.after_eos_.push_back(' ');
    return t;
  }
  TPNODE_THROW(ErrorKind::kUnsupported, "unsupported chat template: '{}'", template_start(src));
}

std::string ChatTemplate::apply(const std::vector<ChatMessage>& messages,
                                bool add_generation_prompt) const {
  switch (family_) {
    case Family::kChatML:
      return apply_chatml(messages, add_generation_prompt);
    case Family::kLlama3:
      return apply_llama3(messages, add_generation_prompt);
    case Family::kMistral:
      return apply_inst(messages);
  }
  return {};
}

std::string ChatTemplate::apply_chatml(const std::vector<ChatMessage>& messages,
                                       bool add_generation_prompt) const {
  std::string out;
  if (!messages.empty() && messages[0].role != "system" && !default_system_.empty()) {
    append(out, {"<|im_start|>system\n", default_system_, "<|im_end|>\n"});
  }
  for (const ChatMessage& m : messages) {
    append(out, {"<|im_start|>", m.role, "\n", m.content, "<|im_end|>\n"});
  }
  if (add_generation_prompt) out += "<|im_start|>assistant\n";
  return out;
}

std::string ChatTemplate::apply_llama3(const std::vector<ChatMessage>& messages,
                                       bool add_generation_prompt) const {
  std::string out;
  for (size_t i = 0; i < messages.size(); ++i) {
    if (i == 0) out += bos_text_;
    append(out, {"<|start_header_id|>", messages[i].role, "<|end_header_id|>\n\n",
                 strip(messages[i].content), "<|eot_id|>"});
  }
  if (add_generation_prompt) out += "<|start_header_id|>assistant<|end_header_id|>\n\n";
  return out;
}

// [INST] templates have no generation prompt: a prompt ending in [/INST] is the open turn.
std::string ChatTemplate::apply_inst(const std::vector<ChatMessage>& messages) const {
  size_t first = 0;
  std::string system;
  bool has_system = false;
  if (!messages.empty() && messages[0].role == "system") {
    system = messages[0].content;
    has_system = true;
    first = 1;
  }
  std::string out = llama2_style_ ? "" : bos_text_;
  for (size_t i = first; i < messages.size(); ++i) {
    const ChatMessage& m = messages[i];
    const bool expect_user = (i - first) % 2 == 0;
    TPNODE_CHECK(m.role == (expect_user ? "user" : "assistant"),
                 "chat message {} has role '{}': this template needs user/assistant turns "
                 "alternating, starting with user (after an optional system message)",
                 i, m.role);
    std::string content = m.content;
    if (i == first && has_system) {
      // Llama 2's own layout; Mistral's template refuses a system role, so we fold it into the
      // first user turn the same way.
      std::string merged;
      if (llama2_style_) {
        append(merged, {"<<SYS>>\n", system, "\n<</SYS>>\n\n", content});
      } else {
        append(merged, {system, "\n\n", content});
      }
      content = std::move(merged);
    }
    const bool user = m.role == "user";
    if (llama2_style_ && user) {
      append(out, {bos_text_, "[INST] ", strip(content), " [/INST]"});
    } else if (llama2_style_) {
      append(out, {" ", strip(content), " ", eos_text_});
    } else if (user) {
      append(out, {"[INST] ", content, " [/INST]"});
    } else {
      append(out, {content, eos_text_, after_eos_});
    }
  }
  return out;
}

}  // namespace tpnode
