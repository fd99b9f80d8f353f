#include "coordinator/request_spec.h"

#include <boost/json.hpp>
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <set>
#include <string_view>

#include "coordinator/request.h"
#include "node/common/error.h"

namespace tpnode::coord {
namespace json = boost::json;
namespace {

[[noreturn]] void bad(std::string_view field, std::string_view what) {
  throw RequestError(ErrorCode::kBadRequest, fmt::format("field '{}': {}", field, what));
}

double number_of(const json::value& v, std::string_view field) {
  if (v.is_double()) {
    const double d = v.get_double();
    if (!std::isfinite(d)) bad(field, "must be a finite number");
    return d;
  }
  if (v.is_int64()) return static_cast<double>(v.get_int64());
  if (v.is_uint64()) return static_cast<double>(v.get_uint64());
  bad(field, "must be a number");
}

// Integers may arrive as 3 or 3.0 (some clients write every number as a double).
int64_t integer_of(const json::value& v, std::string_view field, int64_t lo, int64_t hi) {
  int64_t n = 0;
  if (v.is_int64()) {
    n = v.get_int64();
  } else if (v.is_uint64()) {
    if (v.get_uint64() > static_cast<uint64_t>(hi)) bad(field, fmt::format("must be <= {}", hi));
    n = static_cast<int64_t>(v.get_uint64());
  } else if (v.is_double()) {
    const double d = v.get_double();
    if (!std::isfinite(d) || d != std::floor(d) || std::abs(d) > 9e15) {
      bad(field, "must be an integer");
    }
    n = static_cast<int64_t>(d);
  } else {
    bad(field, "must be an integer");
  }
  if (n < lo || n > hi) bad(field, fmt::format("must be in [{}, {}] (got {})", lo, hi, n));
  return n;
}

bool bool_of(const json::value& v, std::string_view field) {
  if (!v.is_bool()) bad(field, "must be true or false");
  return v.get_bool();
}

std::string string_of(const json::value& v, std::string_view field) {
  if (!v.is_string()) bad(field, "must be a string");
  return std::string(v.get_string());
}

std::vector<std::string> stops_of(const json::value& v) {
  std::vector<std::string> out;
  if (v.is_null()) return out;
  if (v.is_string()) {
    out.push_back(std::string(v.get_string()));
  } else if (v.is_array()) {
    for (const auto& s : v.get_array()) out.push_back(string_of(s, "stop"));
  } else {
    bad("stop", "must be a string or an array of strings");
  }
  if (out.size() > kMaxStopStrings) bad("stop", fmt::format("at most {} strings", kMaxStopStrings));
  for (const auto& s : out) {
    if (s.empty()) bad("stop", "strings must not be empty");
    if (s.size() > kMaxStopBytes) bad("stop", fmt::format("strings of at most {} bytes", kMaxStopBytes));
  }
  return out;
}

// Chat content: a string, or OpenAI's array of parts of which only text parts are allowed.
std::string content_of(const json::value& v) {
  if (v.is_string()) return std::string(v.get_string());
  if (v.is_null()) return {};
  if (!v.is_array()) bad("messages.content", "must be a string or an array of text parts");
  std::string out;
  for (const auto& part : v.get_array()) {
    if (!part.is_object()) bad("messages.content", "parts must be objects");
    const auto& p = part.get_object();
    const auto* type = p.if_contains("type");
    if (!type || !type->is_string() || type->get_string() != "text") {
      bad("messages.content", "only parts of type \"text\" are supported");
    }
    const auto* text = p.if_contains("text");
    if (!text) bad("messages.content", "a text part needs \"text\"");
    out += string_of(*text, "messages.content.text");
  }
  return out;
}

std::vector<ChatMessage> messages_of(const json::value& v) {
  if (!v.is_array() || v.get_array().empty()) bad("messages", "must be a non-empty array");
  std::vector<ChatMessage> out;
  for (const auto& m : v.get_array()) {
    if (!m.is_object()) bad("messages", "each message must be an object");
    const auto& o = m.get_object();
    const auto* role = o.if_contains("role");
    if (!role) bad("messages.role", "is required");
    ChatMessage msg;
    msg.role = string_of(*role, "messages.role");
    if (msg.role != "system" && msg.role != "user" && msg.role != "assistant" &&
        msg.role != "developer") {
      bad("messages.role", fmt::format("unknown role '{}'", msg.role));
    }
    if (msg.role == "developer") msg.role = "system";
    const auto* content = o.if_contains("content");
    if (!content) bad("messages.content", "is required");
    msg.content = content_of(*content);
    out.push_back(std::move(msg));
  }
  return out;
}

void prompt_of(const json::value& v, RequestSpec& spec) {
  if (v.is_string()) {
    spec.prompt = std::string(v.get_string());
    return;
  }
  if (v.is_array()) {
    const auto& a = v.get_array();
    // OpenAI allows a batch of prompts; one prompt in an array is the same as a string.
    if (a.size() == 1 && a[0].is_string()) {
      spec.prompt = std::string(a[0].get_string());
      return;
    }
    if (!a.empty() && std::all_of(a.begin(), a.end(), [](const auto& x) { return x.is_number(); })) {
      for (const auto& x : a) {
        spec.prompt_ids.push_back(static_cast<int32_t>(
            integer_of(x, "prompt", 0, std::numeric_limits<int32_t>::max())));
      }
      return;
    }
    if (a.size() > 1 && a[0].is_string()) bad("prompt", "one prompt per request");
  }
  bad("prompt", "must be a string or an array of token ids");
}

}  // namespace

std::string request_id_of(const json::object& obj) {
  const auto* id = obj.if_contains("id");
  if (!id || id->is_null()) return {};
  if (id->is_string()) {
    if (id->get_string().size() > 256) bad("id", "at most 256 bytes");
    return std::string(id->get_string());
  }
  if (id->is_int64()) return std::to_string(id->get_int64());
  if (id->is_uint64()) return std::to_string(id->get_uint64());
  bad("id", "must be a string or an integer");
}

RequestSpec parse_request_spec(const json::object& obj, Dialect dialect) {
  static const std::set<std::string_view> kLineFields = {
      "id", "prompt", "messages", "max_tokens", "temperature", "top_k", "top_p", "min_p",
      "repetition_penalty", "presence_penalty", "frequency_penalty", "seed", "stop", "stream",
      "ignore_eos", "timeout"};
  RequestSpec spec;
  if (dialect == Dialect::kOpenAI) spec.sampling.temperature = 1.0f;
  for (const auto& [key, value] : obj) {
    const std::string_view k = key;
    if (k == "id") {
      spec.id = request_id_of(obj);
    } else if (k == "prompt") {
      prompt_of(value, spec);
    } else if (k == "messages") {
      spec.messages = messages_of(value);
      spec.chat = true;
    } else if (k == "max_tokens" || k == "max_completion_tokens") {
      if (!value.is_null()) spec.max_tokens = integer_of(value, k, 1, 1 << 30);
    } else if (k == "temperature") {
      if (!value.is_null()) spec.sampling.temperature = static_cast<float>(number_of(value, k));
    } else if (k == "top_k") {
      spec.sampling.top_k = static_cast<int32_t>(integer_of(value, k, 0, 1 << 20));
    } else if (k == "top_p") {
      if (!value.is_null()) spec.sampling.top_p = static_cast<float>(number_of(value, k));
    } else if (k == "min_p") {
      spec.sampling.min_p = static_cast<float>(number_of(value, k));
    } else if (k == "repetition_penalty") {
      spec.sampling.repetition_penalty = static_cast<float>(number_of(value, k));
    } else if (k == "presence_penalty") {
      if (!value.is_null()) spec.sampling.presence_penalty = static_cast<float>(number_of(value, k));
    } else if (k == "frequency_penalty") {
      if (!value.is_null()) spec.sampling.frequency_penalty = static_cast<float>(number_of(value, k));
    } else if (k == "seed") {
      if (!value.is_null()) {
        if (value.is_int64() && value.get_int64() < 0) {
          spec.sampling.seed = static_cast<uint64_t>(value.get_int64());  // wraps, as C does
        } else if (value.is_uint64()) {
          spec.sampling.seed = value.get_uint64();
        } else {
          spec.sampling.seed = static_cast<uint64_t>(
              integer_of(value, k, 0, std::numeric_limits<int64_t>::max()));
        }
      }
    } else if (k == "stop") {
      spec.stop = stops_of(value);
    } else if (k == "stream") {
      if (!value.is_null()) spec.stream = bool_of(value, k);
    } else if (k == "ignore_eos") {
      spec.ignore_eos = bool_of(value, k);
    } else if (k == "timeout") {
      const double t = number_of(value, k);
      if (!(t > 0.0 && t <= 86400.0)) bad(k, "must be in (0, 86400] seconds");
      spec.timeout_s = t;
    } else if (dialect == Dialect::kLine && !kLineFields.count(k)) {
      bad(k, "unknown field");
    }
  }
  const bool has_prompt = obj.contains("prompt");
  if (has_prompt == spec.chat) {
    throw RequestError(ErrorCode::kBadRequest,
                       has_prompt ? "give either 'prompt' or 'messages', not both"
                                  : "a request needs 'prompt' or 'messages'");
  }
  try {
    spec.sampling.validate();
  } catch (const Error& e) {
    throw RequestError(ErrorCode::kBadRequest, e.what());
  }
  return spec;
}

}  // namespace tpnode::coord
