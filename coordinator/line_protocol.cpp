#include "coordinator/line_protocol.h"

#include <boost/json.hpp>

namespace tpnode::coord {
namespace json = boost::json;
namespace {

json::value id_value(std::string_view id) {
  return id.empty() ? json::value(nullptr) : json::value(json::string(id));
}

std::string to_line(const json::object& obj) {
  std::string s = json::serialize(obj);
  s += '\n';
  return s;
}

}  // namespace

std::string line_text(std::string_view id, std::string_view text) {
  return to_line({{"id", id_value(id)}, {"text", text}});
}

std::string line_end(std::string_view id, const RequestEnd& end, const std::string* text) {
  if (end.reason == FinishReason::kError) return line_error(id, end.error_code, end.error_message);
  json::object obj{{"id", id_value(id)}};
  if (text) obj["text"] = *text;
  obj["done"] = true;
  obj["finish_reason"] = to_string(end.reason);
  obj["usage"] = {{"prompt_tokens", end.usage.prompt_tokens},
                  {"completion_tokens", end.usage.completion_tokens}};
  return to_line(obj);
}

std::string line_error(std::string_view id, ErrorCode code, std::string_view message) {
  return to_line({{"id", id_value(id)},
                  {"error", {{"code", to_string(code)}, {"message", message}}}});
}

}  // namespace tpnode::coord
