// The JSON bodies of the OpenAI-compatible HTTP API: completion and chat completion objects,
// their streamed chunks, and error objects, plus the status code for each error.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "coordinator/request.h"

namespace tpnode::coord {

struct OpenAIReply {
  bool chat = false;      // chat.completion(.chunk) rather than text_completion
  std::string id;         // "cmpl-..." / "chatcmpl-..."
  std::string model;
  int64_t created = 0;    // Unix seconds
};

// A whole non-streamed response body.
std::string openai_response(const OpenAIReply& r, std::string_view text, const RequestEnd& end);
// One streamed chunk: text (first_chat_chunk adds the assistant role to the delta).
std::string openai_text_chunk(const OpenAIReply& r, std::string_view text, bool first_chat_chunk);
// The streamed chunk that carries the finish reason.
std::string openai_finish_chunk(const OpenAIReply& r, const RequestEnd& end);
// The streamed chunk with usage only (stream_options.include_usage).
std::string openai_usage_chunk(const OpenAIReply& r, const Usage& usage);
// {"error":{"message","type","code"}}
std::string openai_error(ErrorCode code, std::string_view message);
std::string openai_error(std::string_view type, std::string_view code, std::string_view message);
// 400, 429, 503, ... for an error code.
unsigned http_status_of(ErrorCode code);
// The finish reason as OpenAI clients expect it ("stop", "length", or ours for the rest).
std::string_view openai_finish_reason(FinishReason reason);

}  // namespace tpnode::coord
