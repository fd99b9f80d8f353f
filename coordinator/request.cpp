#include "coordinator/request.h"

namespace tpnode::coord {

std::string_view to_string(FinishReason reason) {
  switch (reason) {
    case FinishReason::kStop: return "stop";
    case FinishReason::kLength: return "length";
    case FinishReason::kCancelled: return "cancelled";
    case FinishReason::kTimeout: return "timeout";
    case FinishReason::kError: return "error";
  }
  return "error";
}

std::string_view to_string(ErrorCode code) {
  switch (code) {
    case ErrorCode::kBadRequest: return "bad_request";
    case ErrorCode::kOverloaded: return "overloaded";
    case ErrorCode::kTooLong: return "too_long";
    case ErrorCode::kNotReady: return "not_ready";
    case ErrorCode::kShuttingDown: return "shutting_down";
    case ErrorCode::kSlowReader: return "slow_reader";
    case ErrorCode::kInternal: return "internal";
  }
  return "internal";
}

}  // namespace tpnode::coord
