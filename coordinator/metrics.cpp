#include "coordinator/metrics.h"

#include <fmt/format.h>

#include <algorithm>

namespace tpnode::coord {
namespace {

std::vector<double> latency_buckets() {
  return {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0};
}

void render_scalar(std::string& out, std::string_view name, std::string_view type,
                   std::string_view help, double value) {
  out += fmt::format("# HELP {} {}\n# TYPE {} {}\n{} {}\n", name, help, name, type, name, value);
}

}  // namespace

Histogram::Histogram(std::vector<double> upper_bounds)
    : bounds_(std::move(upper_bounds)), counts_(bounds_.size() + 1, 0) {}

void Histogram::observe(double value) {
  const auto it = std::lower_bound(bounds_.begin(), bounds_.end(), value);
  ++counts_[static_cast<size_t>(it - bounds_.begin())];
  sum_ += value;
  ++count_;
}

void Histogram::render(std::string& out, std::string_view name) const {
  uint64_t cumulative = 0;
  for (size_t i = 0; i < bounds_.size(); ++i) {
    cumulative += counts_[i];
    out += fmt::format("{}_bucket{{le=\"{}\"}} {}\n", name, bounds_[i], cumulative);
  }
  out += fmt::format("{}_bucket{{le=\"+Inf\"}} {}\n", name, count_);
  out += fmt::format("{}_sum {}\n{}_count {}\n", name, sum_, name, count_);
}

Metrics::Metrics()
    : ttft_(latency_buckets()), inter_token_(latency_buckets()), step_(latency_buckets()) {
  for (const char* outcome : {"stop", "length", "cancelled", "timeout"}) requests_[outcome] = 0;
}

void Metrics::count_request(std::string_view outcome) {
  std::lock_guard lock(mu_);
  auto it = requests_.find(outcome);
  if (it == requests_.end()) it = requests_.emplace(std::string(outcome), 0).first;
  ++it->second;
}

void Metrics::add_prompt_tokens(int64_t n) {
  std::lock_guard lock(mu_);
  prompt_tokens_ += static_cast<uint64_t>(n);
}

void Metrics::add_generated_tokens(int64_t n) {
  std::lock_guard lock(mu_);
  generated_tokens_ += static_cast<uint64_t>(n);
}

void Metrics::observe_ttft(double seconds) {
  std::lock_guard lock(mu_);
  ttft_.observe(seconds);
}

void Metrics::observe_inter_token(double seconds) {
  std::lock_guard lock(mu_);
  inter_token_.observe(seconds);
}

void Metrics::observe_step(double seconds, int64_t tokens) {
  std::lock_guard lock(mu_);
  step_.observe(seconds);
  ++steps_;
  step_tokens_ += static_cast<uint64_t>(tokens);
}

void Metrics::set_load(const LoadGauges& load) {
  std::lock_guard lock(mu_);
  load_ = load;
}

void Metrics::set_ready(bool ready) {
  std::lock_guard lock(mu_);
  ready_ = ready;
}

uint64_t Metrics::requests(std::string_view outcome) const {
  std::lock_guard lock(mu_);
  const auto it = requests_.find(outcome);
  return it == requests_.end() ? 0 : it->second;
}

std::string Metrics::render() const {
  std::lock_guard lock(mu_);
  std::string out;
  out += "# HELP tpnode_requests_total Requests that ended, by outcome.\n";
  out += "# TYPE tpnode_requests_total counter\n";
  for (const auto& [outcome, n] : requests_) {
    out += fmt::format("tpnode_requests_total{{outcome=\"{}\"}} {}\n", outcome, n);
  }
  render_scalar(out, "tpnode_ready", "gauge", "1 when the engine is loaded and serving.",
                ready_ ? 1 : 0);
  render_scalar(out, "tpnode_queue_depth", "gauge", "Requests waiting to be scheduled.",
                static_cast<double>(load_.queue_depth));
  render_scalar(out, "tpnode_running_sequences", "gauge", "Sequences holding KV blocks.",
                static_cast<double>(load_.running));
  render_scalar(out, "tpnode_kv_blocks_used", "gauge", "KV cache blocks in use.",
                static_cast<double>(load_.kv_blocks_used));
  render_scalar(out, "tpnode_kv_blocks_total", "gauge", "KV cache blocks in all.",
                static_cast<double>(load_.kv_blocks_total));
  render_scalar(out, "tpnode_prompt_tokens_total", "counter", "Prompt tokens of admitted requests.",
                static_cast<double>(prompt_tokens_));
  render_scalar(out, "tpnode_generated_tokens_total", "counter", "Tokens sampled.",
                static_cast<double>(generated_tokens_));
  render_scalar(out, "tpnode_steps_total", "counter", "Engine steps run.",
                static_cast<double>(steps_));
  render_scalar(out, "tpnode_step_tokens_total", "counter", "Tokens carried by engine steps.",
                static_cast<double>(step_tokens_));
  const struct {
    const Histogram& h;
    const char* name;
    const char* help;
  } histograms[] = {
      {ttft_, "tpnode_time_to_first_token_seconds", "Arrival to first generated token."},
      {inter_token_, "tpnode_inter_token_latency_seconds", "Time between generated tokens."},
      {step_, "tpnode_step_duration_seconds", "Duration of one engine step."},
  };
  for (const auto& h : histograms) {
    out += fmt::format("# HELP {} {}\n# TYPE {} histogram\n", h.name, h.help, h.name);
    h.h.render(out, h.name);
  }
  return out;
}

}  // namespace tpnode::coord
