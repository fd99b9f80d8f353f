#include "kernels/cuda/gemv.h"

#include <algorithm>
#include <utility>

#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/device_query.h"
#include "kernels/cuda/dispatch.cuh"
#include "kernels/cuda/gemv_float.h"
#include "kernels/cuda/gemv_rows.cuh"
#include "kernels/cuda/ll_words.cuh"
#include "kernels/cuda/pdl.cuh"
#include "kernels/cuda/quant_blocks.cuh"
#include "kernels/cuda/quantize_chunk.cuh"
#include "kernels/cuda/rms_row.cuh"
#include "kernels/cuda/warp_reduce.cuh"

namespace tpnode::cuda {
namespace {

constexpr int kWarpsPerCta = 4;  // one output row per warp


// The epoch of this launch's LL push (0 without one); read before pdl_wait (GemvLlPush).
__device__ __forceinline__ uint32_t push_epoch(const GemvLlPush& push) {
  return push.peers > 0 ? *push.epoch + 1 : 0u;
}

// Output `row` of the group: its value to y, and with a push to every peer as an LL word.
__device__ __forceinline__ void write_out(const GemvGroupParams& p, float* y, int64_t row,
                                          float v, uint32_t epoch) {
  *y = v;
  const int64_t half = (epoch & 1u) ? p.push.half_stride : 0;
  for (int q = 0; q < p.push.peers; ++q) store_ll1(p.push.dst[q] + half + row, v, epoch);
}

// One warp per chunk of 32 values.
__global__ void quantize_acts_kernel(QuantizeActsParams p) {
  pdl_wait();
  pdl_launch_dependents();
  const int64_t chunk = static_cast<int64_t>(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  const int64_t chunks = p.m * (p.k / 32);
  if (chunk >= chunks) return;
  quantize_chunk32(p.out, chunk, p.x[chunk * 32 + lane]);
}

// One warp per 256-value group: lane i holds values 8i..8i+7, so chunk c is lanes 4c..4c+3.
__global__ void quantize_acts256_kernel(QuantizeActsParams p) {
  pdl_wait();
  pdl_launch_dependents();
  const int64_t group = static_cast<int64_t>(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (group >= p.m * (p.k / 256)) return;
  const float4* src = reinterpret_cast<const float4*>(p.x + group * 256 + lane * 8);
  const float4 a = src[0], b = src[1];
  const float v[8] = {a.x, a.y, a.z, a.w, b.x, b.y, b.z, b.w};
  int q[8], sum = 0;
  const float d = quantize_group256(v, q, sum);
  int2 packed{0, 0};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    packed.x |= (q[i] & 0xFF) << (8 * i);
    packed.y |= (q[4 + i] & 0xFF) << (8 * i);
  }
  reinterpret_cast<int2*>(p.out.q + group * 256)[lane] = packed;
  if (lane % 4 == 0) {
    const int64_t chunk = group * 8 + lane / 4;
    p.out.d[chunk] = d;
    p.out.s[chunk] = d * static_cast<float>(sum);
  }
}

// ---- quantized W, m = 1 ------------------------------------------------------------
// A warp owns R consecutive rows of the group (rows of several matrices sharing x, e.g.
// q/k/v, counted one after the other). Its lanes take a row's work items (slices of
// blocks) U at a time with separate accumulators, so U items of R rows are loaded before
// any is used. Launched with PDL: the rows are prefetched into L2 before waiting for the
// kernel that writes the activations.
// One step of a lane over R rows: items first + kLanes * u (u < U) of each row. Past the end
// an item repeats the last one (an L1/L2 hit) and its product is dropped, so that all R x U
// loads go out before the first dot product. A lane's items all sit at the same place in
// their blocks (lanes step by kLanes, a multiple of kParts), the clamped last item included
// (any part of the last block is in range): `part` is fixed per lane.
template <TensorType T, int R, int U, int kLanes>
struct LaneStep {
  using P = quant::Policy<T>;
  using S = quant::Staged<T>;
  using Raw = typename S::Raw;
  static_assert(kLanes % P::kParts == 0);

  __device__ static void load(Raw (&raw)[R][U], const RowRef (&ref)[R], int first, int items,
                              int part) {
#pragma unroll
    for (int r = 0; r < R; ++r) {
#pragma unroll
      for (int u = 0; u < U; ++u) {
        const int blk = min(first + kLanes * u, items - 1) / P::kParts;
        raw[r][u] = S::load(ref[r].q + static_cast<int64_t>(blk) * P::kQBytes,
                            P::kSBytes ? ref[r].s + static_cast<int64_t>(blk) * P::kSBytes : nullptr,
                            part);
      }
    }
  }

  // v[r][u]: the product of item first + kLanes * u of row r with x, 0 past the end.
  __device__ static void dots(float (&v)[R][U], const Raw (&raw)[R][U], const QuantActs& xq,
                              int first, int items, int part) {
#pragma unroll
    for (int r = 0; r < R; ++r) {
#pragma unroll
      for (int u = 0; u < U; ++u) {
        const int item = first + kLanes * u;
        const int blk = min(item, items - 1) / P::kParts;
        const quant::ActView a{xq.q + static_cast<int64_t>(blk) * P::kBlock,
                               xq.d + blk * (P::kBlock / 32), xq.s + blk * (P::kBlock / 32)};
        const float d = S::dot(raw[r][u], part, a);
        v[r][u] = item < items ? d : 0.0f;
      }
    }
  }
};

// W = 1: each warp owns R rows. W = kWarpsPerCta: the CTA's warps share R rows (long rows,
// such as ffn_down's), each warp taking every fourth slice, summed in warp order at the end.
template <TensorType T, int R, int W, int U, int MinCtas>
__global__ void __launch_bounds__(kWarpsPerCta * 32, MinCtas) gemv1_kernel(GemvGroupParams p) {
  using P = quant::Policy<T>;
  using S = quant::Staged<T>;
  constexpr int kLanes = 32 * W;                       // threads sharing a row
  constexpr int kRowsPerCta = (kWarpsPerCta / W) * R;
  const int warp = threadIdx.x / 32;
  const int lane = threadIdx.x % kLanes;
  const int nb = static_cast<int>(p.cols / P::kBlock);
  const int items = nb * P::kParts;
  const int64_t row0 = static_cast<int64_t>(blockIdx.x) * kRowsPerCta + (threadIdx.x / kLanes) * R;
  RowRef ref[R];
  bool live[R];
#pragma unroll
  for (int r = 0; r < R; ++r) {
    live[r] = row0 + r < p.total_rows;
    ref[r] = group_row(p, live[r] ? row0 + r : p.total_rows - 1);
    // Weights do not depend on earlier kernels: start their trip from HBM before waiting.
    if (live[r]) {
      for (int64_t off = 128 * lane; off < static_cast<int64_t>(nb) * P::kQBytes; off += 128 * kLanes) {
        prefetch_l2(ref[r].q + off);
      }
    }
  }
  const uint32_t epoch = push_epoch(p.push);
  pdl_wait();
  pdl_launch_dependents();

  using Step = LaneStep<T, R, U, kLanes>;
  const int part = lane % P::kParts;
  float acc[R][U];
#pragma unroll
  for (int r = 0; r < R; ++r) {
#pragma unroll
    for (int u = 0; u < U; ++u) acc[r][u] = 0.0f;
  }
  for (int base = lane; base < items; base += kLanes * U) {
    typename Step::Raw raw[R][U];
    Step::load(raw, ref, base, items, part);
    float v[R][U];
    Step::dots(v, raw, p.xq, base, items, part);
#pragma unroll
    for (int r = 0; r < R; ++r) {
#pragma unroll
      for (int u = 0; u < U; ++u) acc[r][u] += v[r][u];
    }
  }
  float sum[R];
#pragma unroll
  for (int r = 0; r < R; ++r) {
    float v = 0.0f;
#pragma unroll
    for (int u = 0; u < U; ++u) v += acc[r][u];
    sum[r] = warp_sum(v);
  }
  if constexpr (W > 1) {
    __shared__ float part[kWarpsPerCta][R];
    if (threadIdx.x % 32 == 0) {
#pragma unroll
      for (int r = 0; r < R; ++r) part[warp][r] = sum[r];
    }
    __syncthreads();
#pragma unroll
    for (int r = 0; r < R; ++r) {
      float v = 0.0f;
#pragma unroll
      for (int w = 0; w < W; ++w) v += part[w][r];
      sum[r] = v;
    }
  }
#pragma unroll
  for (int r = 0; r < R; ++r) {
    if (threadIdx.x % kLanes == 0 && live[r]) write_out(p, ref[r].y, row0 + r, sum[r], epoch);
  }
}

// The RMSNorm in front of the GEMV (gemv_norm_group), run by every CTA over the whole row
// before its first dot product: x (+ r) times the norm weights, quantized chunk by chunk into
// the CTA's shared memory (the 8-bit copy of a row does not depend on the row's scale, so the
// 1 / rms that the sum of squares gives scales the outputs instead). A pass is one float4 per
// thread; with r, CTA c writes passes c, c + gridDim.x, ... of x + r to x_out. The loads of
// kNormBatch passes go out together (one trip to L2 per batch, not one per pass), the norm
// weights' first batch before pdl_wait (they are no kernel's output).
constexpr int kNormBatch = 8;
static_assert(kNormColsMultiple == 4 * kWarpsPerCta * 32, "a pass is one float4 per thread");

struct NormPrologue {
  float4 w[kNormBatch];

  __device__ static int passes(int64_t cols) { return static_cast<int>(cols / (4 * blockDim.x)); }

  __device__ void load_weights(const GemvNorm& norm, int first, int passes) {
    const float4* w4 = reinterpret_cast<const float4*>(norm.w);
#pragma unroll
    for (int j = 0; j < kNormBatch; ++j) {
      if (first + j < passes) w[j] = w4[(first + j) * blockDim.x + threadIdx.x];
    }
  }

  // Returns 1 / rms. All threads of the CTA call it; cols % kNormColsMultiple == 0.
  __device__ float run(const GemvNorm& norm, int64_t cols, const QuantActs& sq) {
    const int np = passes(cols);
    const float4* x4 = reinterpret_cast<const float4*>(norm.x);
    const float4* r4 = reinterpret_cast<const float4*>(norm.r);
    float4* xo = reinterpret_cast<float4*>(norm.x_out);
    float ss = 0.0f;
    for (int b = 0; b < np; b += kNormBatch) {
      if (b > 0) load_weights(norm, b, np);
      float4 a[kNormBatch], rr[kNormBatch];
#pragma unroll
      for (int j = 0; j < kNormBatch; ++j) {
        const int i = (b + j) * blockDim.x + threadIdx.x;
        if (b + j < np) {
          a[j] = x4[i];
          if (r4 != nullptr) rr[j] = r4[i];
        }
      }
      // b + j < np is uniform over the CTA: the 8-lane shuffles of the quantization stay
      // converged (8 consecutive lanes hold one 32-value chunk).
#pragma unroll
      for (int j = 0; j < kNormBatch; ++j) {
        if (b + j >= np) break;
        const int i = (b + j) * blockDim.x + threadIdx.x;
        float4 v = a[j];
        if (r4 != nullptr) {
          v = add4(v, rr[j]);
          if ((b + j) % static_cast<int>(gridDim.x) == static_cast<int>(blockIdx.x)) xo[i] = v;
        }
        ss = add_squares4(ss, v);
        const float4 wj = w[j];
        quantize_chunk8(sq, i / 8, {v.x * wj.x, v.y * wj.y, v.z * wj.z, v.w * wj.w}, true);
      }
    }
    __shared__ float partial[kWarpsPerCta];
    ss = warp_sum(ss);
    if (threadIdx.x % 32 == 0) partial[threadIdx.x / 32] = ss;
    __syncthreads();
    float total = 0.0f;
#pragma unroll
    for (int w = 0; w < kWarpsPerCta; ++w) total += partial[w];
    return rsqrtf(total / static_cast<float>(cols) + norm.eps);
  }
};

// The same work as gemv1_kernel, but a resident grid whose row groups (R rows for one warp,
// or for a CTA's four warps when W = 4) follow one another per warp: the weights of a
// warp's next step (next items of the row, or its next row group) are loaded before the
// current step's dot products, so a warp keeps loads in flight while it computes instead of
// alternating between waiting and computing. With kNorm, the RMSNorm in front of it runs in
// the prologue (NormPrologue) and x's 8-bit copy lives in dynamic shared memory.
template <TensorType T, int R, int W, int U, bool kNorm, int MinCtas>
__global__ void __launch_bounds__(kWarpsPerCta * 32, MinCtas > 0 ? MinCtas : 1)
    gemv1_pipelined_kernel(GemvGroupParams p, GemvNorm norm) {
  using P = quant::Policy<T>;
  constexpr int kLanes = 32 * W;
  using Step = LaneStep<T, R, U, kLanes>;
  using Raw = typename Step::Raw;
  constexpr int kSlots = kWarpsPerCta / W;  // row groups a CTA works on at once
  const int warp = threadIdx.x / 32;
  const int lane = threadIdx.x % kLanes;
  const int items = static_cast<int>(p.cols / P::kBlock) * P::kParts;
  const int iters = (items + kLanes * U - 1) / (kLanes * U);
  const int64_t groups = (p.total_rows + R - 1) / R;
  const int64_t first = static_cast<int64_t>(blockIdx.x) * kSlots + threadIdx.x / kLanes;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kSlots;
  const int64_t steps = first < groups ? (groups - first + stride - 1) / stride * iters : 0;
  const int part = lane % P::kParts;
  // The norm's prologue needs every thread of the CTA.
  if (!kNorm && steps == 0) {  // uniform over a CTA when W > 1 (one slot)
    pdl_wait();
    pdl_launch_dependents();
    return;
  }

  auto rows_of = [&](int64_t g, RowRef (&ref)[R], bool (&live)[R]) {
#pragma unroll
    for (int r = 0; r < R; ++r) {
      const int64_t row = g * R + r;
      live[r] = row < p.total_rows;
      ref[r] = group_row(p, live[r] ? row : p.total_rows - 1);
    }
  };
  int64_t g = first;
  int it = 0;
  RowRef ref[R];
  bool live[R];
  rows_of(g, ref, live);
  Raw cur[R][U];
  // Weights are no kernel's output: the first step's loads go out before waiting for the
  // launch that writes the activations.
  if (steps > 0) Step::load(cur, ref, lane, items, part);
  const uint32_t epoch = push_epoch(p.push);
  [[maybe_unused]] NormPrologue pro;
  if constexpr (kNorm) pro.load_weights(norm, 0, NormPrologue::passes(p.cols));
  pdl_wait();
  pdl_launch_dependents();
  QuantActs xq = p.xq;
  float out_scale = 1.0f;
  if constexpr (kNorm) {
    extern __shared__ int4 norm_smem[];
    int8_t* q = reinterpret_cast<int8_t*>(norm_smem);
    float* d = reinterpret_cast<float*>(q + p.cols);
    xq = {q, d, d + p.cols / 32};
    out_scale = pro.run(norm, p.cols, xq);  // its barrier also completes the 8-bit copy
    if (steps == 0) return;
  }
  float acc[R];
#pragma unroll
  for (int r = 0; r < R; ++r) acc[r] = 0.0f;
  int parity = 0;
  for (int64_t s = 0; s < steps; ++s) {
    const auto [gn, itn] = next_walk_step({g, it}, iters, stride);
    RowRef nref[R];
    bool nlive[R];
#pragma unroll
    for (int r = 0; r < R; ++r) {
      nref[r] = ref[r];
      nlive[r] = live[r];
    }
    Raw nxt[R][U];
    if (s + 1 < steps) {
      if (gn != g) rows_of(gn, nref, nlive);
      Step::load(nxt, nref, lane + kLanes * U * itn, items, part);
    }
    float v[R][U];
    Step::dots(v, cur, xq, lane + kLanes * U * it, items, part);
#pragma unroll
    for (int r = 0; r < R; ++r) {
#pragma unroll
      for (int u = 0; u < U; ++u) acc[r] += v[r][u];
    }
    if (it == iters - 1) {
      float sum[R];
#pragma unroll
      for (int r = 0; r < R; ++r) {
        sum[r] = warp_sum(acc[r]);
        acc[r] = 0.0f;
      }
      if constexpr (W > 1) {
        // Two buffers: a warp may write the next group's partial sums while a slower one
        // still reads these.
        __shared__ float part_sum[2][kWarpsPerCta][R];
        if (threadIdx.x % 32 == 0) {
#pragma unroll
          for (int r = 0; r < R; ++r) part_sum[parity][warp][r] = sum[r];
        }
        __syncthreads();
#pragma unroll
        for (int r = 0; r < R; ++r) {
          float v = 0.0f;
#pragma unroll
          for (int w = 0; w < W; ++w) v += part_sum[parity][w][r];
          sum[r] = v;
        }
        parity ^= 1;
      }
#pragma unroll
      for (int r = 0; r < R; ++r) {
        if (lane == 0 && live[r]) {
          write_out(p, ref[r].y, g * R + r, kNorm ? sum[r] * out_scale : sum[r], epoch);
        }
      }
    }
#pragma unroll
    for (int r = 0; r < R; ++r) {
#pragma unroll
      for (int u = 0; u < U; ++u) cur[r][u] = nxt[r][u];
      ref[r] = nref[r];
      live[r] = nlive[r];
    }
    g = gn;
    it = itn;
  }
}

// Dynamic shared memory of the kNorm kernels: x's 8-bit copy (q, then d and s per chunk).
size_t norm_smem_bytes(int64_t cols) {
  return static_cast<size_t>(cols) + 2 * sizeof(float) * static_cast<size_t>(cols / 32);
}

// MinCtas > 0: the grid holds that many CTAs per SM (registers capped to fit), else two.
template <TensorType T, int R, int W, int U, int MinCtas, bool kNorm = false>
void launch_gemv1_pipelined(const GemvGroupParams& p, cudaStream_t stream,
                            const GemvNorm& norm = {}) {
  constexpr int64_t kSlots = kWarpsPerCta / W;
  const int64_t groups = (p.total_rows + R - 1) / R;
  // At most two CTAs per SM unless the geometry asks for more: what the picks run with (the
  // grid size was once cached for all these kernels from the first one launched, the LM
  // head's, whose registers allow two). Q4_K's two rows of two at three CTAs per SM matched
  // three rows at two in bench-gemv and lost 0.7% of the TP1 step (docs/BENCHMARKS.md).
  static PerDeviceCount cache{};
  auto* kernel = gemv1_pipelined_kernel<T, R, W, U, kNorm, MinCtas>;
  const int64_t ctas = std::min<int64_t>(
      (groups + kSlots - 1) / kSlots,
      resident_ctas(reinterpret_cast<const void*>(kernel),
                    {.threads = kWarpsPerCta * 32,
                     .max_per_sm = MinCtas > 0 ? MinCtas : 2,
                     .who = "gemv_group"},
                    cache));
  launch_pdl(kernel, dim3(static_cast<unsigned>(ctas)), dim3(kWarpsPerCta * 32),
             kNorm ? norm_smem_bytes(p.cols) : 0, stream, p, norm);
}

template <TensorType T, int R, int W, int U, int MinCtas>
void launch_gemv1(const GemvGroupParams& p, cudaStream_t stream) {
  constexpr int64_t kRowsPerCta = (kWarpsPerCta / W) * R;
  const int64_t groups = (p.total_rows + kRowsPerCta - 1) / kRowsPerCta;
  launch_pdl(gemv1_kernel<T, R, W, U, MinCtas>, dim3(static_cast<unsigned>(groups)),
             dim3(kWarpsPerCta * 32), 0, stream, p);
}

// The compiled geometries: the first three serve every type (gemv_group_geometry picks
// among them); the rest only the types bench-gemv measures.
struct GeometryEntry {
  GemvGeometry g;
  bool all_types;
};
constexpr GeometryEntry kGeometries[] = {
    {{1, 1, 2, 0, false}, true},  {{2, 1, 1, 0, false}, true},  {{1, 4, 2, 0, false}, true},
    {{2, 1, 2, 0, false}, false}, {{1, 4, 1, 0, false}, false},
    {{2, 1, 1, 0, true}, false},  {{2, 1, 2, 0, true}, false},  {{1, 1, 2, 0, true}, false},
    {{1, 4, 1, 0, true}, false},  {{1, 4, 2, 0, true}, false},  {{4, 1, 1, 0, true}, false},
    {{3, 1, 2, 0, true}, false},  {{2, 1, 2, 3, true}, false},
};
// gemv_group_geometry's picks for the types with every geometry (pipelined, resident grids).
constexpr int kLongRowsGeometry = 10;  // four rows of one item per warp
constexpr int kQ4kGroupGeometry = 11;  // three rows of two items
constexpr int kGeometryCount = sizeof(kGeometries) / sizeof(kGeometries[0]);


constexpr bool has_all_geometries(TensorType t) {
  return t == TensorType::kQ4_K || t == TensorType::kQ6_K;
}

template <TensorType T, int I>
void launch_geometry(const GemvGroupParams& p, cudaStream_t stream) {
  constexpr GemvGeometry g = kGeometries[I].g;
  if constexpr (!kGeometries[I].all_types && !has_all_geometries(T)) {
    TPNODE_CHECK(false, "gemv_group: geometry {} not compiled for {}", I, weight_type_label(T));
  } else if constexpr (g.pipelined) {
    launch_gemv1_pipelined<T, g.rows_per_warp, g.warps_per_row, g.items_per_lane,
                           g.min_ctas_per_sm>(p, stream);
  } else {
    launch_gemv1<T, g.rows_per_warp, g.warps_per_row, g.items_per_lane, g.min_ctas_per_sm>(p, stream);
  }
}

template <TensorType T, int... I>
void launch_geometry_index(const GemvGroupParams& p, int index, cudaStream_t stream,
                           std::integer_sequence<int, I...>) {
  ((index == I ? launch_geometry<T, I>(p, stream) : void()), ...);
}

}  // namespace

void quantize_acts(const QuantizeActsParams& p, cudaStream_t stream) {
  TPNODE_CHECK(p.out.group == 32 || p.out.group == 256, "quantize_acts: groups of {} (32 or 256)",
               p.out.group);
  TPNODE_CHECK(p.k % p.out.group == 0, "quantize_acts: k = {} is not a multiple of {}", p.k,
               p.out.group);
  const int64_t chunks = p.m * (p.k / 32);
  if (chunks == 0) return;
  constexpr int kThreads = 256;
  if (p.out.group == 256) {
    TPNODE_CHECK(reinterpret_cast<uintptr_t>(p.x) % 16 == 0, "quantize_acts: x not 16-byte aligned");
    const int64_t grid = (chunks / 8 * 32 + kThreads - 1) / kThreads;
    launch_pdl(quantize_acts256_kernel, dim3(static_cast<unsigned>(grid)), dim3(kThreads), 0,
               stream, p);
    TPNODE_CUDA_CHECK_LAUNCH();
    return;
  }
  const int64_t grid = (chunks * 32 + kThreads - 1) / kThreads;
  launch_pdl(quantize_acts_kernel, dim3(static_cast<unsigned>(grid)), dim3(kThreads), 0, stream, p);
  TPNODE_CUDA_CHECK_LAUNCH();
}

GemvGeometry gemv_group_geometry(const GemvGroupParams& p) {
  const TensorType type = p.outs[0].w.type;
  const SplitLayout l = split_layout(type);
  const int64_t items = p.cols / l.block_size * (l.block_size == 256 ? 4 : 1);
  if (has_all_geometries(type)) {
    // Types whose work items load into registers (Raw) gain from loading a step ahead: the
    // resident grid, four rows of one item per warp for long rows and groups of more than
    // 4096 rows; Q4_K groups of 3072 rows or more take three rows of two (on an H200
    // Llama-3-8B's gate+up 18.7 us against 24.8 with two rows of two, attn_output 4.7 against
    // 5.2, and the TP1 decode step 3% shorter); small matrices keep the one-shot grid
    // (bench-gemv). Q6_K's output layer: four rows of one 55.5 us, two rows of two 62.7, three
    // rows of two 59.2 (one TP2 rank's vocabulary slice).
    if (items > 64) return kGeometries[kLongRowsGeometry].g;
    if (type == TensorType::kQ4_K && p.total_rows >= 3072) return kGeometries[kQ4kGroupGeometry].g;
    if (p.total_rows > 4096) return kGeometries[kLongRowsGeometry].g;
  }
  // Long rows (more than 64 work items, e.g. ffn_down's) are shared by the CTA's four warps.
  // Short rows go two to a warp (more bytes in flight per warp, fewer CTAs) unless that
  // leaves too few CTAs to fill the GPU (small models).
  if (items > 64) return kGeometries[2].g;
  if (p.total_rows >= 4096) return kGeometries[1].g;
  return kGeometries[0].g;
}

std::string gemv_geometry_label(const GemvGeometry& g) {
  std::string s = fmt::format("R={} W={} U={}", g.rows_per_warp, g.warps_per_row, g.items_per_lane);
  if (g.min_ctas_per_sm > 0) s += fmt::format(" min {} CTAs/SM", g.min_ctas_per_sm);
  if (g.pipelined) s += " pipelined";
  return s;
}

std::vector<GemvGeometry> gemv_group_geometries(TensorType type) {
  std::vector<GemvGeometry> out;
  for (const GeometryEntry& e : kGeometries) {
    if (e.all_types || has_all_geometries(type)) out.push_back(e.g);
  }
  return out;
}

void gemv_group(const GemvGroupParams& p, const GemvGeometry& g, cudaStream_t stream) {
  TPNODE_CHECK(p.n >= 1 && p.n <= kMaxGemvGroup, "gemv_group: {} matrices", p.n);
  int64_t total = 0;
  for (int i = 0; i < p.n; ++i) {
    const DeviceMatrix& w = p.outs[i].w;
    TPNODE_CHECK(is_quantized(w.type) && w.type == p.outs[0].w.type && w.cols == p.cols,
                 "gemv_group: matrix {} ({}, {} columns) does not match the group ({}, {})", i,
                 weight_type_label(w.type), w.cols, weight_type_label(p.outs[0].w.type), p.cols);
    total += w.rows;
  }
  TPNODE_CHECK(total == p.total_rows, "gemv_group: total_rows {} != {}", p.total_rows, total);
  TPNODE_CHECK(p.push.peers == 0 || (p.n == 1 && p.push.peers <= kGemvMaxPeers && p.push.epoch),
               "gemv_group: an LL push needs one matrix, at most {} peers and the epoch word",
               kGemvMaxPeers);
  if (total == 0) return;
  int index = -1;
  for (int i = 0; i < kGeometryCount; ++i) {
    if (kGeometries[i].g == g) index = i;
  }
  TPNODE_CHECK(index >= 0, "gemv_group: geometry {} not compiled", gemv_geometry_label(g));
  TPNODE_DISPATCH_QUANT_TYPE(p.outs[0].w.type, T, {
    launch_geometry_index<T>(p, index, stream, std::make_integer_sequence<int, kGeometryCount>{});
  })
  TPNODE_CUDA_CHECK_LAUNCH();
}

void gemv_group(const GemvGroupParams& p, cudaStream_t stream) {
  gemv_group(p, gemv_group_geometry(p), stream);
}

namespace {
// The norm is compiled into the picks for large groups (gate/up of Llama-3 shapes) only, and
// serves groups of at least kNormMinRows: fused into q/k/v the step measured slower than with
// the norm as its own launch on an H200 (docs/BENCHMARKS.md, eleventh session).
constexpr int64_t kNormMinRows = 8192;

template <TensorType T, int I>
void launch_norm_geometry(const GemvGroupParams& p, const GemvNorm& norm, cudaStream_t stream) {
  constexpr GemvGeometry g = kGeometries[I].g;
  launch_gemv1_pipelined<T, g.rows_per_warp, g.warps_per_row, g.items_per_lane,
                         g.min_ctas_per_sm, true>(p, stream, norm);
}
}  // namespace

bool gemv_norm_group_supports(const GemvGroupParams& p) {
  if (p.n < 1 || p.n > kMaxGemvGroup || p.total_rows < kNormMinRows) return false;
  const TensorType type = p.outs[0].w.type;
  if (!has_all_geometries(type)) return false;
  for (int i = 0; i < p.n; ++i) {
    if (p.outs[i].w.type != type || p.outs[i].w.cols != p.cols) return false;
  }
  if (p.cols % kNormColsMultiple != 0 || p.cols > kNormMaxCols) return false;
  const GemvGeometry g = gemv_group_geometry(p);
  return g == kGeometries[kLongRowsGeometry].g || g == kGeometries[kQ4kGroupGeometry].g;
}

void gemv_norm_group(const GemvGroupParams& p, const GemvNorm& norm, cudaStream_t stream) {
  TPNODE_CHECK(gemv_norm_group_supports(p),
               "gemv_norm_group: {} matrices of {} with {} columns, {} rows unsupported", p.n,
               weight_type_label(p.outs[0].w.type), p.cols, p.total_rows);
  TPNODE_CHECK(norm.x != nullptr && norm.w != nullptr &&
                   (norm.r == nullptr || (norm.x_out != nullptr && norm.x_out != norm.x)),
               "gemv_norm_group: x and w are needed, and with r an x_out other than x");
  const bool three_rows = gemv_group_geometry(p) == kGeometries[kQ4kGroupGeometry].g;
  TPNODE_DISPATCH_QUANT_TYPE(p.outs[0].w.type, T, {
    if constexpr (has_all_geometries(T)) {
      if (three_rows) {
        launch_norm_geometry<T, kQ4kGroupGeometry>(p, norm, stream);
      } else {
        launch_norm_geometry<T, kLongRowsGeometry>(p, norm, stream);
      }
    }
  })
  TPNODE_CUDA_CHECK_LAUNCH();
}

GemvGroupParams stacked_gemv_group(const DeviceMatrix* mats, int n, float* y, QuantActs xq) {
  TPNODE_CHECK(n >= 1 && n <= kMaxGemvGroup, "stacked_gemv_group: {} matrices", n);
  GemvGroupParams p;
  p.n = n;
  p.cols = mats[0].cols;
  p.xq = xq;
  for (int i = 0; i < n; ++i) {
    p.outs[i] = {mats[i], y + p.total_rows};
    p.total_rows += mats[i].rows;
  }
  return p;
}

bool gemv_supports(const DeviceMatrix& w) {
  if (is_quantized(w.type)) return true;
  return gemv_float_supports(w);
}

void gemv(const GemvParams& p, cudaStream_t stream) {
  const int64_t max_m = is_quantized(p.w.type) ? kGemvMmaMaxBatch : kGemvMaxBatch;
  TPNODE_CHECK(p.m >= 1 && p.m <= max_m, "gemv: batch {} outside 1..{}", p.m, max_m);
  TPNODE_CHECK(gemv_supports(p.w), "gemv: {} matrix with {} columns unsupported",
               weight_type_label(p.w.type), p.w.cols);
  if (is_quantized(p.w.type) && p.m >= 2) {
    gemv_mma(p, stream);
  } else if (is_quantized(p.w.type)) {
    GemvGroupParams g{.n = 1, .cols = p.w.cols, .total_rows = p.w.rows, .xq = p.xq};
    g.outs[0] = {p.w, p.y};
    gemv_group(g, stream);
    return;
  } else {
    gemv_float(p, stream);  // checks its own launch
    return;
  }
  TPNODE_CUDA_CHECK_LAUNCH();
}

}  // namespace tpnode::cuda
