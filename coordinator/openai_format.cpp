#include "coordinator/openai_format.h"

#include <boost/json.hpp>

namespace tpnode::coord {
namespace json = boost::json;
namespace {

json::object envelope(const OpenAIReply& r, bool chunk) {
  const char* object = r.chat ? (chunk ? "chat.completion.chunk" : "chat.completion")
                              : "text_completion";
  return {{"id", r.id}, {"object", object}, {"created", r.created}, {"model", r.model}};
}

json::object usage_of(const Usage& u) {
  return {{"prompt_tokens", u.prompt_tokens},
          {"completion_tokens", u.completion_tokens},
          {"total_tokens", u.prompt_tokens + u.completion_tokens}};
}

}  // namespace

std::string_view openai_finish_reason(FinishReason reason) { return to_string(reason); }

std::string openai_response(const OpenAIReply& r, std::string_view text, const RequestEnd& end) {
  json::object choice{{"index", 0}};
  if (r.chat) {
    choice["message"] = {{"role", "assistant"}, {"content", text}};
  } else {
    choice["text"] = text;
  }
  choice["logprobs"] = nullptr;
  choice["finish_reason"] = openai_finish_reason(end.reason);
  json::object body = envelope(r, false);
  body["choices"] = json::array{choice};
  body["usage"] = usage_of(end.usage);
  return json::serialize(body);
}

std::string openai_text_chunk(const OpenAIReply& r, std::string_view text, bool first_chat_chunk) {
  json::object choice{{"index", 0}};
  if (r.chat) {
    json::object delta;
    if (first_chat_chunk) delta["role"] = "assistant";
    delta["content"] = text;
    choice["delta"] = std::move(delta);
  } else {
    choice["text"] = text;
  }
  choice["logprobs"] = nullptr;
  choice["finish_reason"] = nullptr;
  json::object body = envelope(r, true);
  body["choices"] = json::array{choice};
  return json::serialize(body);
}

std::string openai_finish_chunk(const OpenAIReply& r, const RequestEnd& end) {
  json::object choice{{"index", 0}};
  if (r.chat) {
    choice["delta"] = json::object{};
  } else {
    choice["text"] = "";
  }
  choice["logprobs"] = nullptr;
  choice["finish_reason"] = openai_finish_reason(end.reason);
  json::object body = envelope(r, true);
  body["choices"] = json::array{choice};
  return json::serialize(body);
}

std::string openai_usage_chunk(const OpenAIReply& r, const Usage& usage) {
  json::object body = envelope(r, true);
  body["choices"] = json::array{};
  body["usage"] = usage_of(usage);
  return json::serialize(body);
}

std::string openai_error(std::string_view type, std::string_view code, std::string_view message) {
  return json::serialize(
      json::object{{"error", {{"message", message}, {"type", type}, {"code", code}}}});
}

std::string openai_error(ErrorCode code, std::string_view message) {
  const bool client = http_status_of(code) < 500 && code != ErrorCode::kOverloaded;
  return openai_error(client ? "invalid_request_error" : "server_error", to_string(code), message);
}

unsigned http_status_of(ErrorCode code) {
  switch (code) {
    case ErrorCode::kBadRequest: return 400;
    case ErrorCode::kTooLong: return 400;
    case ErrorCode::kOverloaded: return 429;
    case ErrorCode::kNotReady: return 503;
    case ErrorCode::kShuttingDown: return 503;
    case ErrorCode::kSlowReader: return 500;
    case ErrorCode::kInternal: return 500;
  }
  return 500;
}

}  // namespace tpnode::coord
