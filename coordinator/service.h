// What both network frontends (TCP lines, HTTP) share: turning a RequestSpec into tokens,
// submitting it to the step loop with the server's limits, cancelling, and readiness.
// Before attach() the engine is still loading and every request is refused with not_ready.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "coordinator/metrics.h"
#include "coordinator/request.h"
#include "coordinator/request_spec.h"

namespace tpnode {
class Tokenizer;
}

namespace tpnode::coord {

class StepLoop;

struct ServiceOptions {
  std::string model_name = "tpnode";
  int64_t default_max_tokens = 256;
  double max_request_seconds = 0.0;  // deadline for every request; 0 = none
};

// Renders a conversation into prompt text (the model's chat template); throws RequestError
// or tpnode::Error when it cannot.
using ChatRenderer = std::function<std::string(const std::vector<ChatMessage>&)>;

class Service {
 public:
  Service(const ServiceOptions& options, Metrics& metrics);

  // Makes the service ready. The arguments must outlive the service's use. `chat` may be
  // empty when the model has no chat template (chat requests are then refused).
  void attach(const Tokenizer& tokenizer, StepLoop& loop, ChatRenderer chat);
  bool ready() const { return ready_.load(std::memory_order_acquire); }
  // Ready and not shutting down: what /health reports.
  bool healthy() const { return ready() && !draining_.load(std::memory_order_relaxed); }
  void set_draining() { draining_.store(true, std::memory_order_relaxed); }

  // Tokenizes, applies limits and queues the request. The observer hears text and the end.
  // Throws RequestError (bad_request, too_long, overloaded, not_ready, shutting_down); the
  // refusal is counted in the metrics.
  std::shared_ptr<RequestHandle> submit(const RequestSpec& spec,
                                        std::shared_ptr<RequestObserver> observer);
  // Ends the request at the step loop's next step.
  void cancel(RequestHandle& handle);
  // Counts a request refused before it reached submit() (e.g. malformed JSON).
  void count_refused(ErrorCode code) { metrics_.count_request(to_string(code)); }

  // A fresh server-side id ("<prefix>-<n>") for requests that came without one.
  std::string next_id(std::string_view prefix);

  const ServiceOptions& options() const { return options_; }
  Metrics& metrics() { return metrics_; }
  int64_t context_limit() const;

 private:
  std::vector<int32_t> tokenize(const RequestSpec& spec) const;

  ServiceOptions options_;
  Metrics& metrics_;
  const Tokenizer* tokenizer_ = nullptr;
  StepLoop* loop_ = nullptr;
  ChatRenderer chat_;
  std::atomic<bool> ready_{false};
  std::atomic<bool> draining_{false};
  std::atomic<uint64_t> next_id_{1};
};

}  // namespace tpnode::coord
