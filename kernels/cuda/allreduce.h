// One-shot all-reduce of F32 vectors between the GPUs of one host through CUDA IPC peer
// memory: every rank pushes its vector into a receive slot of every peer, the ranks meet at a
// per-block barrier of flags in peer memory, and every rank sums all contributions in rank
// order 0..size-1, so the result has the same bits on every rank and in every run.
//
// Memory (one IPC buffer per rank, zeroed before first use):
//   flags  [kOneShotBlocks, kAllReduceMaxRanks] u32: flags[b][src] = last epoch at which rank
//          src's block b finished pushing into this rank
//   epochs [kOneShotBlocks] u32: calls that block b of this rank took part in. Kept on the
//          device so a captured CUDA graph replays correctly.
//   recv   [2, size, capacity] f32: slot [epoch % 2][src]. Two halves: a rank may push call k+1
//          while a slower peer still reads call k; it cannot reach call k+2 before that peer
//          has passed call k+1's barrier, i.e. finished reading call k. So no closing barrier.
// Element i belongs to block (i / kOneShotChunk) % kOneShotBlocks whatever n is, which keeps
// the two-half argument true per block when message sizes change between calls.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

namespace tpnode::cuda {

constexpr int kAllReduceMaxRanks = 8;
constexpr int kOneShotBlocks = 128;  // fixed grid: see the mapping note above
constexpr int kOneShotThreads = 512;
constexpr int64_t kOneShotChunk = 4 * kOneShotThreads;  // floats per block per pass

// Codes the kernel writes to OneShotParams::error (host-mapped) when it gives up.
constexpr int32_t kOneShotAborted = 1;   // the host raised `abort` (a peer was lost)
constexpr int32_t kOneShotTimedOut = 2;  // a peer did not arrive within timeout_ns

// Byte offsets inside one rank's IPC buffer.
struct OneShotLayout {
  int size = 0;           // ranks
  int64_t capacity = 0;   // floats per receive slot (multiple of 4)

  static constexpr size_t flags_offset() { return 0; }
  static constexpr size_t flags_bytes() {
    return sizeof(uint32_t) * kOneShotBlocks * kAllReduceMaxRanks;
  }
  static constexpr size_t epochs_offset() { return flags_offset() + flags_bytes(); }
  static constexpr size_t recv_offset() {
    return (epochs_offset() + sizeof(uint32_t) * kOneShotBlocks + 255) / 256 * 256;
  }
  size_t total_bytes() const {
    return recv_offset() + sizeof(float) * 2 * static_cast<size_t>(size) * capacity;
  }
};
static_assert(OneShotLayout::recv_offset() % 16 == 0, "receive slots must allow float4 access");

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

// Enqueues the all-reduce on `stream` (no host synchronisation; graph capturable). Every rank
// must make the same sequence of calls with the same n.
void one_shot_all_reduce(const OneShotParams& p, cudaStream_t stream);

}  // namespace tpnode::cuda
