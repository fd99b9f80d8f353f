#include "coordinator/openai_request.h"

#include <boost/json.hpp>
#include <fmt/format.h>

#include "coordinator/request.h"

namespace tpnode::coord {
namespace json = boost::json;
namespace {

[[noreturn]] void bad(const std::string& message) {
  throw RequestError(ErrorCode::kBadRequest, message);
}

bool is_set(const json::object& obj, std::string_view key) {
  const auto* v = obj.if_contains(key);
  return v && !v->is_null() && !(v->is_bool() && !v->get_bool());
}

}  // namespace

OpenAIRequest parse_openai_request(std::string_view body, bool chat) {
  boost::system::error_code ec;
  json::value v = json::parse(body, ec);
  if (ec) bad(fmt::format("malformed JSON body: {}", ec.message()));
  if (!v.is_object()) bad("the body must be a JSON object");
  json::object& obj = v.get_object();
  // The id is ours to choose in this API; a client field of that name means nothing.
  obj.erase("id");
  if (chat && obj.contains("prompt")) bad("field 'prompt': use 'messages' with chat completions");
  if (!chat && obj.contains("messages")) bad("field 'messages': use /v1/chat/completions");
  if (const auto* n = obj.if_contains("n"); n && !n->is_null()) {
    if (!n->is_int64() || n->get_int64() != 1) bad("field 'n': only n=1 is supported");
  }
  if (const auto* b = obj.if_contains("best_of"); b && !b->is_null()) {
    if (!b->is_int64() || b->get_int64() != 1) bad("field 'best_of': only 1 is supported");
  }
  for (const char* unsupported : {"echo", "logprobs", "top_logprobs", "tools", "functions"}) {
    if (is_set(obj, unsupported)) bad(fmt::format("field '{}' is not supported", unsupported));
  }
  OpenAIRequest out;
  out.spec = parse_request_spec(obj, Dialect::kOpenAI);
  if (const auto* so = obj.if_contains("stream_options"); so && !so->is_null()) {
    if (!so->is_object()) bad("field 'stream_options': must be an object");
    if (const auto* iu = so->get_object().if_contains("include_usage")) {
      if (!iu->is_bool()) bad("field 'stream_options.include_usage': must be true or false");
      out.include_usage = iu->get_bool();
    }
  }
  return out;
}

}  // namespace tpnode::coord
