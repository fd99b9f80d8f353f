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
  Family family_ = Family::kChatML;
  std::string bos_text_;
  std::string eos_text_;
};

}  // namespace tpnode
