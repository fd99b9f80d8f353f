// The scheduler's private state of one request: its tokens, how many are in the KV cache,
// its sampler and stop-string matcher, and its timings.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "coordinator/request.h"
#include "coordinator/stop_matcher.h"
#include "node/engine/sampler.h"

namespace tpnode::coord {

struct Sequence {
  enum class State { kWaiting, kRunning, kFinished };

  Sequence(std::shared_ptr<RequestHandle> h, uint64_t id, uint64_t arrival_order)
      : handle(std::move(h)),
        seq_id(id),
        order(arrival_order),
        tokens(handle->request().prompt),
        n_prompt(static_cast<int64_t>(tokens.size())),
        sampler(handle->request().sampling),
        stop(handle->request().stop) {}

  const GenerationRequest& request() const { return handle->request(); }
  int64_t n_tokens() const { return static_cast<int64_t>(tokens.size()); }
  int64_t n_generated() const { return n_tokens() - n_prompt; }
  // Tokens not yet in the KV cache: a prompt (or recompute) tail, or the last sampled token.
  int64_t n_uncomputed() const { return n_tokens() - n_computed; }

  std::shared_ptr<RequestHandle> handle;
  uint64_t seq_id;
  uint64_t order;  // arrival order: FIFO admission, and the youngest is preempted first
  State state = State::kWaiting;
  std::vector<int32_t> tokens;  // prompt + generated; the sampler's history
  int64_t n_prompt;
  int64_t n_computed = 0;  // tokens whose K,V are in the cache
  bool admitted_once = false;
  int64_t preemptions = 0;
  Sampler sampler;
  StopMatcher stop;
  Clock::time_point first_token{};
  Clock::time_point last_token{};
};

}  // namespace tpnode::coord
