// Chat templates: the model's own Jinja template, recognised as one of the families we
// render (ChatML, Llama 3, Mistral/Llama 2 [INST]). An unknown template is a clear error.
#pragma once

#include <string>
#include <vector>

#include "node/model/model_file.h"

namespace tpnode {

struct ChatMessage {
  std::string role;  // "system", "user", "assistant"
  std::string content;
};

class ChatTemplate {
 public:
  enum class Family { kChatML, kLlama3, kMistral };

  // Recognises the family from the template source; throws tpnode::Error if unknown or empty.
  static ChatTemplate from_tokenizer(const TokenizerData& data);
  static ChatTemplate of_family(Family family, const TokenizerData& data);

  // Renders the conversation; with add_generation_prompt the assistant turn is opened.
  std::string apply(const std::vector<ChatMessage>& messages, bool add_generation_prompt) const;
  Family family() const { return family_; }

 private:
  std::string apply_chatml(const std::vector<ChatMessage>& messages,
                           bool add_generation_prompt) const;
  std::string apply_llama3(const std::vector<ChatMessage>& messages,
                           bool add_generation_prompt) const;
  std::string apply_inst(const std::vector<ChatMessage>& messages) const;

  Family family_ = Family::kChatML;
  std::string bos_text_;
  std::string eos_text_;
  // ChatML: the system turn the template puts first when the conversation has none (SmolLM2,
  // Qwen2.5); empty when it adds nothing.
  std::string default_system_;
  // [INST] family: Llama 2 puts the system prompt in <<SYS>> inside the first [INST], with BOS
  // before every user turn; Mistral has one BOS and no system role.
  bool llama2_style_ = false;
  // What the template writes after an assistant turn's EOS (Mistral v0.1: " ").
  std::string after_eos_;
};

}  // namespace tpnode
