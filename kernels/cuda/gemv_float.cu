#include "kernels/cuda/gemv_float.h"

#include <fmt/format.h>

#include <algorithm>
#include <string>
#include <utility>

#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/device_query.h"
#include "kernels/cuda/dispatch.cuh"
#include "kernels/cuda/float_convert.cuh"
#include "kernels/cuda/gemv_rows.cuh"
#include "kernels/cuda/pdl.cuh"
#include "kernels/cuda/warp_reduce.cuh"

namespace tpnode::cuda {
namespace {

constexpr int kWarpsPerCta = 4;
constexpr int kThreads = kWarpsPerCta * 32;


// Streams weights: no L1 allocation, so that x stays there.
__device__ __forceinline__ int4 ld_stream(const int4* p) {
  int4 v;
  asm volatile("ld.global.nc.L1::no_allocate.v4.s32 {%0, %1, %2, %3}, [%4];"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "l"(p));
  return v;
}

// Row `row` of the group (its matrices' rows counted one after the other): where its
// weights start, and its output for batch column 0 (column c at y + c * ldy).
struct FloatRow {
  const int4* w;
  float* y;
  int64_t ldy;
};
__device__ __forceinline__ FloatRow float_group_row(const GemvFloatGroupParams& p, int64_t row) {
  const GemvOut& o = p.outs[group_part(p.outs, p.n, row)];
  return {reinterpret_cast<const int4*>(o.w.q + row * o.w.q_row_bytes), o.y + row, o.w.rows};
}

// ---- one warp per row ------------------------------------------------------------------
// Each lane loads U 16-byte weight items before using any, so that a warp keeps U * 512
// bytes in flight; then the warp computes, then loads again.
template <TensorType T, int NC>
__global__ void __launch_bounds__(kThreads) gemv_float_rowwise_kernel(GemvFloatGroupParams p) {
  constexpr int E = FloatElem<T>::kPer16B;
  constexpr int U = NC <= 2 ? 4 : 2;
  const int lane = threadIdx.x % 32;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kWarpsPerCta + threadIdx.x / 32;
  if (row >= p.total_rows) return;
  const int64_t k = p.cols;
  const FloatRow fr = float_group_row(p, row);
  const int4* __restrict__ wrow = fr.w;
  float acc[NC];
#pragma unroll
  for (int c = 0; c < NC; ++c) acc[c] = 0.0f;
  const int64_t items = k / E;
  for (int64_t base = lane; base < items; base += 32 * U) {
    int4 raw[U];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int64_t it = base + 32 * u;
      raw[u] = it < items ? ld_stream(wrow + it) : make_int4(0, 0, 0, 0);
    }
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int64_t it = base + 32 * u;
      if (it >= items) break;
      float w[E];
      unpack16<T>(raw[u], w);
#pragma unroll
      for (int c = 0; c < NC; ++c) {
        if (c < p.m) {
          const float4* x = reinterpret_cast<const float4*>(p.x + c * k + it * E);
#pragma unroll
          for (int v = 0; v < E / 4; ++v) {
            const float4 xv = x[v];
            acc[c] += w[4 * v] * xv.x + w[4 * v + 1] * xv.y + w[4 * v + 2] * xv.z +
                      w[4 * v + 3] * xv.w;
          }
        }
      }
    }
  }
#pragma unroll
  for (int c = 0; c < NC; ++c) {
    const float v = warp_sum(acc[c]);
    if (lane == 0 && c < p.m) fr.y[c * fr.ldy] = v;
  }
}

// ---- pipelined, resident grid ----------------------------------------------------------
// A warp owns row groups of R consecutive rows of the group (g, g + stride, ...) and walks
// each in steps: in a step a lane takes U items of each of the R rows, items
// first + 32 * u (u < U), so that every load instruction of the warp reads 512 contiguous
// bytes. x is read through L1 (the weights bypass it) once per item for all R rows.
//
// Past the end of a row an item repeats the last one (an L1/L2 hit) and its product is
// dropped, so that a step's R x U loads always go out together.
template <TensorType T, int NC, int R, int U>
struct FloatStep {
  static constexpr int E = FloatElem<T>::kPer16B;

  __device__ static void load(int4 (&raw)[R][U], const int4* const (&w)[R], int first,
                              int items) {
#pragma unroll
    for (int r = 0; r < R; ++r) {
#pragma unroll
      for (int u = 0; u < U; ++u) raw[r][u] = ld_stream(w[r] + min(first + 32 * u, items - 1));
    }
  }

  // acc[r][c] += the products of this step's items of row r with column c of x.
  __device__ static void dots(float (&acc)[R][NC], const int4 (&raw)[R][U], const float* x,
                              int64_t cols, int first, int items) {
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int item = first + 32 * u;
      const int at = min(item, items - 1);
      float xv[NC][E];
#pragma unroll
      for (int c = 0; c < NC; ++c) {
        const float4* xp = reinterpret_cast<const float4*>(x + c * cols + static_cast<int64_t>(at) * E);
#pragma unroll
        for (int v = 0; v < E / 4; ++v) {
          const float4 f = xp[v];
          xv[c][4 * v] = f.x;
          xv[c][4 * v + 1] = f.y;
          xv[c][4 * v + 2] = f.z;
          xv[c][4 * v + 3] = f.w;
        }
      }
#pragma unroll
      for (int r = 0; r < R; ++r) {
        float w[E];
        unpack16<T>(raw[r][u], w);
#pragma unroll
        for (int c = 0; c < NC; ++c) {
          float s = 0.0f;
#pragma unroll
          for (int e = 0; e < E; ++e) s = fmaf(w[e], xv[c][e], s);
          acc[r][c] += item < items ? s : 0.0f;
        }
      }
    }
  }
};

template <TensorType T, int NC, int R, int U>
__global__ void __launch_bounds__(kThreads) gemv_float_pipelined_kernel(GemvFloatGroupParams p) {
  using Step = FloatStep<T, NC, R, U>;
  constexpr int E = Step::E;
  const int lane = threadIdx.x % 32;
  const int items = static_cast<int>(p.cols / E);
  const int iters = (items + 32 * U - 1) / (32 * U);
  const int64_t groups = (p.total_rows + R - 1) / R;
  const int64_t first = static_cast<int64_t>(blockIdx.x) * kWarpsPerCta + threadIdx.x / 32;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kWarpsPerCta;
  const int64_t steps = first < groups ? (groups - first + stride - 1) / stride * iters : 0;
  if (steps == 0) {
    pdl_wait();
    return;
  }
  // Rows past the end read the group's last row; their sums are not written.
  auto rows_of = [&](int64_t g, const int4* (&w)[R]) {
#pragma unroll
    for (int r = 0; r < R; ++r) w[r] = float_group_row(p, min(g * R + r, p.total_rows - 1)).w;
  };
  int64_t g = first;
  int it = 0;
  const int4* w[R];
  rows_of(g, w);
  int4 cur[R][U];
  // Weights are written by no kernel: their first step starts before waiting for x. Waiting
  // earlier is always legal, so ptxas hoists the wait above these loads unless something
  // before the wait needs their data: a store that never happens (m >= 1) keeps them ahead.
  Step::load(cur, w, lane, items);
  if (p.m == 0 && cur[0][0].x == 0) p.outs[0].y[0] = 0.0f;
  pdl_wait();
  pdl_launch_dependents();

  float acc[R][NC];
#pragma unroll
  for (int r = 0; r < R; ++r) {
#pragma unroll
    for (int c = 0; c < NC; ++c) acc[r][c] = 0.0f;
  }
  for (int64_t s = 0; s < steps; ++s) {
    const auto [gn, itn] = next_walk_step({g, it}, iters, stride);
    int4 nxt[R][U];
    if (s + 1 < steps) {
      if (gn != g) rows_of(gn, w);
      Step::load(nxt, w, lane + 32 * U * itn, items);
    }
    Step::dots(acc, cur, p.x, p.cols, lane + 32 * U * it, items);
    if (it == iters - 1) {
#pragma unroll
      for (int r = 0; r < R; ++r) {
        const int64_t row = g * R + r;
        const FloatRow fr = float_group_row(p, min(row, p.total_rows - 1));
#pragma unroll
        for (int c = 0; c < NC; ++c) {
          const float v = warp_sum(acc[r][c]);
          acc[r][c] = 0.0f;
          if (lane == 0 && row < p.total_rows && c < p.m) fr.y[c * fr.ldy] = v;
        }
      }
    }
#pragma unroll
    for (int r = 0; r < R; ++r) {
#pragma unroll
      for (int u = 0; u < U; ++u) cur[r][u] = nxt[r][u];
    }
    g = gn;
    it = itn;
  }
}

// The compiled pipelined geometries (rows per warp, items per lane).
constexpr GemvGeometry kPipelined[] = {
    {1, 1, 4, 0, true}, {1, 1, 8, 0, true}, {2, 1, 2, 0, true},
    {2, 1, 4, 0, true}, {4, 1, 1, 0, true}, {4, 1, 2, 0, true},
};
constexpr int kPipelinedCount = sizeof(kPipelined) / sizeof(kPipelined[0]);
static_assert(kFloatGemvBestBatch <= 2, "pipelined float GEMV kernels exist for m = 1, 2");

template <TensorType T, int NC, int I>
void launch_pipelined(const GemvFloatGroupParams& p, cudaStream_t stream) {
  constexpr int R = kPipelined[I].rows_per_warp;
  constexpr int U = kPipelined[I].items_per_lane;
  static_assert(kPipelined[I].warps_per_row == 1 && kPipelined[I].min_ctas_per_sm == 0);
  auto* kernel = gemv_float_pipelined_kernel<T, NC, R, U>;
  const int64_t groups = (p.total_rows + R - 1) / R;
  // As many row groups per warp as the resident warps need, spread over as few warps as
  // that allows: every warp then has (nearly) the same number of groups, and no last round
  // of a few warps runs alone at the end.
  // At most four CTAs per SM: what the engine ran with when measured (the count was once
  // cached for all these kernels from the first one launched, the LM head's, whose registers
  // allow four).
  static PerDeviceCount cache{};
  const int64_t max_warps =
      static_cast<int64_t>(resident_ctas(reinterpret_cast<const void*>(kernel),
                                         {.threads = kThreads, .max_per_sm = 4,
                                          .who = "gemv_float_group"},
                                         cache)) *
      kWarpsPerCta;
  const int64_t per_warp = (groups + max_warps - 1) / max_warps;
  const int64_t warps = (groups + per_warp - 1) / per_warp;
  const int64_t ctas = (warps + kWarpsPerCta - 1) / kWarpsPerCta;
  launch_pdl(kernel, dim3(static_cast<unsigned>(ctas)), dim3(kThreads), 0, stream, p);
}

template <TensorType T, int NC, int... I>
void launch_pipelined_index(const GemvFloatGroupParams& p, int index, cudaStream_t stream,
                            std::integer_sequence<int, I...>) {
  ((index == I ? launch_pipelined<T, NC, I>(p, stream) : void()), ...);
}

int pipelined_index(const GemvGeometry& g) {
  for (int i = 0; i < kPipelinedCount; ++i) {
    if (kPipelined[i] == g) return i;
  }
  return -1;
}

void check_group(const GemvFloatGroupParams& p) {
  TPNODE_CHECK(p.n >= 1 && p.n <= kMaxGemvGroup, "gemv_float_group: {} matrices (1..{})", p.n,
               kMaxGemvGroup);
  TPNODE_CHECK(p.m >= 1 && p.m <= kGemvMaxBatch, "gemv_float_group: batch {} outside 1..{}", p.m,
               kGemvMaxBatch);
  TPNODE_CHECK(p.x != nullptr && reinterpret_cast<uintptr_t>(p.x) % 16 == 0,
               "gemv_float_group: x is null or not 16-byte aligned");
  const TensorType type = p.outs[0].w.type;
  int64_t total = 0;
  for (int i = 0; i < p.n; ++i) {
    const DeviceMatrix& w = p.outs[i].w;
    TPNODE_CHECK(gemv_float_supports(w) && w.type == type && w.cols == p.cols,
                 "gemv_float_group: matrix {} ({}, {} columns) does not fit the group ({}, {} "
                 "columns; float types, rows of whole 16-byte items)",
                 i, weight_type_label(w.type), w.cols, weight_type_label(type), p.cols);
    TPNODE_CHECK(w.rows >= 0 && (w.rows == 0 || (w.q != nullptr && p.outs[i].y != nullptr)),
                 "gemv_float_group: matrix {} has {} rows, weights {}, output {}", i, w.rows,
                 fmt::ptr(w.q), fmt::ptr(p.outs[i].y));
    TPNODE_CHECK(reinterpret_cast<uintptr_t>(w.q) % 16 == 0 && w.q_row_bytes % 16 == 0,
                 "gemv_float_group: matrix {} rows are not 16-byte aligned", i);
    total += w.rows;
  }
  TPNODE_CHECK(total == p.total_rows, "gemv_float_group: total_rows {} != the matrices' {}",
               p.total_rows, total);
}

}  // namespace

GemvGeometry gemv_float_rowwise_geometry(int64_t m) {
  return {.rows_per_warp = 1, .warps_per_row = 1, .items_per_lane = m <= 2 ? 4 : 2,
          .min_ctas_per_sm = 0, .pipelined = false};
}

GemvGeometry gemv_float_group_geometry(const GemvFloatGroupParams& p) {
  if (p.m > kFloatGemvBestBatch) return gemv_float_rowwise_geometry(p.m);
  // Two rows per warp share each x load; four items per lane keep 4 KB per warp in flight.
  // At m = 2 and rows of up to 8192, four rows of two items each halve x's L1 traffic again
  // (bench-gemv on an H200: q/k/v and attn_output of Llama-3 70B TP2 and 8B).
  if (p.m == 2 && p.cols <= 8192 && p.total_rows <= 8192) return kPipelined[5];
  // Few rows (q/k/v of Llama-3 8B and 70B TP2: 6144 and 5120) leave the two-row grid short of
  // warps: one row of eight items per lane (70B q/k/v 24.3 us against 29.1, 8B 14.3 vs 15.4).
  if (p.m == 1 && p.total_rows <= 6144) return kPipelined[1];
  return kPipelined[3];
}

std::vector<GemvGeometry> gemv_float_group_geometries(int64_t m) {
  std::vector<GemvGeometry> out{gemv_float_rowwise_geometry(m)};
  if (m <= kFloatGemvBestBatch) out.insert(out.end(), std::begin(kPipelined), std::end(kPipelined));
  return out;
}

void gemv_float_group(const GemvFloatGroupParams& p, const GemvGeometry& g, cudaStream_t stream) {
  check_group(p);
  if (p.total_rows == 0) return;
  const TensorType type = p.outs[0].w.type;
  if (g == gemv_float_rowwise_geometry(p.m)) {
    const unsigned grid = static_cast<unsigned>((p.total_rows + kWarpsPerCta - 1) / kWarpsPerCta);
    TPNODE_DISPATCH_FLOAT_TYPE(type, T, {
      TPNODE_DISPATCH_GEMV_COLS(p.m, NC, { gemv_float_rowwise_kernel<T, NC><<<grid, kThreads, 0, stream>>>(p); })
    })
  } else {
    const int index = pipelined_index(g);
    TPNODE_CHECK(index >= 0 && p.m <= kFloatGemvBestBatch,
                 "gemv_float_group: geometry {} not compiled for batch {}", gemv_geometry_label(g), p.m);
    constexpr auto kAll = std::make_integer_sequence<int, kPipelinedCount>{};
    TPNODE_DISPATCH_FLOAT_TYPE(type, T, {
      if (p.m == 1) {
        launch_pipelined_index<T, 1>(p, index, stream, kAll);
      } else {
        launch_pipelined_index<T, 2>(p, index, stream, kAll);
      }
    })
  }
  TPNODE_CUDA_CHECK_LAUNCH();
}

void gemv_float_group(const GemvFloatGroupParams& p, cudaStream_t stream) {
  gemv_float_group(p, gemv_float_group_geometry(p), stream);
}

GemvFloatGroupParams stacked_gemv_float_group(const DeviceMatrix* mats, int n, const float* x,
                                              int64_t m, float* y) {
  TPNODE_CHECK(n >= 1 && n <= kMaxGemvGroup, "stacked_gemv_float_group: {} matrices", n);
  GemvFloatGroupParams p;
  p.n = n;
  p.cols = mats[0].cols;
  p.x = x;
  p.m = m;
  for (int i = 0; i < n; ++i) {
    p.outs[i] = {mats[i], y + m * p.total_rows};
    p.total_rows += mats[i].rows;
  }
  return p;
}

void gemv_float(const GemvParams& p, cudaStream_t stream) {
  GemvFloatGroupParams g{.outs = {}, .n = 1, .cols = p.w.cols, .total_rows = p.w.rows, .x = p.x, .m = p.m};
  g.outs[0] = {p.w, p.y};
  gemv_float_group(g, stream);
}

bool gemv_float_supports(const DeviceMatrix& w) {
  const bool is_float =
      w.type == TensorType::kF32 || w.type == TensorType::kF16 || w.type == TensorType::kBF16;
  return is_float && w.cols > 0 && w.cols % 8 == 0;
}

}  // namespace tpnode::cuda
