// Server counters, gauges and latency histograms, rendered in the Prometheus text format
// (version 0.0.4) for GET /metrics. Written by the step loop and the network threads.
#pragma once

#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

namespace tpnode::coord {

class Histogram {
 public:
  explicit Histogram(std::vector<double> upper_bounds);
  void observe(double value);
  // Appends the _bucket/_sum/_count lines of metric `name`.
  void render(std::string& out, std::string_view name) const;

 private:
  std::vector<double> bounds_;
  std::vector<uint64_t> counts_;  // per bucket, not cumulative; last is +Inf
  double sum_ = 0.0;
  uint64_t count_ = 0;
};

struct LoadGauges {
  int64_t queue_depth = 0;
  int64_t running = 0;
  int64_t kv_blocks_used = 0;
  int64_t kv_blocks_total = 0;
};

class Metrics {
 public:
  Metrics();

  // outcome: a finish reason ("stop", "length", ...) or an error code ("overloaded", ...).
  void count_request(std::string_view outcome);
  void add_prompt_tokens(int64_t n);
  void add_generated_tokens(int64_t n);
  void observe_ttft(double seconds);
  void observe_inter_token(double seconds);
  void observe_step(double seconds, int64_t tokens);
  void set_load(const LoadGauges& load);
  void set_ready(bool ready);

  std::string render() const;
  uint64_t requests(std::string_view outcome) const;  // for tests

 private:
  mutable std::mutex mu_;
  std::map<std::string, uint64_t, std::less<>> requests_;
  uint64_t prompt_tokens_ = 0;
  uint64_t generated_tokens_ = 0;
  uint64_t steps_ = 0;
  uint64_t step_tokens_ = 0;
  LoadGauges load_;
  bool ready_ = false;
  Histogram ttft_;
  Histogram inter_token_;
  Histogram step_;
};

}  // namespace tpnode::coord
