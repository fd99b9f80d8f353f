// One-shot all-reduce of F32 vectors between the GPUs of one host through CUDA IPC peer
// memory: every rank pushes its vector into a receive slot of every peer and every rank sums
// all contributions in rank order 0..size-1, so the result has the same bits on every rank and
// in every run. Two ways to tell a receiver that the data has landed:
//   LL (messages up to kOneShotLlMaxBytes, decode sizes): as in NCCL's LL protocol, each float
//      travels in an 8-byte word with the epoch of the call that wrote it, and an 8-byte store
//      lands whole, so a receiver that sees the epoch sees the value: no fence and no barrier,
//      the receiver spins on its own memory. Twice the bytes, so only for small messages.
//   flags (larger messages): plain floats, then __threadfence_system() and a per-block flag
//      in each peer's memory that the receiver waits for before reading.
//
// Memory (one IPC buffer per rank, zeroed before first use):
//   epochs  [kOneShotBlocks] u32: calls that block b of this rank took part in (either way).
//           Kept on the device so a captured CUDA graph replays correctly; calls start at 1.
//   flags   [kOneShotBlocks, kAllReduceMaxRanks] u32: flags[b][src] = last epoch at which rank
//           src's block b finished pushing plain floats into this rank
//   recv    [2, size, capacity] f32: flag-way slot [epoch % 2][src]
//   recv_ll [2, size, ll_capacity] LL words {f32, u32 epoch}: LL slot [epoch % 2][src]
//   norm_epochs [kOneShotNormMaxRows] u32, recv_norm [2, size, kOneShotNormMaxRows,
//           kOneShotNormMaxCols] LL words: the same for the all-reduce folded into RMSNorm
// Two halves: a rank may push call k+1 while a slower peer still reads call k; it cannot push
// call k+2 before it has the peer's data of call k+1, which the peer pushes only after its
// call k has completed (stream order). So no closing barrier. Every rank makes the same calls
// with the same n, so block b takes part in the same calls everywhere and its epoch agrees.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "kernels/cuda/elementwise.h"  // RmsNormParams
#include "kernels/cuda/gemv.h"         // GemvLlPush

namespace tpnode::cuda {

constexpr int kAllReduceMaxRanks = 8;
constexpr int kOneShotBlocks = 128;  // the most blocks either kernel runs
// LL up to this size (measured on two H200s: 2.3 us at 16 KiB against 7.2 us the flag way;
// even at 1 MiB, twice the bytes above).
constexpr size_t kOneShotLlMaxBytes = size_t{512} << 10;

// The all-reduce folded into RMSNorm (one_shot_all_reduce_rmsnorm) has receive slots and
// epochs of its own, with a fixed place per (row, column) whatever the row length: a word's
// place then always belongs to the same block, whose epochs only grow, so no old word can
// carry the epoch a reader waits for.
inline constexpr int64_t kOneShotNormMaxRows = 32;
inline constexpr int64_t kOneShotNormMaxCols = 4 * 4 * 1024;

// Codes the kernel writes to OneShotParams::error (host-mapped) when it gives up.
constexpr int32_t kOneShotAborted = 1;   // the host raised `abort` (a peer was lost)
constexpr int32_t kOneShotTimedOut = 2;  // a peer did not arrive within timeout_ns

// Byte offsets inside one rank's IPC buffer.
struct OneShotLayout {
  int size = 0;           // ranks
  int64_t capacity = 0;   // floats per receive slot (multiple of 4)

  static constexpr size_t kLlWordBytes = 8;  // value and epoch
  __host__ __device__ int64_t ll_capacity() const {
    constexpr int64_t kMax = static_cast<int64_t>(kOneShotLlMaxBytes / sizeof(float));
    return capacity < kMax ? capacity : kMax;
  }
  static constexpr size_t epochs_offset() { return 0; }
  static constexpr size_t flags_offset() { return epochs_offset() + sizeof(uint32_t) * kOneShotBlocks; }
  static constexpr size_t flags_bytes() {
    return sizeof(uint32_t) * kOneShotBlocks * kAllReduceMaxRanks;
  }
  static constexpr size_t recv_offset() { return (flags_offset() + flags_bytes() + 255) / 256 * 256; }
  __host__ __device__ size_t recv_ll_offset() const {
    return recv_offset() + sizeof(float) * 2 * static_cast<size_t>(size) * capacity;
  }
  __host__ __device__ size_t norm_epochs_offset() const {
    return recv_ll_offset() + kLlWordBytes * 2 * static_cast<size_t>(size) * ll_capacity();
  }
  __host__ __device__ size_t recv_norm_offset() const {
    return (norm_epochs_offset() + sizeof(uint32_t) * kOneShotNormMaxRows + 255) / 256 * 256;
  }
  size_t total_bytes() const {
    return recv_norm_offset() +
           kLlWordBytes * 2 * static_cast<size_t>(size) * kOneShotNormMaxRows * kOneShotNormMaxCols;
  }
};
static_assert(OneShotLayout::recv_offset() % 32 == 0, "receive slots must allow float4 access");

struct OneShotParams {
  float* data = nullptr;  // [n] this rank's partial sums, replaced by the total (device)
  int64_t n = 0;          // <= capacity
  int rank = 0;
  int size = 0;           // 2..kAllReduceMaxRanks
  int64_t capacity = 0;   // floats per receive slot, the same on every rank
  uint8_t* buffers[kAllReduceMaxRanks] = {};  // every rank's IPC buffer, mapped here
  const volatile int32_t* abort = nullptr;    // host-mapped; non-zero: waiting blocks give up
  volatile int32_t* error = nullptr;          // host-mapped; set to kOneShot* on giving up
  uint64_t timeout_ns = 0;
};

// Enqueues the all-reduce on `stream` (no host synchronisation; graph capturable; PDL). Every
// rank must make the same sequence of calls with the same n.
void one_shot_all_reduce(const OneShotParams& p, cudaStream_t stream);

// The all-reduce folded into the residual add and RMSNorm after it, one CTA per row: x_out =
// x + the sum over ranks of r (reduce.data, left as it was; the same rank-order sum as
// one_shot_all_reduce, so the same bits), then y = rmsnorm(x_out) * w with the norm's optional
// 8-bit copy. LL words only: rows * n * 4 <= kOneShotLlMaxBytes, rows <= kOneShotNormMaxRows,
// n % 4 == 0 and n <= kOneShotNormMaxCols. Counts as one call in every rank's sequence.
struct OneShotNormParams {
  OneShotParams reduce;  // n = norm.rows * norm.n; data = norm.r
  RmsNormParams norm;    // r and x_out set (x_out may be x)
  // The GEMV that wrote r has already sent it to the peers (GemvLlPush from
  // one_shot_norm_push); one row only.
  bool pushed = false;
};
static_assert(kGemvMaxPeers == kAllReduceMaxRanks - 1, "a GEMV's LL push reaches every peer");
// The LL push for a batch-1 GEMV whose output `reduce.data` (one row of reduce.n) the folded
// norm reduces next.
GemvLlPush one_shot_norm_push(const OneShotParams& reduce);
bool one_shot_rmsnorm_supports(int64_t rows, int64_t n);
void one_shot_all_reduce_rmsnorm(const OneShotNormParams& p, cudaStream_t stream);

}  // namespace tpnode::cuda
