// A generation request as a client states it (text or chat, sampling, limits), parsed from
// a JSON object with every type and range checked. The TCP line protocol and the OpenAI
// HTTP API share the fields; they differ in defaults and in how strict they are about
// unknown fields.
#pragma once

#include <boost/json/object.hpp>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "node/engine/sampler.h"
#include "node/model/chat_template.h"

namespace tpnode::coord {

enum class Dialect {
  kLine,    // TCP JSON lines: unknown fields are errors, greedy by default
  kOpenAI,  // HTTP /v1/*: unknown fields ignored, temperature 1 by default
};

struct RequestSpec {
  std::string id;                  // empty: the server picks one
  bool chat = false;               // messages instead of prompt
  std::string prompt;              // text prompt
  std::vector<int32_t> prompt_ids;  // a prompt given as token ids (instead of text)
  std::vector<ChatMessage> messages;
  SamplingParams sampling;
  std::optional<int64_t> max_tokens;
  std::vector<std::string> stop;
  bool stream = false;
  bool ignore_eos = false;
  std::optional<double> timeout_s;  // per-request deadline, from arrival
};

// Limits on what a request may ask for.
inline constexpr size_t kMaxStopStrings = 16;
inline constexpr size_t kMaxStopBytes = 256;

// Throws RequestError(kBadRequest) naming the offending field.
RequestSpec parse_request_spec(const boost::json::object& obj, Dialect dialect);

// The "id" member as a string (strings as they are, integers in decimal); empty when absent.
// Throws RequestError(kBadRequest) for other types.
std::string request_id_of(const boost::json::object& obj);

}  // namespace tpnode::coord
