// A generation request as the scheduler sees it, and how its results travel back to the
// connection that made it. The handle is shared between a network thread (which may cancel)
// and the step-loop thread (which generates and reports).
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "node/engine/sampler.h"

namespace tpnode::coord {

using Clock = std::chrono::steady_clock;

enum class FinishReason { kStop, kLength, kCancelled, kTimeout, kError };
std::string_view to_string(FinishReason reason);

// Protocol error codes; the TCP protocol sends the names, HTTP maps them to status codes.
enum class ErrorCode {
  kBadRequest,    // malformed JSON, wrong types, bad values, a line past the size limit
  kOverloaded,    // waiting queue full
  kTooLong,       // prompt does not fit the context
  kNotReady,      // engine still loading
  kShuttingDown,  // server draining
  kSlowReader,    // client did not read its replies fast enough
  kInternal,
};
std::string_view to_string(ErrorCode code);

// Thrown while turning client input into a request; becomes an error reply.
class RequestError : public std::runtime_error {
 public:
  RequestError(ErrorCode code, const std::string& message)
      : std::runtime_error(message), code_(code) {}
  ErrorCode code() const { return code_; }

 private:
  ErrorCode code_;
};

struct Usage {
  int64_t prompt_tokens = 0;
  int64_t completion_tokens = 0;  // every sampled token, end-of-generation included
};

struct RequestEnd {
  FinishReason reason = FinishReason::kStop;
  Usage usage;
  ErrorCode error_code = ErrorCode::kInternal;  // meaningful when reason == kError
  std::string error_message;
  double ttft_seconds = 0.0;   // arrival to first token (0 when none)
  double total_seconds = 0.0;  // arrival to end
};

// Receives a request's results. Called on the step-loop thread, so implementations hand
// the data to their own thread (e.g. post to a connection's strand) and return quickly.
class RequestObserver {
 public:
  virtual ~RequestObserver() = default;
  virtual void on_text(std::string_view text) = 0;
  virtual void on_end(const RequestEnd& end) = 0;  // exactly once, the last call
};

struct GenerationRequest {
  std::string id;               // the client's id, for replies and logs
  std::vector<int32_t> prompt;  // already tokenized
  SamplingParams sampling;
  int64_t max_tokens = 256;
  std::vector<std::string> stop;  // text-level stop strings
  bool ignore_eos = false;        // keep going past end-of-generation tokens (benchmarks)
  Clock::time_point arrival = Clock::now();
  Clock::time_point deadline = Clock::time_point::max();
};

class RequestHandle {
 public:
  RequestHandle(GenerationRequest request, std::shared_ptr<RequestObserver> observer)
      : request_(std::move(request)), observer_(std::move(observer)) {}

  const GenerationRequest& request() const { return request_; }
  RequestObserver& observer() { return *observer_; }

  // Safe from any thread; the step loop ends the request at its next step.
  void cancel() { cancelled_.store(true, std::memory_order_relaxed); }
  bool cancelled() const { return cancelled_.load(std::memory_order_relaxed); }

 private:
  GenerationRequest request_;
  std::shared_ptr<RequestObserver> observer_;
  std::atomic<bool> cancelled_{false};
};

}  // namespace tpnode::coord
