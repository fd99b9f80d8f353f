#include "coordinator/scheduler.h"

#include <spdlog/spdlog.h>

#include <algorithm>

#include "coordinator/metrics.h"
#include "coordinator/sequence.h"
#include "node/common/error.h"
#include "node/model/tokenizer.h"

namespace tpnode::coord {
namespace {

double seconds_between(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

}  // namespace

Scheduler::Scheduler(const SchedulerOptions& options, KvBlockManager& kv,
                     const Tokenizer& tokenizer, Metrics* metrics)
    : options_(options), kv_(kv), tokenizer_(tokenizer), metrics_(metrics) {
  TPNODE_CHECK(options_.max_batch_tokens > 0 && options_.max_seqs > 0 && options_.max_context > 1,
               "scheduler: max_batch_tokens {}, max_seqs {} and max_context {} must be positive",
               options_.max_batch_tokens, options_.max_seqs, options_.max_context);
  // Every running sequence needs at least one token of each step's budget.
  options_.max_seqs = std::min(options_.max_seqs, options_.max_batch_tokens);
  // A lone sequence must always fit the cache, or it could neither grow nor be re-admitted.
  context_limit_ = std::min(options_.max_context, kv_.total_blocks() * kv_.block_size());
}

Scheduler::~Scheduler() = default;

void Scheduler::add(std::shared_ptr<RequestHandle> handle) {
  auto seq = std::make_unique<Sequence>(std::move(handle), next_seq_id_++, next_order_++);
  std::string bad_sampling;
  try {
    seq->request().sampling.validate();
  } catch (const Error& e) {
    bad_sampling = e.what();
  }
  if (!bad_sampling.empty()) {
    finish_error(*seq, ErrorCode::kBadRequest, bad_sampling);
  } else if (seq->n_prompt == 0) {
    finish_error(*seq, ErrorCode::kBadRequest, "the prompt is empty");
  } else if (seq->n_prompt + 1 > context_limit_) {
    finish_error(*seq, ErrorCode::kTooLong,
                 fmt::format("prompt of {} tokens leaves no room in the context of {} tokens",
                             seq->n_prompt, context_limit_));
  } else {
    insert_waiting(std::move(seq));
  }
}

void Scheduler::insert_waiting(std::unique_ptr<Sequence> seq) {
  seq->state = Sequence::State::kWaiting;
  auto pos = std::upper_bound(waiting_.begin(), waiting_.end(), seq->order,
                              [](uint64_t order, const auto& s) { return order < s->order; });
  waiting_.insert(pos, std::move(seq));
}

void Scheduler::insert_running(std::unique_ptr<Sequence> seq) {
  seq->state = Sequence::State::kRunning;
  auto pos = std::upper_bound(running_.begin(), running_.end(), seq->order,
                              [](uint64_t order, const auto& s) { return order < s->order; });
  running_.insert(pos, std::move(seq));
}

void Scheduler::expire(Clock::time_point now) {
  const auto check = [&](Sequence& seq) {
    if (seq.handle->cancelled()) {
      finish(seq, FinishReason::kCancelled);
    } else if (now >= seq.request().deadline) {
      finish(seq, FinishReason::kTimeout);
    }
  };
  for (auto& seq : running_) check(*seq);
  for (auto& seq : waiting_) check(*seq);
  erase_finished();
}

StepPlan Scheduler::plan(Clock::time_point now) {
  TPNODE_CHECK_KIND(in_flight_.empty(), ErrorKind::kRuntime,
                    "scheduler: plan() while step {} is not completed", in_flight_.front().step);
  planned_.clear();
  expire(now);
  int64_t budget = options_.max_batch_tokens;
  bool preempted = false;
  // Decodes first, so a long prompt's prefill never delays the tokens of running requests.
  schedule_running(/*decodes=*/true, budget, preempted);
  schedule_running(/*decodes=*/false, budget, preempted);
  // Admitting right after a preemption would only hand the freed blocks to a newcomer.
  if (!preempted) admit_waiting(budget);

  StepPlan plan;
  if (planned_.empty()) return plan;
  plan.step = ++step_;
  plan.seqs.reserve(planned_.size());
  for (const Planned& p : planned_) {
    const Sequence& s = *p.seq;
    SeqStep step;
    step.seq_id = s.seq_id;
    step.n_past = static_cast<int32_t>(s.n_computed);
    step.tokens.assign(s.tokens.begin() + s.n_computed, s.tokens.begin() + s.n_computed + p.n_new);
    step.blocks = kv_.table(s.seq_id);
    step.want_logits = s.n_computed + p.n_new == s.n_tokens();
    // Requests without penalties may be sampled where the logits are; the engine decides
    // whether it can, and returns logits otherwise.
    if (step.want_logits && options_.device_sampling) {
      step.sampling = device_sampling_for(s.request().sampling);
    }
    plan.seqs.push_back(std::move(step));
  }
  in_flight_.push_back({plan.step, std::move(planned_)});
  planned_.clear();
  if (spdlog::should_log(spdlog::level::debug)) {
    spdlog::debug("step {}: {} seqs, {} tokens; running {}, waiting {}, kv free {}/{}", plan.step,
                  plan.seqs.size(), options_.max_batch_tokens - budget, running_.size(),
                  waiting_.size(), kv_.free_blocks(), kv_.total_blocks());
  }
  return plan;
}

void Scheduler::schedule_running(bool decodes, int64_t& budget, bool& preempted) {
  std::vector<Sequence*> candidates;
  candidates.reserve(running_.size());
  for (auto& s : running_) candidates.push_back(s.get());
  for (Sequence* seq : candidates) {
    if (budget <= 0) break;
    if (seq->state != Sequence::State::kRunning) continue;  // preempted earlier in this step
    const bool is_decode = seq->n_uncomputed() == 1;
    if (is_decode != decodes) continue;
    const int64_t n_new = std::min(seq->n_uncomputed(), budget);
    bool fits = true;
    while (!kv_.reserve(seq->seq_id, seq->n_computed + n_new)) {
      // Out of blocks: the youngest running sequence gives its blocks back, which may be
      // this one (then it waits and is recomputed later).
      Sequence* victim = running_.back().get();
      preempt(victim, budget);
      preempted = true;
      if (victim == seq) {
        fits = false;
        break;
      }
    }
    if (!fits) continue;
    planned_.push_back({seq, n_new});
    budget -= n_new;
  }
}

void Scheduler::preempt(Sequence* victim, int64_t& budget) {
  auto planned = std::find_if(planned_.begin(), planned_.end(),
                              [&](const Planned& p) { return p.seq == victim; });
  if (planned != planned_.end()) {
    budget += planned->n_new;
    planned_.erase(planned);
  }
  kv_.release(victim->seq_id);
  victim->n_computed = 0;
  ++victim->preemptions;
  ++preemptions_;
  spdlog::debug("request {} preempted after {} tokens (KV cache full)", victim->request().id,
                victim->n_tokens());
  auto it = std::find_if(running_.begin(), running_.end(),
                         [&](const auto& s) { return s.get() == victim; });
  std::unique_ptr<Sequence> owned = std::move(*it);
  running_.erase(it);
  insert_waiting(std::move(owned));
}

void Scheduler::admit_waiting(int64_t& budget) {
  while (!waiting_.empty() && budget > 0 &&
         static_cast<int64_t>(running_.size()) < options_.max_seqs) {
    Sequence& seq = *waiting_.front();
    // Admit only when its whole prompt and first token fit, so it does not evict at once;
    // strict FIFO: when the oldest does not fit, younger ones wait too.
    const int64_t need = kv_.blocks_for(std::min(seq.n_tokens() + 1, context_limit_));
    if (need > kv_.free_blocks()) break;
    const int64_t n_new = std::min(seq.n_uncomputed(), budget);
    TPNODE_CHECK_KIND(kv_.reserve(seq.seq_id, n_new), ErrorKind::kRuntime,
                      "scheduler: KV reservation of {} tokens failed after the admission check",
                      n_new);
    if (!seq.admitted_once) {
      seq.admitted_once = true;
      if (metrics_) metrics_->add_prompt_tokens(seq.n_prompt);
    }
    planned_.push_back({&seq, n_new});
    budget -= n_new;
    std::unique_ptr<Sequence> owned = std::move(waiting_.front());
    waiting_.pop_front();
    insert_running(std::move(owned));
  }
}

StepPlan Scheduler::plan_ahead(Clock::time_point now) {
  StepPlan plan;
  if (in_flight_.size() != 1 || !options_.device_sampling) return plan;
  expire(now);
  // Requests that could start now go through plan() instead.
  if (!waiting_.empty() && static_cast<int64_t>(running_.size()) < options_.max_seqs) return plan;
  const std::vector<Planned>& current = in_flight_.front().planned;
  const auto is_running = [](const Sequence& s) { return s.state == Sequence::State::kRunning; };
  // A running sequence left out of the current step needs plan().
  const auto n_running = std::count_if(running_.begin(), running_.end(),
                                       [&](const auto& s) { return is_running(*s); });
  const auto n_current = std::count_if(current.begin(), current.end(),
                                       [&](const Planned& p) { return is_running(*p.seq); });
  if (n_current != n_running) return plan;
  std::vector<Planned> ahead;
  for (const Planned& p : current) {
    Sequence& s = *p.seq;
    if (!is_running(s)) continue;
    // Still in its prompt after the current step: its next chunk needs plan().
    if (s.n_computed + p.n_new != s.n_tokens()) return {};
    const DeviceSampling sampling = device_sampling_for(s.request().sampling);
    if (!sampling.enabled) return {};
    const GenerationRequest& req = s.request();
    // Its token from the current step ends it (length): no step after.
    if (s.n_generated() + 1 >= req.max_tokens || s.n_tokens() + 1 >= context_limit_) continue;
    // plan() may preempt. (Blocks reserved for the others stay theirs: they need them next.)
    if (!kv_.reserve(s.seq_id, s.n_tokens() + 1)) return {};
    SeqStep step;
    step.seq_id = s.seq_id;
    step.n_past = static_cast<int32_t>(s.n_tokens());
    step.tokens = {kChainedToken};
    step.blocks = kv_.table(s.seq_id);
    step.want_logits = true;
    step.sampling = sampling;
    plan.seqs.push_back(std::move(step));
    ahead.push_back({&s, 1});
  }
  if (plan.seqs.empty()) return plan;
  plan.step = ++step_;
  in_flight_.push_back({plan.step, std::move(ahead)});
  return plan;
}

void Scheduler::complete(const StepPlan& plan, const StepOutput& out) {
  TPNODE_CHECK_KIND(!in_flight_.empty() && plan.step == in_flight_.front().step &&
                        plan.seqs.size() == in_flight_.front().planned.size(),
                    ErrorKind::kRuntime,
                    "scheduler: complete() for step {} does not match the oldest plan", plan.step);
  const std::vector<Planned> planned = std::move(in_flight_.front().planned);
  in_flight_.pop_front();
  const int64_t n_rows = plan.n_logits();
  TPNODE_CHECK_KIND(out.tokens.empty() || static_cast<int64_t>(out.tokens.size()) == n_rows,
                    ErrorKind::kRuntime, "scheduler: {} token rows for {} sequences",
                    out.tokens.size(), n_rows);
  int64_t n_host = 0;
  for (int64_t r = 0; r < n_rows; ++r) n_host += out.sampled(static_cast<size_t>(r)) ? 0 : 1;
  int64_t n_vocab = 0;
  if (n_host > 0) {
    TPNODE_CHECK_KIND(!out.logits.empty() && out.logits.size() % static_cast<size_t>(n_host) == 0,
                      ErrorKind::kRuntime, "scheduler: {} logits for {} sequences",
                      out.logits.size(), n_host);
    n_vocab = static_cast<int64_t>(out.logits.size()) / n_host;
  }
  size_t row = 0;
  int64_t host_row = 0;
  for (size_t i = 0; i < planned.size(); ++i) {
    Sequence& seq = *planned[i].seq;
    if (seq.state != Sequence::State::kRunning) {
      // Ended while this step ran (by the step before it, a cancel or a deadline).
      if (plan.seqs[i].want_logits) host_row += out.sampled(row++) ? 0 : 1;
      continue;
    }
    seq.n_computed += planned[i].n_new;
    if (!plan.seqs[i].want_logits) continue;
    int32_t token;
    if (out.sampled(row)) {
      token = out.tokens[row];
    } else {
      const float* logits = out.logits.data() + host_row * n_vocab;
      token = seq.sampler.sample(std::span<const float>(logits, static_cast<size_t>(n_vocab)),
                                 seq.tokens);
      ++host_row;
    }
    ++row;
    advance(seq, token);
  }
  erase_finished();
}

void Scheduler::advance(Sequence& seq, int32_t token) {
  seq.tokens.push_back(token);
  const auto now = Clock::now();
  if (metrics_) {
    metrics_->add_generated_tokens(1);
    if (seq.n_generated() == 1) {
      metrics_->observe_ttft(seconds_between(seq.request().arrival, now));
    } else {
      metrics_->observe_inter_token(seconds_between(seq.last_token, now));
    }
  }
  if (seq.n_generated() == 1) seq.first_token = now;
  seq.last_token = now;

  const GenerationRequest& req = seq.request();
  if (!req.ignore_eos && tokenizer_.is_eog(token)) {
    finish(seq, FinishReason::kStop);
    return;
  }
  StopMatcher::Output out = seq.stop.push(tokenizer_.token_to_piece(token));
  if (!out.text.empty()) seq.handle->observer().on_text(out.text);
  if (out.stopped) {
    finish(seq, FinishReason::kStop);
  } else if (seq.n_generated() >= req.max_tokens || seq.n_tokens() >= context_limit_) {
    finish(seq, FinishReason::kLength);
  }
}

void Scheduler::finish(Sequence& seq, FinishReason reason) {
  if (reason == FinishReason::kStop || reason == FinishReason::kLength) {
    const std::string rest = seq.stop.flush();
    if (!rest.empty()) seq.handle->observer().on_text(rest);
  }
  RequestEnd end;
  end.reason = reason;
  report_end(seq, std::move(end));
}

void Scheduler::finish_error(Sequence& seq, ErrorCode code, const std::string& message) {
  RequestEnd end;
  end.reason = FinishReason::kError;
  end.error_code = code;
  end.error_message = message;
  report_end(seq, std::move(end));
}

void Scheduler::report_end(Sequence& seq, RequestEnd end) {
  if (seq.state == Sequence::State::kFinished) return;
  seq.state = Sequence::State::kFinished;
  kv_.release(seq.seq_id);
  const auto now = Clock::now();
  const GenerationRequest& req = seq.request();
  end.usage.prompt_tokens = seq.n_prompt;
  end.usage.completion_tokens = seq.n_generated();
  end.ttft_seconds = seq.n_generated() > 0 ? seconds_between(req.arrival, seq.first_token) : 0.0;
  end.total_seconds = seconds_between(req.arrival, now);
  const std::string_view outcome =
      end.reason == FinishReason::kError ? to_string(end.error_code) : to_string(end.reason);
  if (metrics_) metrics_->count_request(outcome);
  spdlog::info("request {} {}: prompt {} tokens, generated {}, ttft {:.1f} ms, total {:.1f} ms{}",
               req.id, outcome, end.usage.prompt_tokens, end.usage.completion_tokens,
               end.ttft_seconds * 1e3, end.total_seconds * 1e3,
               seq.preemptions ? fmt::format(", preempted {}x", seq.preemptions) : "");
  seq.handle->observer().on_end(end);
}

void Scheduler::erase_finished() {
  // A plan in flight still names its sequences: they go once it is completed.
  const auto done = [&](const auto& s) {
    if (s->state != Sequence::State::kFinished) return false;
    for (const InFlight& f : in_flight_) {
      for (const Planned& p : f.planned) {
        if (p.seq == s.get()) return false;
      }
    }
    return true;
  };
  std::erase_if(running_, done);
  std::erase_if(waiting_, done);
}

void Scheduler::end_all(FinishReason reason) {
  for (auto& seq : running_) finish(*seq, reason);
  for (auto& seq : waiting_) finish(*seq, reason);
  planned_.clear();
  in_flight_.clear();
  erase_finished();
}

void Scheduler::fail_planned(const std::string& message, bool newest) {
  if (in_flight_.empty()) return;
  const std::vector<Planned> planned =
      std::move(newest ? in_flight_.back().planned : in_flight_.front().planned);
  if (newest) {
    in_flight_.pop_back();
  } else {
    in_flight_.pop_front();
  }
  for (const Planned& p : planned) finish_error(*p.seq, ErrorCode::kInternal, message);
  erase_finished();
}

}  // namespace tpnode::coord
