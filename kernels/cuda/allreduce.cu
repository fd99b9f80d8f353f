#include "kernels/cuda/allreduce.h"

#include <algorithm>

#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/ll_words.cuh"
#include "kernels/cuda/pdl.cuh"
#include "kernels/cuda/quantize_chunk.cuh"
#include "kernels/cuda/rms_row.cuh"

namespace tpnode::cuda {
namespace {

// The flag way: large blocks, each pushing and summing chunks of 4 floats per thread.
constexpr int kFlagThreads = 512;
// LL: small blocks, so that a decode-sized message spreads over several SMs' stores.
constexpr int kLlThreads = 128;
static_assert(kFlagThreads >= kAllReduceMaxRanks, "one thread per peer flag");

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

// Flag-way receive slot [half][src] of the rank that owns `buffer`.
__device__ __forceinline__ float* slot(const OneShotParams& p, uint8_t* buffer, uint32_t half,
                                       int src) {
  float* recv = reinterpret_cast<float*>(buffer + OneShotLayout::recv_offset());
  return recv + (static_cast<int64_t>(half) * p.size + src) * p.capacity;
}

// LL receive slot [half][src] of the rank that owns `buffer`: ll_capacity words.
__device__ __forceinline__ uint2* ll_slot(const OneShotParams& p, uint8_t* buffer, uint32_t half,
                                          int src) {
  const OneShotLayout layout{.size = p.size, .capacity = p.capacity};
  uint2* recv = reinterpret_cast<uint2*>(buffer + layout.recv_ll_offset());
  return recv + (static_cast<int64_t>(half) * p.size + src) * layout.ll_capacity();
}

// LL words go through L2 (volatile: never kept in L1), 8 or 16 bytes per store
// (ll_words.cuh); each 8-byte word lands whole, so its epoch vouches for its value.
__device__ __forceinline__ uint4 load_ll2(const uint2* p) {
  uint4 v;
  asm volatile("ld.volatile.global.v4.u32 {%0, %1, %2, %3}, [%4];"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "l"(p)
               : "memory");
  return v;
}
__device__ __forceinline__ uint2 load_ll1(const uint2* p) {
  uint2 v;
  asm volatile("ld.volatile.global.v2.u32 {%0, %1}, [%2];" : "=r"(v.x), "=r"(v.y) : "l"(p) : "memory");
  return v;
}

// Spins until `ready()` holds, looking at the host's abort word and the clock now and then.
// Returns 0, or the kOneShot* code it gave up with.
template <typename Ready>
__device__ __forceinline__ int32_t wait_for(const OneShotParams& p, Ready ready) {
  const uint64_t t0 = global_timer_ns();
  for (uint32_t spins = 1;; ++spins) {
    if (ready()) return 0;
    if (spins % 1024 != 0) continue;
    if (*p.abort != 0) return kOneShotAborted;
    if (global_timer_ns() - t0 > p.timeout_ns) return kOneShotTimedOut;
  }
}

// Rank r's four LL words at `w` once they carry `epoch`, as a float4 (`failed` turns non-zero
// when the wait gives up).
__device__ __forceinline__ float4 wait_ll4(const OneShotParams& p, const uint2* w, uint32_t epoch,
                                           int32_t& failed) {
  uint4 lo, hi;
  failed = wait_for(p, [&] {
    lo = load_ll2(w);
    hi = load_ll2(w + 2);
    return lo.y == epoch && lo.w == epoch && hi.y == epoch && hi.w == epoch;
  });
  return make_float4(__uint_as_float(lo.x), __uint_as_float(lo.z), __uint_as_float(hi.x),
                     __uint_as_float(hi.z));
}

// This rank's float4 `v` as LL words to every peer, where `words(q)` is where they go in rank
// q's buffer.
template <typename Words>
__device__ __forceinline__ void push_ll4(const OneShotParams& p, float4 v, uint32_t epoch,
                                         Words words) {
  for (int q = 0; q < p.size; ++q) {
    if (q == p.rank) continue;
    uint2* w = words(q);
    store_ll2(w, v.x, v.y, epoch);
    store_ll2(w + 2, v.z, v.w, epoch);
  }
}

// The sum in rank order of this rank's `mine` and the peers' words for it, where `words(r)`
// is where rank r's words lie in this rank's buffer: the same order, hence the same bits, on
// every rank.
template <typename Words>
__device__ __forceinline__ float4 sum_ll4(const OneShotParams& p, float4 mine, uint32_t epoch,
                                          Words words, int32_t& failed) {
  float4 acc = mine;
  for (int r = 0; r < p.size && failed == 0; ++r) {
    const float4 v = r == p.rank ? mine : wait_ll4(p, words(r), epoch, failed);
    acc = r == 0 ? v : add4(acc, v);
  }
  return acc;
}

// Visits this thread's elements of this block's chunks (4 floats per thread each; chunk c
// belongs to block c % gridDim.x): float4s when `vec` (then every pointer is 16-byte aligned),
// single floats otherwise and for a chunk's tail.
template <int Threads, typename F4, typename F1>
__device__ __forceinline__ void for_block_elements(int64_t n, bool vec, F4 f4, F1 f1) {
  constexpr int64_t kChunk = 4 * Threads;
  const int t = threadIdx.x;
  for (int64_t c = blockIdx.x; c * kChunk < n; c += gridDim.x) {
    const int64_t base = c * kChunk, end = min(base + kChunk, n);
    if (vec) {
      const int64_t n4 = (end - base) / 4;
      if (t < n4) f4(base + 4 * static_cast<int64_t>(t));
      const int64_t tail = base + 4 * n4;
      if (t < end - tail) f1(tail + t);
    } else {
#pragma unroll
      for (int k = 0; k < 4; ++k) {
        const int64_t i = base + t + static_cast<int64_t>(k) * Threads;
        if (i < end) f1(i);
      }
    }
  }
}

// What a block knows at the start of a call, or false for a block with no chunk this call
// (it takes no part: its epoch stays, on every rank alike). Thread 0 advances the block's
// epoch. The epochs are only these kernels', and the previous call has completed (the PDL
// chain): readable before waiting for the kernel that wrote the data, which this then does.
struct BlockCall {
  uint32_t epoch = 0;
  uint32_t half = 0;  // receive slots [epoch % 2]
  bool vec = false;   // data is 16-byte aligned
};
template <int Threads>
__device__ __forceinline__ bool begin_call(const OneShotParams& p, BlockCall& call) {
  if (static_cast<int64_t>(blockIdx.x) * 4 * Threads >= p.n) return false;
  __shared__ uint32_t s_epoch;
  if (threadIdx.x == 0) {
    uint32_t* epochs = reinterpret_cast<uint32_t*>(p.buffers[p.rank] + OneShotLayout::epochs_offset());
    s_epoch = epochs[blockIdx.x] + 1;
    epochs[blockIdx.x] = s_epoch;
  }
  __syncthreads();
  call = {s_epoch, s_epoch & 1u, (reinterpret_cast<uintptr_t>(p.data) & 15u) == 0};
  pdl_wait();
  pdl_launch_dependents();
  return true;
}

// Gathers the block's threads' failure codes; the first thread reports one to the host, which
// marks the communicator failed (`data` is left partly summed). Returns the block's code.
__device__ __forceinline__ int32_t report(const OneShotParams& p, int32_t failed) {
  __shared__ int32_t s_failed;
  if (threadIdx.x == 0) s_failed = 0;
  __syncthreads();
  if (failed != 0) s_failed = failed;  // any thread's code will do
  __syncthreads();
  const int32_t code = s_failed;
  if (code != 0 && threadIdx.x == 0) {
    *p.error = code;
    __threadfence_system();
  }
  return code;
}

__global__ void __launch_bounds__(kLlThreads) one_shot_ll_kernel(OneShotParams p) {
  BlockCall call;
  if (!begin_call<kLlThreads>(p, call)) return;
  const uint32_t epoch = call.epoch;
  uint8_t* const own = p.buffers[p.rank];

  // 1. Push this rank's elements into its slot at every peer.
  for_block_elements<kLlThreads>(
      p.n, call.vec,
      [&](int64_t i) {
        push_ll4(p, *reinterpret_cast<const float4*>(p.data + i), epoch,
                 [&](int q) { return ll_slot(p, p.buffers[q], call.half, p.rank) + i; });
      },
      [&](int64_t i) {
        const float v = p.data[i];
        for (int q = 0; q < p.size; ++q) {
          if (q != p.rank) store_ll1(ll_slot(p, p.buffers[q], call.half, p.rank) + i, v, epoch);
        }
      });

  // 2. Sum in rank order as the peers' words arrive in this rank's memory.
  int32_t failed = 0;
  for_block_elements<kLlThreads>(
      p.n, call.vec,
      [&](int64_t i) {
        float4* out = reinterpret_cast<float4*>(p.data + i);
        const float4 acc = sum_ll4(
            p, *out, epoch, [&](int r) { return ll_slot(p, own, call.half, r) + i; }, failed);
        if (failed == 0) *out = acc;
      },
      [&](int64_t i) {
        const float mine = p.data[i];
        float acc = mine;
        for (int r = 0; r < p.size && failed == 0; ++r) {
          float v = mine;
          if (r != p.rank) {
            const uint2* w = ll_slot(p, own, call.half, r) + i;
            uint2 word;
            failed = wait_for(p, [&] {
              word = load_ll1(w);
              return word.y == epoch;
            });
            v = __uint_as_float(word.x);
          }
          acc = r == 0 ? v : acc + v;
        }
        if (failed == 0) p.data[i] = acc;
      });
  report(p, failed);
}

__global__ void __launch_bounds__(kFlagThreads) one_shot_flag_kernel(OneShotParams p) {
  BlockCall call;
  if (!begin_call<kFlagThreads>(p, call)) return;
  uint8_t* const own = p.buffers[p.rank];

  // 1. Push this rank's elements into its slot at every peer.
  for_block_elements<kFlagThreads>(
      p.n, call.vec,
      [&](int64_t i) {
        const float4 v = *reinterpret_cast<const float4*>(p.data + i);
        for (int q = 0; q < p.size; ++q) {
          if (q != p.rank) *reinterpret_cast<float4*>(slot(p, p.buffers[q], call.half, p.rank) + i) = v;
        }
      },
      [&](int64_t i) {
        const float v = p.data[i];
        for (int q = 0; q < p.size; ++q) {
          if (q != p.rank) slot(p, p.buffers[q], call.half, p.rank)[i] = v;
        }
      });
  // Every thread's pushes are visible system-wide before its block announces them.
  __threadfence_system();
  __syncthreads();

  // 2. Barrier with block blockIdx.x of every peer: thread q announces to peer q and waits
  // for peer q's announcement. Epochs only grow; a fast peer may already be one call ahead.
  int32_t failed = 0;
  if (threadIdx.x < p.size && static_cast<int>(threadIdx.x) != p.rank) {
    const int q = threadIdx.x;
    store_release_sys(flags_of(p.buffers[q]) + blockIdx.x * kAllReduceMaxRanks + p.rank, call.epoch);
    const uint32_t* mine = flags_of(own) + blockIdx.x * kAllReduceMaxRanks + q;
    failed = wait_for(p, [&] { return static_cast<int32_t>(load_acquire_sys(mine) - call.epoch) >= 0; });
  }
  if (report(p, failed) != 0) return;

  // 3. Sum in rank order; peers' data sits in this rank's memory, read past L1.
  for_block_elements<kFlagThreads>(
      p.n, call.vec,
      [&](int64_t i) {
        float4* out = reinterpret_cast<float4*>(p.data + i);
        const float4 mine = *out;
        float4 acc = p.rank == 0 ? mine : __ldcg(reinterpret_cast<const float4*>(slot(p, own, call.half, 0) + i));
        for (int r = 1; r < p.size; ++r) {
          acc = add4(acc, r == p.rank ? mine
                                      : __ldcg(reinterpret_cast<const float4*>(slot(p, own, call.half, r) + i)));
        }
        *out = acc;
      },
      [&](int64_t i) {
        const float mine = p.data[i];
        float acc = p.rank == 0 ? mine : __ldcg(slot(p, own, call.half, 0) + i);
        for (int r = 1; r < p.size; ++r) acc += r == p.rank ? mine : __ldcg(slot(p, own, call.half, r) + i);
        p.data[i] = acc;
      });
}

constexpr int kNormThreads = 1024;
constexpr int kNormPasses = static_cast<int>(kOneShotNormMaxCols / 4 / kNormThreads);

__global__ void __launch_bounds__(kNormThreads) one_shot_rmsnorm_kernel(OneShotNormParams a) {
  const OneShotParams& p = a.reduce;
  const RmsNormParams& q = a.norm;
  const int64_t row = blockIdx.x, base = row * q.n, n4 = q.n / 4;
  const OneShotLayout layout{.size = p.size, .capacity = p.capacity};
  // Words (row, 4i..4i+3) from rank src, in half h, of the rank that owns `buffer`.
  auto words = [&](uint8_t* buffer, uint32_t h, int src, int64_t i) {
    uint2* recv = reinterpret_cast<uint2*>(buffer + layout.recv_norm_offset());
    return recv + ((static_cast<int64_t>(h) * p.size + src) * kOneShotNormMaxRows + row) * kOneShotNormMaxCols +
           4 * i;
  };
  // The same CTA shape and passes as rmsnorm_kernel for this n, so the sums round alike.
  const int t = threadIdx.x, nt = blockDim.x;
  uint8_t* const own = p.buffers[p.rank];
  // Block `row` keeps its own epoch in norm_epochs (the same calls on every rank, so the same
  // epoch everywhere) and is the only writer of its row's words. The norm weights are no
  // kernel's output either: both are read before waiting.
  __shared__ uint32_t s_epoch;
  if (t == 0) {
    uint32_t* epochs = reinterpret_cast<uint32_t*>(own + layout.norm_epochs_offset());
    s_epoch = epochs[blockIdx.x] + 1;
    epochs[blockIdx.x] = s_epoch;
  }
  const float4* wv = reinterpret_cast<const float4*>(q.w);
  float4 wr[kNormPasses];
#pragma unroll
  for (int j = 0; j < kNormPasses; ++j) {
    const int64_t i = static_cast<int64_t>(j) * nt + t;
    if (i < n4) wr[j] = wv[i];
  }
  __syncthreads();
  const uint32_t epoch = s_epoch, half = epoch & 1u;
  pdl_wait();
  pdl_launch_dependents();

  // 1. Push this rank's partial sums of the row to every peer (unless the GEMV that wrote
  // them did).
  const float4* r4 = reinterpret_cast<const float4*>(q.r + base);
#pragma unroll
  for (int j = 0; j < kNormPasses; ++j) {
    const int64_t i = static_cast<int64_t>(j) * nt + t;
    if (i >= n4 || a.pushed) continue;
    push_ll4(p, r4[i], epoch, [&](int peer) { return words(p.buffers[peer], half, p.rank, i); });
  }

  // 2. Sum in rank order as the words arrive, add to the residual stream.
  const float4* x4 = reinterpret_cast<const float4*>(q.x + base);
  float4* xo = reinterpret_cast<float4*>(q.x_out + base);
  float4 v[kNormPasses];
  float ss = 0.0f;
  int32_t failed = 0;
#pragma unroll
  for (int j = 0; j < kNormPasses; ++j) {
    const int64_t i = static_cast<int64_t>(j) * nt + t;
    v[j] = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    if (i >= n4) continue;
    const float4 acc =
        sum_ll4(p, r4[i], epoch, [&](int r) { return words(own, half, r, i); }, failed);
    const float4 s = add4(x4[i], acc);
    if (failed == 0) xo[i] = s;
    v[j] = s;
    ss = add_squares4(ss, s);
  }
  if (report(p, failed) != 0) return;

  // 3. The norm of the row, as rmsnorm_kernel computes it.
  const float inv = rms_inverse(ss, q.n, q.eps);
  float4* y = reinterpret_cast<float4*>(q.y + base);
#pragma unroll
  for (int j = 0; j < kNormPasses; ++j) {
    const int64_t i = static_cast<int64_t>(j) * nt + t;
    if (static_cast<int64_t>(j) * nt >= n4) break;  // uniform: whole passes only
    float4 o = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    if (i < n4) {
      o = rms_scale4(v[j], inv, wr[j]);
      y[i] = o;
    }
    if (q.quant.q != nullptr) quantize_chunk8(q.quant, (base + 4 * i) / 32, o, i < n4);
  }
}

}  // namespace

bool one_shot_rmsnorm_supports(int64_t rows, int64_t n) {
  return rows >= 1 && rows <= kOneShotNormMaxRows && n % 4 == 0 && n <= kOneShotNormMaxCols &&
         static_cast<size_t>(rows * n) * sizeof(float) <= kOneShotLlMaxBytes;
}

GemvLlPush one_shot_norm_push(const OneShotParams& reduce) {
  TPNODE_CHECK(reduce.size >= 2 && reduce.size <= kAllReduceMaxRanks &&
                   reduce.n <= kOneShotNormMaxCols,
               "one_shot_norm_push: {} ranks, a row of {}", reduce.size, reduce.n);
  const OneShotLayout layout{.size = reduce.size, .capacity = reduce.capacity};
  constexpr int64_t kRankWords = int64_t{kOneShotNormMaxRows} * kOneShotNormMaxCols;
  GemvLlPush push;
  // Row 0's words from this rank in half 0 of each peer's buffer (one_shot_rmsnorm_kernel's
  // `words`), and row 0's epoch in this rank's buffer.
  for (int q = 0; q < reduce.size; ++q) {
    if (q == reduce.rank) continue;
    push.dst[push.peers++] =
        reinterpret_cast<uint2*>(reduce.buffers[q] + layout.recv_norm_offset()) +
        reduce.rank * kRankWords;
  }
  push.half_stride = reduce.size * kRankWords;
  push.epoch = reinterpret_cast<const uint32_t*>(reduce.buffers[reduce.rank] +
                                                 layout.norm_epochs_offset());
  return push;
}

void one_shot_all_reduce_rmsnorm(const OneShotNormParams& p, cudaStream_t stream) {
  const RmsNormParams& q = p.norm;
  TPNODE_CHECK(!p.pushed || q.rows == 1, "one-shot all-reduce + RMSNorm: a GEMV's push is one row");
  TPNODE_CHECK(one_shot_rmsnorm_supports(q.rows, q.n),
               "one-shot all-reduce + RMSNorm: {} rows of {} are past its limits", q.rows, q.n);
  TPNODE_CHECK(p.reduce.n == q.rows * q.n && p.reduce.data == q.r && q.r != nullptr &&
                   q.x_out != nullptr && q.y_bf16 == nullptr && q.kq == nullptr &&
                   (q.quant.q == nullptr || q.n % 32 == 0),
               "one-shot all-reduce + RMSNorm: inconsistent parameters");
  TPNODE_CHECK(p.reduce.size >= 2 && p.reduce.size <= kAllReduceMaxRanks && p.reduce.abort != nullptr &&
                   p.reduce.error != nullptr && p.reduce.n <= p.reduce.capacity,
               "one-shot all-reduce + RMSNorm: bad reduce plan");
  // Whole warps, up to 1024 threads: rmsnorm's choice for this n.
  const int64_t n4 = q.n / 4;
  const int threads = static_cast<int>(std::min<int64_t>(kNormThreads, (n4 + 31) / 32 * 32));
  launch_pdl(one_shot_rmsnorm_kernel, dim3(static_cast<unsigned>(q.rows)), dim3(threads), 0,
             stream, p);
  TPNODE_CUDA_CHECK_LAUNCH();
}

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
  const OneShotLayout layout{.size = p.size, .capacity = p.capacity};
  if (p.n <= layout.ll_capacity()) {
    launch_pdl(one_shot_ll_kernel, dim3(kOneShotBlocks), dim3(kLlThreads), 0, stream, p);
  } else {
    launch_pdl(one_shot_flag_kernel, dim3(kOneShotBlocks), dim3(kFlagThreads), 0, stream, p);
  }
  TPNODE_CUDA_CHECK_LAUNCH();
}

}  // namespace tpnode::cuda
