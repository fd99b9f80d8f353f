// Continuous batching on rank 0, with no sockets and no threads: each iteration plan()
// chooses what runs (decodes first, then prefill chunks, under a token budget), the caller
// runs the plan, and complete() takes the sampled tokens (sampling on the host the rows that
// came back as logits), streams text and retires finished requests.
#pragma once

#include <cstdint>
#include <deque>
#include <memory>
#include <vector>

#include "coordinator/request.h"
#include "node/engine/kv_blocks.h"
#include "node/engine/step_plan.h"

namespace tpnode {
class Tokenizer;
}

namespace tpnode::coord {

class Metrics;
struct Sequence;

struct SchedulerOptions {
  int64_t max_batch_tokens = 512;  // tokens one step may carry
  int64_t max_seqs = 16;           // sequences one step may carry
  int64_t max_context = 2048;      // tokens per sequence, prompt + generated
  // Let the engine sample requests without penalties where the logits are (it returns
  // logits when it cannot); false samples every request on the host.
  bool device_sampling = true;
};

class Scheduler {
 public:
  // `kv` and `tokenizer` must outlive the scheduler; `metrics` may be null.
  Scheduler(const SchedulerOptions& options, KvBlockManager& kv, const Tokenizer& tokenizer,
            Metrics* metrics);
  ~Scheduler();
  Scheduler(const Scheduler&) = delete;
  Scheduler& operator=(const Scheduler&) = delete;

  // Most tokens a sequence may hold: the context, or the whole KV cache if that is smaller.
  int64_t context_limit() const { return context_limit_; }
  // Queues a request; one that can never fit ends at once with too_long.
  void add(std::shared_ptr<RequestHandle> handle);

  // Ends cancelled and expired requests, then builds the next step. An empty plan means
  // there is nothing to run.
  StepPlan plan(Clock::time_point now);
  // While the plan of the last plan() call runs (not yet completed), the step after it, for
  // an executor that chains: every running sequence of that plan decodes the token the plan
  // draws for it on the device (kChainedToken), one position on. Empty (nothing planned)
  // unless every running sequence with work can go on so, no other is left waiting for a
  // plan, and no step is planned ahead yet. Cancelled and expired requests end first.
  StepPlan plan_ahead(Clock::time_point now);
  // Consumes the output of the oldest plan not yet completed: one row per sequence with
  // want_logits, a token sampled on the device or logits to sample here. Rows of sequences
  // that ended meanwhile (their last token came in the plan before) are dropped.
  void complete(const StepPlan& plan, const StepOutput& out);

  // Ends every request, running or waiting, with `reason` (kCancelled when draining).
  void end_all(FinishReason reason);
  // Ends the requests of the oldest plan not yet completed with an internal error (the step
  // failed), or of the newest with `newest` (a plan ahead that could not be submitted).
  void fail_planned(const std::string& message, bool newest = false);
  bool in_flight() const { return !in_flight_.empty(); }

  bool has_work() const { return !running_.empty() || !waiting_.empty(); }
  int64_t waiting() const { return static_cast<int64_t>(waiting_.size()); }
  int64_t running() const { return static_cast<int64_t>(running_.size()); }
  int64_t preemptions() const { return preemptions_; }
  const KvBlockManager& kv() const { return kv_; }

 private:
  struct Planned {
    Sequence* seq;
    int64_t n_new;
  };

  void expire(Clock::time_point now);
  void schedule_running(bool decodes, int64_t& budget, bool& preempted);
  void admit_waiting(int64_t& budget);
  void preempt(Sequence* victim, int64_t& budget);
  void insert_waiting(std::unique_ptr<Sequence> seq);
  void insert_running(std::unique_ptr<Sequence> seq);
  // Appends `token` to `seq`, streams its text, and finishes it when it is done.
  void advance(Sequence& seq, int32_t token);
  void finish(Sequence& seq, FinishReason reason);
  void finish_error(Sequence& seq, ErrorCode code, const std::string& message);
  void report_end(Sequence& seq, RequestEnd end);
  void erase_finished();

  SchedulerOptions options_;
  KvBlockManager& kv_;
  const Tokenizer& tokenizer_;
  Metrics* metrics_;
  int64_t context_limit_;
  uint64_t next_seq_id_ = 1;
  uint64_t next_order_ = 0;
  uint64_t step_ = 0;
  int64_t preemptions_ = 0;
  std::deque<std::unique_ptr<Sequence>> waiting_;  // by arrival order
  std::vector<std::unique_ptr<Sequence>> running_;  // by arrival order
  // Plans returned and not yet completed, oldest first (at most two: one planned ahead).
  struct InFlight {
    uint64_t step;
    std::vector<Planned> planned;
  };
  std::vector<Planned> planned_;  // what plan() is building
  std::deque<InFlight> in_flight_;
};

}  // namespace tpnode::coord
