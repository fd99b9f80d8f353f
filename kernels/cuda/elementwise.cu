#include "kernels/cuda/elementwise.h"

#include <algorithm>
#include <cmath>

#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/gemm_dq.h"
#include "kernels/cuda/kq_records.cuh"
#include "kernels/cuda/pdl.cuh"
#include "kernels/cuda/quantize_chunk.cuh"
#include "kernels/cuda/rms_row.cuh"
#include "kernels/cuda/warp_reduce.cuh"
#include "kernels/cuda/rope.cuh"

namespace tpnode::cuda {
namespace {

constexpr int kThreads = 256;
unsigned blocks_for(int64_t n) { return static_cast<unsigned>((n + kThreads - 1) / kThreads); }


// One CTA per row, float4 per thread and pass; the first kRegPasses passes of the row stay in
// registers between the sum of squares and the scaling, later ones are read again (two passes
// of 1024 threads hold rows of up to 8192 values in 53 registers; four spilled to the stack at
// __launch_bounds__(1024)). With p.kq each pair of warps also writes the record of the
// 256-value stage it holds in the pass, straight from registers (kq::write_record4), and the
// CTA its share of the padding tokens' zeros.
constexpr int kRegPasses = 2;

// The amax of the stage that this thread's warp pair holds in pass j (its 64 threads' values):
// one CTA barrier per pass; the partners' maxima alternate between two rows by pass parity,
// so that a warp already writing pass j + 1's never overwrites one a slower warp still reads.
__device__ __forceinline__ float stage_amax(float4 o, int j) {
  __shared__ float s_max[2][32];
  const int warp = static_cast<int>(threadIdx.x / 32);
  float a = fmaxf(fmaxf(fabsf(o.x), fabsf(o.y)), fmaxf(fabsf(o.z), fabsf(o.w)));
  a = warp_max(a);
  if (threadIdx.x % 32 == 0) s_max[j & 1][warp] = a;
  __syncthreads();
  return fmaxf(a, s_max[j & 1][warp ^ 1]);
}

__global__ void __launch_bounds__(1024) rmsnorm_kernel(RmsNormParams p) {
  const int64_t row = blockIdx.x;
  const int64_t n4 = p.n / 4;
  const int passes = static_cast<int>((n4 + blockDim.x - 1) / blockDim.x);
  auto index = [&](int j) { return static_cast<int64_t>(j) * blockDim.x + threadIdx.x; };
  // The norm weights are no kernel's output: their loads go out before waiting for the launch
  // before, and in parallel with x's, instead of after the sum of squares. The first
  // kRegPasses passes keep w and the row in registers: their loops are unrolled (constant
  // indices), the passes after them read both again.
  const float4* wv = reinterpret_cast<const float4*>(p.w);
  float4 wr[kRegPasses];
#pragma unroll
  for (int j = 0; j < kRegPasses; ++j) {
    if (j < passes && index(j) < n4) wr[j] = wv[index(j)];
  }
  pdl_wait();
  pdl_launch_dependents();
  const float4* x = reinterpret_cast<const float4*>(p.x + row * p.n);
  const float4* r = p.r ? reinterpret_cast<const float4*>(p.r + row * p.n) : nullptr;
  float4* xo = p.x_out ? reinterpret_cast<float4*>(p.x_out + row * p.n) : nullptr;
  auto load = [&](int j) {
    const int64_t i = index(j);
    float4 a{0.0f, 0.0f, 0.0f, 0.0f};
    if (i < n4) {
      a = x[i];
      if (r) a = add4(a, r[i]);
      if (xo) xo[i] = a;
    }
    return a;
  };
  float4 v[kRegPasses];
  float ss = 0.0f;
#pragma unroll
  for (int j = 0; j < kRegPasses; ++j) {
    if (j < passes) {
      v[j] = load(j);
      ss = add_squares4(ss, v[j]);
    }
  }
  for (int j = kRegPasses; j < passes; ++j) ss = add_squares4(ss, load(j));
  const float inv = rms_inverse(ss, p.n, p.eps);
  float4* y = reinterpret_cast<float4*>(p.y + row * p.n);
  // Every lane runs every pass, so the 8-lane shuffles of the quantization stay converged.
  auto store = [&](int j, float4 a, float4 w) {
    const int64_t i = index(j);
    float4 o{0.0f, 0.0f, 0.0f, 0.0f};
    if (i < n4) {
      o = rms_scale4(a, inv, w);
      y[i] = o;
      if (p.y_bf16 != nullptr) {
        auto* yb = reinterpret_cast<__nv_bfloat162*>(p.y_bf16 + row * p.n + 4 * i);
        yb[0] = __floats2bfloat162_rn(o.x, o.y);
        yb[1] = __floats2bfloat162_rn(o.z, o.w);
      }
    }
    // n % 32 == 0: 8-lane groups are wholly inside or outside the row.
    if (p.quant.q != nullptr) quantize_chunk8(p.quant, (row * p.n + 4 * i) / 32, o, i < n4);
    if (p.kq != nullptr) {  // n % 256 == 0: a warp pair's 64 float4s are one whole stage
      const float amax = stage_amax(o, j);
      const int groups = static_cast<int>((p.rows + 7) / 8);
      kq::write_record4(o, amax, kq::record(p.kq, i / 64, groups, row), static_cast<int>(row % 8),
                        i < n4);
    }
  };
#pragma unroll
  for (int j = 0; j < kRegPasses; ++j) {
    if (j < passes) store(j, v[j], wr[j]);
  }
  for (int j = kRegPasses; j < passes; ++j) {
    const int64_t i = index(j);
    float4 a{0.0f, 0.0f, 0.0f, 0.0f}, w{0.0f, 0.0f, 0.0f, 0.0f};
    if (i < n4) {
      a = xo ? xo[i] : x[i];
      if (r && !xo) a = add4(a, r[i]);
      w = wv[i];
    }
    store(j, a, w);
  }
  if (p.kq != nullptr) {
    kq::write_padding_records(p.kq, 0, p.n / 256, row, p.rows, static_cast<int>(blockDim.x / 32));
  }
}

// Rows whose length is not a multiple of 4 (never quantized: that needs n % 32 == 0).
__global__ void __launch_bounds__(kThreads) rmsnorm_scalar_kernel(RmsNormParams p) {
  pdl_wait();
  pdl_launch_dependents();
  const int64_t row = blockIdx.x;
  const float* x = p.x + row * p.n;
  const float* r = p.r ? p.r + row * p.n : nullptr;
  float* xo = p.x_out ? p.x_out + row * p.n : nullptr;
  float ss = 0.0f;
  for (int64_t i = threadIdx.x; i < p.n; i += kThreads) {
    const float v = r ? x[i] + r[i] : x[i];
    if (xo) xo[i] = v;
    ss += v * v;
  }
  __shared__ float partial[kThreads / 32];
  ss = warp_sum(ss);
  if (threadIdx.x % 32 == 0) partial[threadIdx.x / 32] = ss;
  __syncthreads();
  float total = 0.0f;
#pragma unroll
  for (int w = 0; w < kThreads / 32; ++w) total += partial[w];
  const float inv = rsqrtf(total / static_cast<float>(p.n) + p.eps);
  float* y = p.y + row * p.n;
  for (int64_t i = threadIdx.x; i < p.n; i += kThreads) {
    const float v = xo ? xo[i] : (r ? x[i] + r[i] : x[i]);
    y[i] = v * inv * p.w[i];
  }
}

// One thread per (token, head of q or k, rotation pair).
__global__ void rope_kernel(RopeKernelParams p) {
  pdl_wait();
  pdl_launch_dependents();
  const int64_t half = p.head_dim / 2;
  const int64_t heads = p.n_head + p.n_head_kv;
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= p.n_tokens * heads * half) return;
  const int64_t i = idx % half;
  const int64_t h = (idx / half) % heads;
  const int64_t t = idx / (half * heads);
  float* v = h < p.n_head ? p.q + (t * p.n_head + h) * p.head_dim
                          : p.k + (t * p.n_head_kv + (h - p.n_head)) * p.head_dim;
  const RopeCosSin r = rope_cos_sin(p.positions[t], p.inv_freq, i);
  const int64_t a = p.style == RopeStyle::kNeox ? i : 2 * i;
  const int64_t b = p.style == RopeStyle::kNeox ? i + half : 2 * i + 1;
  const float x0 = v[a], x1 = v[b];
  v[a] = rope_first(x0, x1, r);
  v[b] = rope_second(x0, x1, r);
}

// One thread per value. With the 8-bit copy n % 32 == 0 (group 32: a warp is one chunk, in or
// out as a whole) or n % 256 == 0 (group 256: a CTA of 256 threads is one group); with the
// gemm_dq copy the grid also covers the padding tokens, which write its zeros only.
// silu(g) * u: the one formula of both SwiGLU kernels (their outputs are bitwise the same).
__device__ __forceinline__ float swiglu1(float g, float u) { return g / (1.0f + __expf(-g)) * u; }

__global__ void swiglu_kernel(SwigluParams p) {
  pdl_wait();
  pdl_launch_dependents();
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const bool quant = p.quant.q != nullptr;
  if (i >= p.n) {  // whole warps (CTAs) of the 8-bit copies stay below n
    if (p.out_dq != nullptr) {
      const int64_t m = p.n / p.cols, tok = i / p.cols;
      if (tok < (m + 7) / 8 * 8) {
        p.out_dq[gemm_dq_act_index(m, tok, i % p.cols)] = __float2bfloat16(0.0f);
      }
    }
    return;
  }
  const float v = swiglu1(p.gate[i], p.up[i]);
  p.out[i] = v;
  if (p.out_bf16 != nullptr) p.out_bf16[i] = __float2bfloat16(v);
  if (p.out_dq != nullptr) {
    p.out_dq[gemm_dq_act_index(p.n / p.cols, i / p.cols, i % p.cols)] = __float2bfloat16(v);
  }
  if (quant && p.quant.group == 32) quantize_chunk32(p.quant, i / 32, v);
  if (quant && p.quant.group == 256) quantize_group256_cta(p.quant, i, v);
}

// SwiGLU with no 8-bit or gemm_dq copy (the f32 output and optionally its BF16 copy): four
// values per thread, 16-byte loads and stores (n % 4 == 0, 16-byte aligned rows).
__global__ void swiglu4_kernel(SwigluParams p) {
  pdl_wait();
  pdl_launch_dependents();
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (4 * i >= p.n) return;
  const float4 g = reinterpret_cast<const float4*>(p.gate)[i];
  const float4 u = reinterpret_cast<const float4*>(p.up)[i];
  const float4 v{swiglu1(g.x, u.x), swiglu1(g.y, u.y), swiglu1(g.z, u.z), swiglu1(g.w, u.w)};
  reinterpret_cast<float4*>(p.out)[i] = v;
  if (p.out_bf16 != nullptr) {
    auto* b = reinterpret_cast<__nv_bfloat162*>(p.out_bf16) + 2 * i;
    b[0] = __floats2bfloat162_rn(v.x, v.y);
    b[1] = __floats2bfloat162_rn(v.z, v.w);
  }
}

// SwiGLU that also writes gemm_kq's records: one warp per (token slot, 256-value stage), as
// gemm_kq_acts lays them out; lane l holds values 8l..8l+7 of the stage. It writes every copy
// asked for (f32, BF16, gemm_dq's layout, 8-bit in groups of 256), each bitwise what the
// kernels above and gemm_kq_acts / gemm_dq_acts / quantize_acts write. Slots past the last
// token get zero records (and zeros in gemm_dq's layout).
__global__ void swiglu_kq_kernel(SwigluParams p, int groups, int64_t n_warps) {
  const int64_t wid = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  const int lane = static_cast<int>(threadIdx.x % 32);
  pdl_wait();
  pdl_launch_dependents();
  if (wid >= n_warps) return;
  const int64_t m = p.n / p.cols, slots = int64_t{groups} * 8;
  const int64_t tok = wid % slots, st = wid / slots, col = st * 256 + 8 * lane;
  float v[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
  if (tok < m) {
    const int64_t i = tok * p.cols + col;
    const float4* g = reinterpret_cast<const float4*>(p.gate + i);
    const float4* u = reinterpret_cast<const float4*>(p.up + i);
    const float4 g0 = g[0], g1 = g[1], u0 = u[0], u1 = u[1];
    v[0] = swiglu1(g0.x, u0.x), v[1] = swiglu1(g0.y, u0.y), v[2] = swiglu1(g0.z, u0.z);
    v[3] = swiglu1(g0.w, u0.w), v[4] = swiglu1(g1.x, u1.x), v[5] = swiglu1(g1.y, u1.y);
    v[6] = swiglu1(g1.z, u1.z), v[7] = swiglu1(g1.w, u1.w);
    float4* o = reinterpret_cast<float4*>(p.out + i);
    o[0] = make_float4(v[0], v[1], v[2], v[3]);
    o[1] = make_float4(v[4], v[5], v[6], v[7]);
    if (p.out_bf16 != nullptr) {
      auto* b = reinterpret_cast<__nv_bfloat162*>(p.out_bf16 + i);
#pragma unroll
      for (int j = 0; j < 4; ++j) b[j] = __floats2bfloat162_rn(v[2 * j], v[2 * j + 1]);
    }
  }
  // The stage is the 8-bit copy's 256-value group: one quantization serves it and the record.
  int q[8], chunk_sum = 0;
  const float d = quantize_group256(v, q, chunk_sum);
  if (p.quant.q != nullptr && tok < m) {
    const int64_t i = tok * p.cols + col;
    *reinterpret_cast<uint2*>(p.quant.q + i) = make_uint2(pack_s8x4(q), pack_s8x4(q + 4));
    if (lane % 4 == 0) {
      p.quant.d[i / 32] = d;
      p.quant.s[i / 32] = d * static_cast<float>(chunk_sum);
    }
  }
  if (p.out_dq != nullptr) {  // values 2j, 2j + 1 are neighbours in gemm_dq's layout
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      *reinterpret_cast<__nv_bfloat162*>(p.out_dq + gemm_dq_act_index(m, tok, col + 2 * j)) =
          __floats2bfloat162_rn(v[2 * j], v[2 * j + 1]);
    }
  }
  kq::write_quantized_record(q, d, chunk_sum, kq::record(p.kq, st, groups, tok),
                             static_cast<int>(tok % 8));
}

__global__ void add_kernel(AddParams p) {
  pdl_wait();
  pdl_launch_dependents();
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < p.n) p.out[i] = p.x[i] + p.y[i];
}

__global__ void bias_kernel(BiasParams p) {
  pdl_wait();
  pdl_launch_dependents();
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < p.m * p.n) p.y[i] += p.b[i % p.n];
}

__global__ void gather_act_rows_kernel(GatherActRowsParams p) {
  pdl_wait();
  pdl_launch_dependents();
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= p.n * p.row_len) return;
  const int64_t j = i / p.row_len, c = i % p.row_len;
  p.out[i] = p.x[static_cast<int64_t>(p.rows[j]) * p.row_len + c];
}

}  // namespace

void rmsnorm(const RmsNormParams& p, cudaStream_t stream) {
  if (p.rows == 0) return;
  TPNODE_CHECK(p.quant.q == nullptr || p.n % 32 == 0,
               "rmsnorm: quantized output needs n % 32 == 0 (n = {})", p.n);
  TPNODE_CHECK(p.kq == nullptr || (p.n % 256 == 0 && p.n <= kRmsNormMaxKqCols &&
                                   reinterpret_cast<uintptr_t>(p.kq) % 16 == 0),
               "rmsnorm: gemm_kq records need n % 256 == 0, n <= {} and 16-byte alignment (n = {})",
               kRmsNormMaxKqCols, p.n);
  if (p.n % 4 != 0) {
    TPNODE_CHECK(p.y_bf16 == nullptr, "rmsnorm: the BF16 copy needs n % 4 == 0 (n = {})", p.n);
    launch_pdl(rmsnorm_scalar_kernel, dim3(static_cast<unsigned>(p.rows)), dim3(kThreads), 0,
               stream, p);
    TPNODE_CUDA_CHECK_LAUNCH();
    return;
  }
  // One float4 per thread and pass; whole warps, up to 1024 threads.
  const int64_t n4 = p.n / 4;
  const int threads = static_cast<int>(std::min<int64_t>(1024, (n4 + 31) / 32 * 32));
  launch_pdl(rmsnorm_kernel, dim3(static_cast<unsigned>(p.rows)), dim3(threads), 0, stream, p);
  TPNODE_CUDA_CHECK_LAUNCH();
}

void rope(const RopeKernelParams& p, cudaStream_t stream) {
  TPNODE_CHECK(p.head_dim % 2 == 0, "rope: odd head_dim {}", p.head_dim);
  const int64_t n = p.n_tokens * (p.n_head + p.n_head_kv) * (p.head_dim / 2);
  if (n == 0) return;
  launch_pdl(rope_kernel, dim3(blocks_for(n)), dim3(kThreads), 0, stream, p);
  TPNODE_CUDA_CHECK_LAUNCH();
}

void swiglu(const SwigluParams& p, cudaStream_t stream) {
  if (p.n == 0) return;
  const bool quant = p.quant.q != nullptr;
  TPNODE_CHECK(!quant || (p.quant.group == 32 && p.n % 32 == 0) ||
                   (p.quant.group == 256 && p.n % 256 == 0),
               "swiglu: an 8-bit copy in groups of {} needs n % 32 == 0 (32) or n % 256 == 0 "
               "(256), n = {}",
               p.quant.group, p.n);
  static_assert(kThreads == 256, "a CTA is one 256-value group");
  TPNODE_CHECK(p.out_dq == nullptr || (!quant && p.cols > 0 && p.cols % 256 == 0 && p.n % p.cols == 0),
               "swiglu: the gemm_dq copy needs whole rows of a multiple of 256 (n = {}, cols = {}) "
               "and no 8-bit copy",
               p.n, p.cols);
  const auto aligned = [](const void* q) { return reinterpret_cast<uintptr_t>(q) % 16 == 0; };
  if (p.kq != nullptr) {
    TPNODE_CHECK(p.cols > 0 && p.cols % 256 == 0 && p.n % p.cols == 0 &&
                     (!quant || p.quant.group == 256) && aligned(p.gate) && aligned(p.up) &&
                     aligned(p.out) && aligned(p.kq) &&
                     (p.out_bf16 == nullptr || reinterpret_cast<uintptr_t>(p.out_bf16) % 4 == 0),
                 "swiglu: gemm_kq records need whole rows of a multiple of 256 (n = {}, cols = "
                 "{}), 16-byte aligned buffers and an 8-bit copy, if any, in groups of 256",
                 p.n, p.cols);
    const int groups = static_cast<int>((p.n / p.cols + 7) / 8);
    const int64_t n_warps = int64_t{groups} * 8 * (p.cols / 256);
    launch_pdl(swiglu_kq_kernel, dim3(blocks_for(n_warps * 32)), dim3(kThreads), 0, stream, p,
               groups, n_warps);
    TPNODE_CUDA_CHECK_LAUNCH();
    return;
  }
  if (!quant && p.out_dq == nullptr && p.n % 4 == 0 && aligned(p.gate) && aligned(p.up) &&
      aligned(p.out) && (p.out_bf16 == nullptr || reinterpret_cast<uintptr_t>(p.out_bf16) % 8 == 0)) {
    launch_pdl(swiglu4_kernel, dim3(blocks_for(p.n / 4)), dim3(kThreads), 0, stream, p);
    TPNODE_CUDA_CHECK_LAUNCH();
    return;
  }
  // The gemm_dq copy also covers the padding tokens up to a multiple of 8.
  const int64_t threads =
      p.out_dq != nullptr ? gemm_dq_acts_elems(p.n / p.cols, p.cols) : p.n;
  launch_pdl(swiglu_kernel, dim3(blocks_for(threads)), dim3(kThreads), 0, stream, p);
  TPNODE_CUDA_CHECK_LAUNCH();
}

void add(const AddParams& p, cudaStream_t stream) {
  if (p.n == 0) return;
  launch_pdl(add_kernel, dim3(blocks_for(p.n)), dim3(kThreads), 0, stream, p);
  TPNODE_CUDA_CHECK_LAUNCH();
}

void add_bias(const BiasParams& p, cudaStream_t stream) {
  if (p.m * p.n == 0) return;
  launch_pdl(bias_kernel, dim3(blocks_for(p.m * p.n)), dim3(kThreads), 0, stream, p);
  TPNODE_CUDA_CHECK_LAUNCH();
}

void gather_act_rows(const GatherActRowsParams& p, cudaStream_t stream) {
  if (p.n * p.row_len == 0) return;
  launch_pdl(gather_act_rows_kernel, dim3(blocks_for(p.n * p.row_len)), dim3(kThreads), 0, stream, p);
  TPNODE_CUDA_CHECK_LAUNCH();
}

}  // namespace tpnode::cuda
