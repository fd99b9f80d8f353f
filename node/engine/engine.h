// One rank's model: its weight shard on a Backend, the forward over that Backend, and the
// two collectives per layer through a Collective.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "node/engine/backend.h"
#include "node/engine/collective.h"
#include "node/engine/shard_plan.h"
#include "node/engine/step_plan.h"
#include "node/engine/weight_source.h"
#include "node/model/model_file.h"

namespace tpnode {

inline constexpr int64_t kHostMaxSeqs = 16;
inline constexpr int64_t kDeviceMaxSeqs = 256;
// Device memory an automatic KV cache leaves to the backend's own scratch (GEMM staging and
// workspaces, graphs, activation copies), besides a twentieth of what is left.
inline constexpr uint64_t kDeviceScratchReserve = uint64_t{3} << 29;  // 1.5 GiB

struct EngineOptions {
  int64_t kv_block_size = 16;
  // KV capacity in tokens; 0 = from kv_bytes, else automatic: on a backend with a memory budget
  // (a GPU) what it has left after the weights and step buffers, less a reserve for its own
  // scratch, at most max_seqs sequences of max_context; on host memory 4 * max_context.
  int64_t kv_tokens = 0;
  int64_t kv_bytes = 0;    // KV capacity in bytes of this rank's cache (used when kv_tokens = 0)
  int64_t max_context = 0; // per sequence; 0 = the model's training context, capped at 4096
  int64_t max_batch_tokens = 512;  // most tokens one step may carry
  // Most sequences one step may carry; 0 = kDeviceMaxSeqs on a backend with a memory budget,
  // kHostMaxSeqs on host memory.
  int64_t max_seqs = 0;
  // Called while loading with (bytes done, bytes total); may be empty.
  std::function<void(uint64_t, uint64_t)> progress;
};

class Engine {
 public:
  // Loads this rank's shard (rank and size from `collective`) of the weights in `weights`.
  // Throws tpnode::Error when the tp size cannot split the model (listing the valid ones)
  // or when the KV cache does not fit.
  Engine(const HParams& hp, WeightSource& weights, Backend& backend, Collective& collective,
         const EngineOptions& options);
  ~Engine();
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  // Runs one step. On rank 0 returns one row per sequence with want_logits, in plan order
  // (StepOutput): the sampled token for the rows that ask for device sampling when this
  // engine can sample (a backend with can_sample() and one rank), logits for the others. On
  // other ranks returns an empty output. Tensor-parallel engines always return logits: each
  // rank holds a slice of the vocabulary, and rank 0 samples after the gather.
  const StepOutput& run(const StepPlan& plan) {
    submit(plan);
    return collect();
  }
  // run() in two halves, so that the host can queue a step while the one before it runs:
  // submit() checks and enqueues a step; collect() waits for the oldest uncollected step and
  // returns its output (valid until the next collect). At most two steps are uncollected. On
  // an engine that chains(), a decode sequence whose previous submitted step drew its token
  // on the device may pass that token as kChainedToken: the device reads it there, so the
  // step can be submitted before the host has the token. A step that returns logits or runs
  // tensor parallel completes inside submit().
  void submit(const StepPlan& plan);
  const StepOutput& collect();
  // One rank on a backend that draws tokens asynchronously and reads chained ones.
  bool chains() const;
  // run()'s logits: all of [plan.n_logits(), n_vocab] when the plan asks for no device
  // sampling (the form tests and benchmarks use).
  const std::vector<float>& step(const StepPlan& plan) { return run(plan).logits; }

  const HParams& hparams() const { return hp_; }
  const ShardPlan& shard() const { return shard_; }
  const EngineOptions& options() const { return options_; }
  int64_t kv_blocks() const { return kv_blocks_; }
  int64_t max_context() const { return options_.max_context; }
  uint64_t weight_bytes() const { return weight_bytes_; }  // this rank's shard

 private:
  struct Impl;
  int64_t auto_kv_blocks(Backend& backend, Collective& collective, int64_t bytes_per_block) const;
  std::unique_ptr<Impl> impl_;
  HParams hp_;
  ShardPlan shard_;
  EngineOptions options_;
  int64_t kv_blocks_ = 0;
  uint64_t weight_bytes_ = 0;
};

}  // namespace tpnode
