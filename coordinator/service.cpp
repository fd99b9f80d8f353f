#include "coordinator/service.h"

#include <fmt/format.h>

#include <chrono>

#include "coordinator/step_loop.h"
#include "node/common/error.h"
#include "node/model/tokenizer.h"

namespace tpnode::coord {

Service::Service(const ServiceOptions& options, Metrics& metrics)
    : options_(options), metrics_(metrics) {}

void Service::attach(const Tokenizer& tokenizer, StepLoop& loop, ChatRenderer chat) {
  tokenizer_ = &tokenizer;
  loop_ = &loop;
  chat_ = std::move(chat);
  ready_.store(true, std::memory_order_release);
  metrics_.set_ready(true);
}

int64_t Service::context_limit() const { return ready() ? loop_->context_limit() : 0; }

std::string Service::next_id(std::string_view prefix) {
  return fmt::format("{}-{}", prefix, next_id_.fetch_add(1, std::memory_order_relaxed));
}

std::vector<int32_t> Service::tokenize(const RequestSpec& spec) const {
  if (!spec.prompt_ids.empty()) {
    for (int32_t id : spec.prompt_ids) {
      if (id >= tokenizer_->n_vocab()) {
        throw RequestError(ErrorCode::kBadRequest,
                           fmt::format("prompt token {} is outside the vocabulary of {}", id,
                                       tokenizer_->n_vocab()));
      }
    }
    return spec.prompt_ids;
  }
  if (!spec.chat) return tokenizer_->encode(spec.prompt, /*add_special=*/true, /*parse_special=*/false);
  if (!chat_) throw RequestError(ErrorCode::kBadRequest, "this model has no chat template");
  std::string text;
  try {
    text = chat_(spec.messages);
  } catch (const Error& e) {
    throw RequestError(ErrorCode::kBadRequest, e.what());
  }
  return tokenizer_->encode(text, /*add_special=*/true, /*parse_special=*/true);
}

std::shared_ptr<RequestHandle> Service::submit(const RequestSpec& spec,
                                               std::shared_ptr<RequestObserver> observer) {
  try {
    if (!ready()) throw RequestError(ErrorCode::kNotReady, "the model is still loading");
    GenerationRequest req;
    req.id = spec.id;
    req.arrival = Clock::now();
    req.prompt = tokenize(spec);
    if (req.prompt.empty()) throw RequestError(ErrorCode::kBadRequest, "the prompt is empty");
    req.sampling = spec.sampling;
    req.max_tokens = spec.max_tokens.value_or(options_.default_max_tokens);
    req.stop = spec.stop;
    req.ignore_eos = spec.ignore_eos;
    double timeout = spec.timeout_s.value_or(0.0);
    if (options_.max_request_seconds > 0.0) {
      timeout = timeout > 0.0 ? std::min(timeout, options_.max_request_seconds)
                              : options_.max_request_seconds;
    }
    if (timeout > 0.0) {
      req.deadline = req.arrival + std::chrono::duration_cast<Clock::duration>(
                                       std::chrono::duration<double>(timeout));
    }
    const int64_t n_prompt = static_cast<int64_t>(req.prompt.size());
    auto handle = std::make_shared<RequestHandle>(std::move(req), std::move(observer));
    if (auto refused = loop_->submit(handle)) {
      switch (*refused) {
        case ErrorCode::kTooLong:
          throw RequestError(*refused,
                             fmt::format("prompt of {} tokens does not fit the context of {} "
                                         "tokens (with room for one generated token)",
                                         n_prompt, loop_->context_limit()));
        case ErrorCode::kOverloaded:
          throw RequestError(*refused, "too many requests waiting; retry later");
        default:
          throw RequestError(*refused, "the server is shutting down");
      }
    }
    return handle;
  } catch (const RequestError& e) {
    count_refused(e.code());
    throw;
  }
}

void Service::cancel(RequestHandle& handle) {
  handle.cancel();
  if (loop_) loop_->wake();
}

}  // namespace tpnode::coord
