#include "kernels/cuda/sampling.h"

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "kernels/cuda/cuda_check.h"

namespace tpnode::cuda {
namespace {

constexpr int kThreads = 1024;
constexpr int kWarps = kThreads / 32;
constexpr int kBins = 256;  // 8-bit digits: 4 radix passes over a 32-bit key
constexpr unsigned kFullMask = 0xffffffffu;
constexpr uint32_t kNoBin = 0xffffffffu;
constexpr uint32_t kAllIds = 0xffffffffu;
static_assert(kThreads % 32 == 0 && kWarps <= 32, "one warp must be able to read every warp total");
static_assert(kBins == 8 * 32, "warp 0 scans the bins, 8 per lane");

// The race (Gumbel-max) first looks only at tokens with (logit - max) / T >= -kSpan. The
// noise -log(E) is at most -log(-log1p(-2^-33)) < 22.9, so a token outside the span scores
// below -kSpan + 22.9 < kRaceFloor; a winner at or above kRaceFloor is then the winner over
// every token, and otherwise (probability ~1e-8) the race runs again over all of them.
constexpr float kSpan = 32.0f;
constexpr float kRaceFloor = -9.0f;

// A cut of the order (key descending, id ascending): keeps key > cut.key, and the ids up to
// cut.id among key == cut.key.
struct Cut {
  uint32_t key;
  uint32_t id;
};
constexpr Cut kKeepAll{0u, kAllIds};

__device__ __forceinline__ bool keeps(Cut c, uint32_t key, uint32_t id) {
  return key > c.key || (key == c.key && id <= c.id);
}

// Order-preserving unsigned key of a float: larger float, larger key. -0 and +0 are one key
// (the host Sampler compares them equal); NaN is 0, below -inf.
__device__ __forceinline__ uint32_t order_key(float f) {
  if (f != f) return 0u;
  uint32_t b = __float_as_uint(f);
  if (b == 0x80000000u) b = 0u;
  return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

__device__ __forceinline__ float key_float(uint32_t k) {
  return __uint_as_float((k & 0x80000000u) ? (k & 0x7fffffffu) : ~k);
}

// Philox4x32-10 (Salmon et al., SC'11): 4 x 32 random bits per (counter, key).
struct Philox4 {
  uint32_t v[4];
};
__device__ __forceinline__ Philox4 philox4x32_10(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3,
                                                 uint32_t k0, uint32_t k1) {
  constexpr uint32_t kM0 = 0xD2511F53u, kM1 = 0xCD9E8D57u;
  constexpr uint32_t kW0 = 0x9E3779B9u, kW1 = 0xBB67AE85u;
#pragma unroll
  for (int round = 0; round < 10; ++round) {
    const uint32_t hi0 = __umulhi(kM0, c0), lo0 = kM0 * c0;
    const uint32_t hi1 = __umulhi(kM1, c2), lo1 = kM1 * c2;
    c0 = hi1 ^ c1 ^ k0;
    c1 = lo1;
    c2 = hi0 ^ c3 ^ k1;
    c3 = lo0;
    k0 += kW0;
    k1 += kW1;
  }
  return {{c0, c1, c2, c3}};
}

// 64-bit shared atomics are CAS loops; the mass histogram adds its two 32-bit halves with
// native atomics instead, carrying by hand.
struct Smem {
  unsigned int count[kBins];  // histogram: elements per digit
  unsigned int w_lo[kBins];   // histogram: fixed-point mass per digit, low and high words
  unsigned int w_hi[kBins];
  unsigned long long lane_w[kWarps][32];
  unsigned long long red[kWarps];
  unsigned int warp_n[kWarps];
  unsigned int sel_bin;
  unsigned long long sel_above;
  unsigned long long sel_target;
  unsigned int found_id;
};

// One row as the passes see it. Each thread reads 4 consecutive logits per iteration
// (one float4 when the row is 16-byte aligned), and every thread runs the same number of
// iterations, so warp-wide intrinsics inside the loops see all 32 lanes.
struct Row {
  const float* x;  // [n]
  int32_t n;
  bool vec;
  int32_t iters;  // ceil(n / (4 * kThreads))
  float max;      // the largest logit
  float temp;     // temperature > 0
  float scale;    // 2^s with n * 2^s <= 2^62: fixed-point probability mass fits 64 bits
};

__device__ __forceinline__ void load4(const Row& r, int32_t base, float v[4]) {
  if (r.vec && base + 4 <= r.n) {
    const float4 t = *reinterpret_cast<const float4*>(r.x + base);
    v[0] = t.x;
    v[1] = t.y;
    v[2] = t.z;
    v[3] = t.w;
    return;
  }
#pragma unroll
  for (int j = 0; j < 4; ++j) v[j] = base + j < r.n ? r.x[base + j] : 0.0f;
}

// (logit - max) / T: the log of a token's probability relative to the top token's.
__device__ __forceinline__ float scaled(const Row& r, float logit) {
  return (logit - r.max) / r.temp;
}

// The unnormalised probability exp(scaled) in fixed point; NaN gives 0.
__device__ __forceinline__ unsigned long long mass(const Row& r, float logit) {
  const float p = expf(scaled(r, logit));
  return p >= 0.0f ? __float2ull_rn(p * r.scale) : 0ull;
}

// Block-wide max; every thread gets the result.
__device__ unsigned long long block_max(unsigned long long v, Smem& sh) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = max(v, __shfl_xor_sync(kFullMask, v, o));
  if (lane == 0) sh.red[warp] = v;
  __syncthreads();
  v = sh.red[0];
  for (int w = 1; w < kWarps; ++w) v = max(v, sh.red[w]);
  __syncthreads();  // sh.red is free again
  return v;
}

// The weight of a histogram bin: its mass, or its count when counting.
template <bool kMass>
__device__ __forceinline__ unsigned long long bin_weight(const Smem& sh, int b) {
  if constexpr (kMass) return (static_cast<unsigned long long>(sh.w_hi[b]) << 32) | sh.w_lo[b];
  return sh.count[b];
}

// Adds (bin, w) of every lane to the histogram; lanes with kNoBin add nothing. Lanes of one
// bin are summed by their leader first: logits crowd into a few exponent bins, and one
// shared atomic per lane would serialise on them. All 32 lanes must call it.
template <bool kMass>
__device__ __forceinline__ void hist_add(Smem& sh, uint32_t bin, unsigned long long w) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const unsigned peers = __match_any_sync(kFullMask, bin);
  if constexpr (kMass) {
    sh.lane_w[warp][lane] = w;
    __syncwarp();
  }
  if (bin != kNoBin && lane == __ffs(peers) - 1) {
    atomicAdd(&sh.count[bin], static_cast<unsigned>(__popc(peers)));
    if constexpr (kMass) {
      unsigned long long sum = 0;
      for (unsigned m = peers; m != 0; m &= m - 1) sum += sh.lane_w[warp][__ffs(m) - 1];
      const uint32_t lo = static_cast<uint32_t>(sum), hi = static_cast<uint32_t>(sum >> 32);
      const uint32_t old = atomicAdd(&sh.w_lo[bin], lo);
      const uint32_t carry = old + lo < old ? 1u : 0u;
      if (hi + carry != 0) atomicAdd(&sh.w_hi[bin], hi + carry);
    }
  }
  if constexpr (kMass) __syncwarp();
}

// Among the elements that `in` keeps with key == t, in id order, the id of the need-th
// (1-based).
__device__ uint32_t nth_id(const Row& r, Cut in, uint32_t t, uint32_t need, Smem& sh) {
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  if (tid == 0) sh.found_id = kAllIds;
  __syncthreads();
  uint32_t base = 0;  // matches in earlier tiles
  for (int32_t start = 0; start < r.n; start += kThreads) {
    const int32_t id = start + tid;
    bool hit = false;
    if (id < r.n) {
      const uint32_t key = order_key(r.x[id]);
      hit = key == t && keeps(in, key, static_cast<uint32_t>(id));
    }
    const unsigned ballot = __ballot_sync(kFullMask, hit);
    if (lane == 0) sh.warp_n[warp] = static_cast<unsigned>(__popc(ballot));
    __syncthreads();
    uint32_t before = base + static_cast<uint32_t>(__popc(ballot & ((1u << lane) - 1u)));
    uint32_t tile = 0;
    for (int w = 0; w < kWarps; ++w) {
      const uint32_t c = sh.warp_n[w];
      if (w < warp) before += c;
      tile += c;
    }
    if (hit && before + 1 == need) sh.found_id = static_cast<uint32_t>(id);
    __syncthreads();
    if (sh.found_id != kAllIds) break;
    base += tile;
  }
  const uint32_t found = sh.found_id;
  __syncthreads();
  return found;
}

// Of the elements `in` keeps, in the order (key descending, id ascending), the cut that
// keeps the shortest prefix whose weight reaches the target. Count mode (kMass false):
// weight 1, target `count`. Mass mode: weight = fixed-point probability, target =
// ceil(top_p * total mass of the kept elements).
template <bool kMass>
__device__ Cut select_prefix(const Row& r, Cut in, unsigned long long count, float top_p,
                             Smem& sh) {
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  uint32_t prefix = 0;
  unsigned long long above = 0;  // weight of the kept elements above the current bin
  unsigned long long target = count;
  for (int pass = 0; pass < 4; ++pass) {
    const int shift = 24 - 8 * pass;
    for (int b = tid; b < kBins; b += kThreads) {
      sh.count[b] = 0;
      sh.w_lo[b] = 0;
      sh.w_hi[b] = 0;
    }
    __syncthreads();
    for (int32_t it = 0; it < r.iters; ++it) {
      const int32_t base = 4 * (it * kThreads + tid);
      float v[4];
      load4(r, base, v);
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        uint32_t bin = kNoBin;
        unsigned long long w = 0;
        const int32_t id = base + j;
        if (id < r.n) {
          const uint32_t key = order_key(v[j]);
          const bool in_prefix = pass == 0 || (key >> (shift + 8)) == (prefix >> (shift + 8));
          if (in_prefix && keeps(in, key, static_cast<uint32_t>(id))) {
            bin = (key >> shift) & 0xffu;
            if constexpr (kMass) w = mass(r, v[j]);
          }
        }
        hist_add<kMass>(sh, bin, w);
      }
    }
    __syncthreads();
    if (warp == 0) {
      // Lane l owns bins 255 - 8l down to 248 - 8l: largest keys in the lowest lanes.
      unsigned long long own = 0;
#pragma unroll
      for (int j = 0; j < 8; ++j) own += bin_weight<kMass>(sh, kBins - 1 - 8 * lane - j);
      unsigned long long incl = own;
#pragma unroll
      for (int o = 1; o < 32; o <<= 1) {
        const unsigned long long y = __shfl_up_sync(kFullMask, incl, o);
        if (lane >= o) incl += y;
      }
      if (pass == 0) {
        // The first pass sees every kept element: its total bounds the target.
        const unsigned long long total = __shfl_sync(kFullMask, incl, 31);
        if constexpr (kMass) {
          const double want = ceil(static_cast<double>(top_p) * static_cast<double>(total));
          target =
              want >= static_cast<double>(total) ? total : static_cast<unsigned long long>(want);
        }
        target = min(target, total);
        target = max(target, 1ull);
      }
      const unsigned hits = __ballot_sync(kFullMask, above + incl >= target);
      const int owner = hits != 0 ? __ffs(hits) - 1 : 31;
      if (lane == owner) {
        unsigned long long acc = above + incl - own;
        int chosen = kBins - 8 - 8 * lane;  // the lane's lowest bin (unreachable fallback)
        for (int j = 0; j < 8; ++j) {
          const int b = kBins - 1 - 8 * lane - j;
          const unsigned long long w = bin_weight<kMass>(sh, b);
          if (acc + w >= target) {
            chosen = b;
            break;
          }
          acc += w;
        }
        sh.sel_bin = static_cast<unsigned>(chosen);
        sh.sel_above = acc;
        sh.sel_target = target;
      }
    }
    __syncthreads();
    prefix |= sh.sel_bin << shift;
    above = sh.sel_above;
    target = sh.sel_target;
  }
  // Every element at key `prefix` has the same logit, so the same weight.
  const unsigned long long w_eq = bin_weight<kMass>(sh, static_cast<int>(prefix & 0xffu));
  const unsigned long long c_eq = sh.count[prefix & 0xffu];
  __syncthreads();  // the histogram is read; the next select may clear it
  const unsigned long long each = c_eq > 0 ? w_eq / c_eq : 0;
  unsigned long long need = each > 0 ? (target - above + each - 1) / each : c_eq;
  need = max(need, 1ull);
  if (need >= c_eq) return {prefix, kAllIds};
  return {prefix, nth_id(r, in, prefix, static_cast<uint32_t>(need), sh)};
}

struct Race {
  Cut top_k;
  Cut top_p;
  float min_p;
  uint64_t seed;
  uint64_t draw;
  bool whole_row;  // false: only tokens within kSpan of the top one
};

// The exponential race among the kept tokens: the largest (logit - max) / T - log(E_i) wins,
// ties to the lowest id. Returns (order key of the score << 32 | ~id), 0 when nothing ran.
__device__ unsigned long long race(const Row& r, const Race& q, Smem& sh) {
  const int tid = threadIdx.x;
  unsigned long long best = 0;
  for (int32_t it = 0; it < r.iters; ++it) {
    const int32_t base = 4 * (it * kThreads + tid);
    if (base >= r.n) break;
    float v[4], d[4];
    bool ok[4];
    bool any = false;
    load4(r, base, v);
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const uint32_t id = static_cast<uint32_t>(base + j);
      ok[j] = false;
      d[j] = 0.0f;
      if (base + j >= r.n) continue;
      const uint32_t key = order_key(v[j]);
      if (!keeps(q.top_k, key, id) || !keeps(q.top_p, key, id)) continue;
      d[j] = scaled(r, v[j]);
      if (!q.whole_row && !(d[j] >= -kSpan)) continue;
      if (q.min_p > 0.0f && !(expf(d[j]) >= q.min_p)) continue;
      ok[j] = true;
      any = true;
    }
    if (!any) continue;
    // One Philox call covers the 4 tokens of this group: counter (id / 4, draw).
    const Philox4 u =
        philox4x32_10(static_cast<uint32_t>(base / 4), static_cast<uint32_t>(q.draw),
                      static_cast<uint32_t>(q.draw >> 32), 0u, static_cast<uint32_t>(q.seed),
                      static_cast<uint32_t>(q.seed >> 32));
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      if (!ok[j]) continue;
      // u in (0, 1]; E = -log(1 - u) ~ Exp(1), accurate for small E where the winner's
      // noise usually lies; u rounding to 1 gives E = inf, a token that cannot win.
      const float uf = __uint2float_rn(u.v[j]) * 0x1p-32f + 0x1p-33f;
      const float e = -log1pf(-uf);
      const float s = d[j] - logf(e);
      if (!(s > -INFINITY)) continue;
      const uint32_t id = static_cast<uint32_t>(base + j);
      best = max(best, (static_cast<unsigned long long>(order_key(s)) << 32) | (kAllIds - id));
    }
  }
  return block_max(best, sh);
}

__global__ void __launch_bounds__(kThreads) sample_kernel(SampleParams p) {
  __shared__ Smem sh;
  const SampleRowParams rp = p.rows[blockIdx.x];
  Row r{};
  r.x = p.logits + static_cast<int64_t>(rp.logit_row) * p.n_vocab;
  r.n = static_cast<int32_t>(p.n_vocab);
  r.vec = (reinterpret_cast<uintptr_t>(r.x) & 15u) == 0;
  r.iters = (r.n + 4 * kThreads - 1) / (4 * kThreads);

  // The top token: largest key, lowest id among equals. kBatch loads go out before any is
  // compared (one trip to memory per batch, not per load: a row of 128K logits is 32 loads a
  // thread); the max is the same in any order.
  constexpr int kBatch = 8;
  unsigned long long top = 0;
  for (int32_t it0 = 0; it0 < r.iters; it0 += kBatch) {
    float v[kBatch][4];
#pragma unroll
    for (int b = 0; b < kBatch; ++b) {
      const int32_t base = 4 * ((it0 + b) * kThreads + static_cast<int32_t>(threadIdx.x));
      if (it0 + b < r.iters && base < r.n) load4(r, base, v[b]);
    }
#pragma unroll
    for (int b = 0; b < kBatch; ++b) {
      const int32_t base = 4 * ((it0 + b) * kThreads + static_cast<int32_t>(threadIdx.x));
      if (it0 + b >= r.iters || base >= r.n) continue;
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        if (base + j >= r.n) break;
        const uint32_t id = static_cast<uint32_t>(base + j);
        top = max(top, (static_cast<unsigned long long>(order_key(v[b][j])) << 32) | (kAllIds - id));
      }
    }
  }
  top = block_max(top, sh);
  const uint32_t argmax = kAllIds - static_cast<uint32_t>(top);
  if (greedy_row(rp.temperature, rp.top_k)) {
    if (threadIdx.x == 0) {
      p.tokens[blockIdx.x] = static_cast<int32_t>(argmax);
      if (p.best != nullptr) p.best[blockIdx.x] = r.x[argmax];
    }
    return;
  }

  r.max = key_float(static_cast<uint32_t>(top >> 32));
  r.temp = rp.temperature;
  const int shift = 62 - (32 - __clz(r.n));
  r.scale = __int_as_float((127 + shift) << 23);

  Race q{kKeepAll, kKeepAll, rp.min_p, rp.seed, rp.draw, false};
  if (rp.top_k > 0 && rp.top_k < r.n) {
    q.top_k =
        select_prefix<false>(r, kKeepAll, static_cast<unsigned long long>(rp.top_k), 1.0f, sh);
  }
  if (rp.top_p < 1.0f) q.top_p = select_prefix<true>(r, q.top_k, 0, rp.top_p, sh);
  unsigned long long win = race(r, q, sh);
  if (win == 0 || key_float(static_cast<uint32_t>(win >> 32)) < kRaceFloor) {
    q.whole_row = true;
    win = race(r, q, sh);
  }
  if (threadIdx.x == 0) {
    p.tokens[blockIdx.x] =
        static_cast<int32_t>(win != 0 ? kAllIds - static_cast<uint32_t>(win) : argmax);
  }
}

// Greedy rows over many CTAs (SampleParams::all_greedy): CTA (s, row) takes slice s of the
// row, kSplitBatch float4 loads a thread in flight; the row's last CTA in merges the slices'
// (key, id) maxima, the same choice as sample_kernel's (largest key, lowest id).
constexpr int kSplitThreads = 256;
constexpr int kSplitBatch = 4;
constexpr int32_t kSplitSlice = 4 * kSplitThreads * kSplitBatch;  // values one batch covers

__global__ void __launch_bounds__(kSplitThreads) argmax_split_kernel(SampleParams p, int splits) {
  __shared__ unsigned long long red[kSplitThreads / 32];
  __shared__ bool last;
  const int row = static_cast<int>(blockIdx.y);
  const SampleRowParams rp = p.rows[row];
  const float* x = p.logits + static_cast<int64_t>(rp.logit_row) * p.n_vocab;
  const auto n = static_cast<int32_t>(p.n_vocab);
  const int32_t per = ((n + splits - 1) / splits + 3) / 4 * 4;
  const int32_t lo = static_cast<int32_t>(blockIdx.x) * per, hi = min(n, lo + per);
  const bool vec = (reinterpret_cast<uintptr_t>(x) & 15u) == 0;
  const int32_t tid = static_cast<int32_t>(threadIdx.x);
  unsigned long long top = 0;
  for (int32_t b0 = lo; b0 < hi; b0 += kSplitSlice) {
    float v[kSplitBatch][4];
#pragma unroll
    for (int k = 0; k < kSplitBatch; ++k) {
      const int32_t base = b0 + 4 * (k * kSplitThreads + tid);
      if (vec && base + 4 <= hi) {
        const float4 t = *reinterpret_cast<const float4*>(x + base);
        v[k][0] = t.x, v[k][1] = t.y, v[k][2] = t.z, v[k][3] = t.w;
      } else {
#pragma unroll
        for (int j = 0; j < 4; ++j) v[k][j] = base + j < hi ? x[base + j] : 0.0f;
      }
    }
#pragma unroll
    for (int k = 0; k < kSplitBatch; ++k) {
      const int32_t base = b0 + 4 * (k * kSplitThreads + tid);
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        if (base + j >= hi) break;
        const uint32_t id = static_cast<uint32_t>(base + j);
        top = max(top, (static_cast<unsigned long long>(order_key(v[k][j])) << 32) | (kAllIds - id));
      }
    }
  }
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) top = max(top, __shfl_xor_sync(kFullMask, top, o));
  if (tid % 32 == 0) red[tid / 32] = top;
  __syncthreads();
  if (tid == 0) {
    for (int w = 1; w < kSplitThreads / 32; ++w) top = max(top, red[w]);
    p.partials[row * kSampleMaxSplits + blockIdx.x] = top;
    __threadfence();
    last = atomicAdd(p.counters + row, 1u) == static_cast<unsigned>(splits) - 1;
  }
  __syncthreads();
  if (!last || tid >= 32) return;
  __threadfence();
  unsigned long long m = tid < splits ? __ldcg(p.partials + row * kSampleMaxSplits + tid) : 0ull;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) m = max(m, __shfl_xor_sync(kFullMask, m, o));
  if (tid == 0) {
    const uint32_t id = kAllIds - static_cast<uint32_t>(m);
    p.tokens[row] = static_cast<int32_t>(id);
    if (p.best != nullptr) p.best[row] = x[id];
    p.counters[row] = 0;
  }
}

}  // namespace

void sample_tokens(const SampleParams& p, cudaStream_t stream) {
  TPNODE_CHECK(p.n_vocab > 0 && p.n_vocab < (int64_t{1} << 30), "sample_tokens: n_vocab {}",
               p.n_vocab);
  TPNODE_CHECK(p.n_rows >= 0, "sample_tokens: {} rows", p.n_rows);
  if (p.n_rows == 0) return;
  TPNODE_CHECK(p.logits != nullptr && p.rows != nullptr && p.tokens != nullptr,
               "sample_tokens: null buffer");
  if (p.all_greedy && p.partials != nullptr && p.counters != nullptr) {
    const int splits = static_cast<int>(std::clamp<int64_t>(
        (p.n_vocab + kSplitSlice - 1) / kSplitSlice, 1, kSampleMaxSplits));
    argmax_split_kernel<<<dim3(static_cast<unsigned>(splits), static_cast<unsigned>(p.n_rows)),
                          kSplitThreads, 0, stream>>>(p, splits);
  } else {
    sample_kernel<<<static_cast<unsigned>(p.n_rows), kThreads, 0, stream>>>(p);
  }
  TPNODE_CUDA_CHECK_LAUNCH();
}

}  // namespace tpnode::cuda
