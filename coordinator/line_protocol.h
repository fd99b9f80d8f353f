// Reply lines of the TCP protocol (docs/PROTOCOL.md): one JSON object per line, each
// carrying the request id.
#pragma once

#include <string>
#include <string_view>

#include "coordinator/request.h"

namespace tpnode::coord {

// {"id":..,"text":".."}
std::string line_text(std::string_view id, std::string_view text);
// {"id":..,"done":true,"finish_reason":..,"usage":{..}} with "text" when `text` is given
// (non-streaming replies carry the whole text in the final line). An end with an error
// becomes line_error.
std::string line_end(std::string_view id, const RequestEnd& end, const std::string* text);
// {"id":..,"error":{"code":..,"message":..}}; an empty id is sent as null.
std::string line_error(std::string_view id, ErrorCode code, std::string_view message);

}  // namespace tpnode::coord
