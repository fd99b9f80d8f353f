#include "kernels/cuda/allreduce.h"

#include "kernels/cuda/cuda_check.h"

namespace tpnode::cuda {
namespace {

static_assert(kOneShotChunk % 4 == 0, "chunks hold whole float4s");
static_assert(kOneShotThreads >= kAllReduceMaxRanks, "one thread per peer flag");

__device__ __forceinline__ uint64_t global_timer_ns() {
  uint64_t t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  return t;
}

__device__ __forceinline__ void store_release_sys(uint32_t* p, uint32_t v) {
  asm volatile("st.release.sys.global.u32 [%0], %1;" ::"l"(p), "r"(v) : "memory");
}

__device__ __forceinline__ uint32_t load_acquire_sys(const uint32_t* p) {
  uint32_t v;
  asm volatile("ld.acquire.sys.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
  return v;
}

__device__ __forceinline__ uint32_t* flags_of(uint8_t* buffer) {
  return reinterpret_cast<uint32_t*>(buffer + OneShotLayout::flags_offset());
}

// Receive slot [half][src] of the rank that owns `buffer`.
__device__ __forceinline__ float* slot(const OneShotParams& p, uint8_t* buffer, uint32_t half,
                                       int src) {
  float* recv = reinterpret_cast<float*>(buffer + OneShotLayout::recv_offset());
  return recv + (static_cast<int64_t>(half) * p.size + src) * p.capacity;
}

// Visits this thread's elements of chunk [base, end): float4s when `vec` (then base % 4 == 0
// and every pointer is 16-byte aligned), single floats otherwise and for the tail.
template <typename F4, typename F1>
__device__ __forceinline__ void for_chunk(int64_t base, int64_t end, bool vec, F4 f4, F1 f1) {
  const int t = threadIdx.x;
  if (vec) {
    const int64_t n4 = (end - base) / 4;
    if (t < n4) f4(base + 4 * static_cast<int64_t>(t));
    const int64_t tail = base + 4 * n4;
    if (t < end - tail) f1(tail + t);
  } else {
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      const int64_t i = base + t + static_cast<int64_t>(k) * kOneShotThreads;
      if (i < end) f1(i);
    }
  }
}

__device__ __forceinline__ float4 add4(float4 a, float4 b) {
  return make_float4(a.x + b.x, a.y + b.y, a.z + b.z, a.w + b.w);
}

__global__ void __launch_bounds__(kOneShotThreads) one_shot_kernel(OneShotParams p) {
  const int64_t n_chunks = (p.n + kOneShotChunk - 1) / kOneShotChunk;
  // A block with no chunk this call takes no part: its epoch stays, on every rank alike.
  if (blockIdx.x >= n_chunks) return;
  uint8_t* const own = p.buffers[p.rank];
  __shared__ uint32_t s_epoch;
  __shared__ int32_t s_failed;
  if (threadIdx.x == 0) {
    uint32_t* epochs = reinterpret_cast<uint32_t*>(own + OneShotLayout::epochs_offset());
    s_epoch = epochs[blockIdx.x] + 1;
    epochs[blockIdx.x] = s_epoch;
    s_failed = 0;
  }
  __syncthreads();
  const uint32_t epoch = s_epoch;
  const uint32_t half = epoch & 1u;
  const bool vec = (reinterpret_cast<uintptr_t>(p.data) & 15u) == 0;

  // 1. Push this rank's elements into its slot at every peer.
  for (int64_t c = blockIdx.x; c < n_chunks; c += gridDim.x) {
    const int64_t base = c * kOneShotChunk;
    const int64_t end = min(base + kOneShotChunk, p.n);
    for_chunk(
        base, end, vec,
        [&](int64_t i) {
          const float4 v = *reinterpret_cast<const float4*>(p.data + i);
          for (int q = 0; q < p.size; ++q) {
            if (q != p.rank) *reinterpret_cast<float4*>(slot(p, p.buffers[q], half, p.rank) + i) = v;
          }
        },
        [&](int64_t i) {
          const float v = p.data[i];
          for (int q = 0; q < p.size; ++q) {
            if (q != p.rank) slot(p, p.buffers[q], half, p.rank)[i] = v;
          }
        });
  }
  // Every thread's pushes are visible system-wide before its block announces them.
  __threadfence_system();
  __syncthreads();

  // 2. Barrier with block blockIdx.x of every peer: thread q announces to peer q and waits
  // for peer q's announcement. Epochs only grow; a fast peer may already be one call ahead.
  if (threadIdx.x < p.size && static_cast<int>(threadIdx.x) != p.rank) {
    const int q = threadIdx.x;
    store_release_sys(flags_of(p.buffers[q]) + blockIdx.x * kAllReduceMaxRanks + p.rank, epoch);
    const uint32_t* mine = flags_of(own) + blockIdx.x * kAllReduceMaxRanks + q;
    const uint64_t t0 = global_timer_ns();
    for (uint32_t spins = 1; static_cast<int32_t>(load_acquire_sys(mine) - epoch) < 0; ++spins) {
      if (spins % 1024 != 0) continue;
      if (*p.abort != 0) {
        s_failed = kOneShotAborted;
        break;
      }
      if (global_timer_ns() - t0 > p.timeout_ns) {
        s_failed = kOneShotTimedOut;
        break;
      }
    }
  }
  __syncthreads();
  if (s_failed != 0) {
    // The host marks the communicator failed; `data` keeps this rank's partial sums.
    if (threadIdx.x == 0) {
      *p.error = s_failed;
      __threadfence_system();
    }
    return;
  }

  // 3. Sum in rank order; peers' data sits in this rank's memory, read past L1.
  for (int64_t c = blockIdx.x; c < n_chunks; c += gridDim.x) {
    const int64_t base = c * kOneShotChunk;
    const int64_t end = min(base + kOneShotChunk, p.n);
    for_chunk(
        base, end, vec,
        [&](int64_t i) {
          float4* out = reinterpret_cast<float4*>(p.data + i);
          const float4 mine = *out;
          float4 acc = p.rank == 0 ? mine : __ldcg(reinterpret_cast<const float4*>(slot(p, own, half, 0) + i));
          for (int r = 1; r < p.size; ++r) {
            acc = add4(acc, r == p.rank ? mine
                                        : __ldcg(reinterpret_cast<const float4*>(slot(p, own, half, r) + i)));
          }
          *out = acc;
        },
        [&](int64_t i) {
          const float mine = p.data[i];
          float acc = p.rank == 0 ? mine : __ldcg(slot(p, own, half, 0) + i);
          for (int r = 1; r < p.size; ++r) acc += r == p.rank ? mine : __ldcg(slot(p, own, half, r) + i);
          p.data[i] = acc;
        });
  }
}

}  // namespace

void one_shot_all_reduce(const OneShotParams& p, cudaStream_t stream) {
  if (p.n == 0) return;
  TPNODE_CHECK(p.size >= 2 && p.size <= kAllReduceMaxRanks && p.rank >= 0 && p.rank < p.size,
               "one-shot all-reduce: rank {} of {} outside 2..{} ranks", p.rank, p.size,
               kAllReduceMaxRanks);
  TPNODE_CHECK(p.n > 0 && p.n <= p.capacity && p.capacity % 4 == 0,
               "one-shot all-reduce: {} floats exceed the receive slot of {}", p.n, p.capacity);
  TPNODE_CHECK(p.data != nullptr && p.abort != nullptr && p.error != nullptr,
               "one-shot all-reduce: null data or control word");
  for (int r = 0; r < p.size; ++r) {
    TPNODE_CHECK(p.buffers[r] != nullptr, "one-shot all-reduce: rank {}'s buffer is not mapped", r);
  }
  one_shot_kernel<<<kOneShotBlocks, kOneShotThreads, 0, stream>>>(p);
  TPNODE_CUDA_CHECK_LAUNCH();
}

}  // namespace tpnode::cuda
