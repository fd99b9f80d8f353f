// Parses the body of POST /v1/completions and /v1/chat/completions into a RequestSpec,
// refusing what we do not implement (n > 1, echo, logprobs, best_of) instead of ignoring it.
#pragma once

#include <string_view>

#include "coordinator/request_spec.h"

namespace tpnode::coord {

struct OpenAIRequest {
  RequestSpec spec;
  bool include_usage = false;  // stream_options.include_usage
};

// Throws RequestError(kBadRequest) naming the problem.
OpenAIRequest parse_openai_request(std::string_view body, bool chat);

}  // namespace tpnode::coord
