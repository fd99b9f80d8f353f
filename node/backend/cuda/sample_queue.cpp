#include "node/backend/cuda/sample_queue.h"

#include <algorithm>
#include <cstring>

#include "kernels/cuda/cuda_check.h"
#include "node/common/error.h"

namespace tpnode::cuda {

SampleRowParams device_row(const ::tpnode::SampleRow& r) {
  // A greedy row's draw reads nothing but these three, so greedy steps in a row have the same
  // parameters (SampleQueue then skips their upload).
  if (greedy_row(r.temperature, r.top_k)) {
    return {.logit_row = r.logit_row, .temperature = r.temperature, .top_k = r.top_k};
  }
  return {.logit_row = r.logit_row,
          .temperature = r.temperature,
          .top_k = r.top_k,
          .top_p = r.top_p,
          .min_p = r.min_p,
          .pad = 0,
          .seed = r.seed,
          .draw = r.draw};
}

SampleQueue::SampleQueue(DeviceMemory& mem, cudaStream_t stream, size_t max_rows)
    : mem_(mem), stream_(stream), max_rows_(max_rows) {
  params_ = static_cast<SampleRowParams*>(
      mem_.alloc(max_rows_ * sizeof(SampleRowParams), "sampling parameters"));
  ids_ = static_cast<int32_t*>(mem_.alloc(max_rows_ * sizeof(int32_t), "sampled tokens"));
  TPNODE_CUDA_CHECK(cudaMemsetAsync(ids_, 0, max_rows_ * sizeof(int32_t), stream_));
  partials_ = static_cast<unsigned long long*>(mem_.alloc(
      max_rows_ * kSampleMaxSplits * sizeof(unsigned long long), "split argmax partials"));
  counters_ = static_cast<unsigned*>(mem_.alloc(max_rows_ * sizeof(unsigned), "split argmax tickets"));
  TPNODE_CUDA_CHECK(cudaMemsetAsync(counters_, 0, max_rows_ * sizeof(unsigned), stream_));
  TPNODE_CUDA_CHECK(cudaStreamCreateWithFlags(&copies_, cudaStreamNonBlocking));
  TPNODE_CUDA_CHECK(cudaEventCreateWithFlags(&drawn_, cudaEventDisableTiming));
  on_device_.reserve(max_rows_);
  for (Slot& s : slots_) {
    TPNODE_CUDA_CHECK(cudaMallocHost(reinterpret_cast<void**>(&s.params),
                                     max_rows_ * sizeof(SampleRowParams)));
    TPNODE_CUDA_CHECK(cudaMallocHost(reinterpret_cast<void**>(&s.ids), max_rows_ * sizeof(int32_t)));
    TPNODE_CUDA_CHECK(cudaEventCreateWithFlags(&s.done, cudaEventDisableTiming));
  }
}

SampleQueue::~SampleQueue() {
  for (Slot& s : slots_) {
    if (s.done) cudaEventSynchronize(s.done);
    if (s.params) cudaFreeHost(s.params);
    if (s.ids) cudaFreeHost(s.ids);
    if (s.done) cudaEventDestroy(s.done);
  }
  if (drawn_) cudaEventDestroy(drawn_);
  if (copies_) cudaStreamDestroy(copies_);
  mem_.free(params_);
  mem_.free(ids_);
  mem_.free(partials_);
  mem_.free(counters_);
}

void SampleQueue::push(const float* logits, int64_t n_vocab,
                       const std::vector<::tpnode::SampleRow>& rows) {
  TPNODE_CHECK(outstanding_ < 2, "sampling: two draws are already outstanding");
  TPNODE_CHECK(!rows.empty() && rows.size() <= max_rows_, "sampling: {} rows (at most {})",
               rows.size(), max_rows_);
  Slot& s = slots_[next_push_];
  // The slot's last draw was taken (outstanding < 2), so its copies have completed.
  bool all_greedy = true;
  for (size_t i = 0; i < rows.size(); ++i) {
    s.params[i] = device_row(rows[i]);
    all_greedy = all_greedy && greedy_row(rows[i].temperature, rows[i].top_k);
  }
  s.n = rows.size();
  // The device keeps the last parameters: a draw with the same ones (greedy decode steps)
  // uploads nothing.
  if (on_device_.size() != s.n ||
      std::memcmp(on_device_.data(), s.params, s.n * sizeof(SampleRowParams)) != 0) {
    TPNODE_CUDA_CHECK(cudaMemcpyAsync(params_, s.params, s.n * sizeof(SampleRowParams),
                                      cudaMemcpyHostToDevice, stream_));
    on_device_.assign(s.params, s.params + s.n);
  }
  // The last draw's ids must have left ids_ before this one overwrites them (before any draw,
  // the event was never recorded and the wait passes at once).
  TPNODE_CUDA_CHECK(cudaStreamWaitEvent(stream_, slots_[next_push_ ^ 1].done, 0));
  sample_tokens({.logits = logits,
                 .n_vocab = n_vocab,
                 .rows = params_,
                 .n_rows = static_cast<int32_t>(s.n),
                 .tokens = ids_,
                 .best = nullptr,
                 .all_greedy = all_greedy,
                 .partials = partials_,
                 .counters = counters_},
                stream_);
  // The ids come down on a stream of their own, so the next step (queued behind this draw on
  // the main stream) need not wait for the copy.
  TPNODE_CUDA_CHECK(cudaEventRecord(drawn_, stream_));
  TPNODE_CUDA_CHECK(cudaStreamWaitEvent(copies_, drawn_, 0));
  TPNODE_CUDA_CHECK(
      cudaMemcpyAsync(s.ids, ids_, s.n * sizeof(int32_t), cudaMemcpyDeviceToHost, copies_));
  TPNODE_CUDA_CHECK(cudaEventRecord(s.done, copies_));
  next_push_ ^= 1;
  ++outstanding_;
}

void SampleQueue::take(int32_t* tokens, size_t n) {
  TPNODE_CHECK(outstanding_ > 0, "sampling: no draw to take");
  // The oldest outstanding draw: one push back when two are out, else the last one.
  Slot& s = slots_[outstanding_ == 2 ? next_push_ : next_push_ ^ 1];
  TPNODE_CHECK(n == s.n, "sampling: taking {} ids of a draw of {}", n, s.n);
  TPNODE_CUDA_CHECK(cudaEventSynchronize(s.done));
  std::copy_n(s.ids, n, tokens);
  --outstanding_;
}

}  // namespace tpnode::cuda
