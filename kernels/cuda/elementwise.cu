#include "kernels/cuda/elementwise.h"

#include <cmath>

#include "kernels/cuda/cuda_check.h"

namespace tpnode::cuda {
namespace {

constexpr int kThreads = 256;
unsigned blocks_for(int64_t n) { return static_cast<unsigned>((n + kThreads - 1) / kThreads); }

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Called by all 32 lanes of a warp holding the 32 values of chunk `chunk` in order.
__device__ __forceinline__ void quantize_chunk(const QuantActs& out, int64_t chunk, float v) {
  const int lane = threadIdx.x % 32;
  const float amax = warp_max(fabsf(v));
  const float d = amax / 127.0f;
  const int q = amax > 0.0f ? __float2int_rn(v / d) : 0;
  out.q[chunk * 32 + lane] = static_cast<int8_t>(q);
  const float sum = warp_sum(static_cast<float>(q));
  if (lane == 0) {
    out.d[chunk] = d;
    out.s[chunk] = d * sum;
  }
}

// One CTA per row. Each warp's pass covers 32 consecutive values: a quantization chunk.
__global__ void __launch_bounds__(kThreads) rmsnorm_kernel(RmsNormParams p) {
  const int64_t row = blockIdx.x;
  const float* x = p.x + row * p.n;
  float* y = p.y + row * p.n;
  float ss = 0.0f;
  for (int64_t i = threadIdx.x; i < p.n; i += kThreads) ss += x[i] * x[i];
  __shared__ float partial[kThreads / 32];
  ss = warp_sum(ss);
  if (threadIdx.x % 32 == 0) partial[threadIdx.x / 32] = ss;
  __syncthreads();
  float total = 0.0f;
#pragma unroll
  for (int w = 0; w < kThreads / 32; ++w) total += partial[w];
  const float inv = rsqrtf(total / static_cast<float>(p.n) + p.eps);
  if (p.quant.q != nullptr) {
    // n % 32 == 0: every warp pass is a whole chunk, so all lanes stay converged.
    for (int64_t i = threadIdx.x; i < p.n; i += kThreads) {
      const float v = x[i] * inv * p.w[i];
      y[i] = v;
      quantize_chunk(p.quant, (row * p.n + i) / 32, v);
    }
  } else {
    for (int64_t i = threadIdx.x; i < p.n; i += kThreads) y[i] = x[i] * inv * p.w[i];
  }
}

// One thread per (token, head of q or k, rotation pair).
__global__ void rope_kernel(RopeKernelParams p) {
  const int64_t half = p.head_dim / 2;
  const int64_t heads = p.n_head + p.n_head_kv;
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= p.n_tokens * heads * half) return;
  const int64_t i = idx % half;
  const int64_t h = (idx / half) % heads;
  const int64_t t = idx / (half * heads);
  float* v = h < p.n_head ? p.q + (t * p.n_head + h) * p.head_dim
                          : p.k + (t * p.n_head_kv + (h - p.n_head)) * p.head_dim;
  // The angle rounds to float (as the CPU backend and transformers do); cos/sin in double.
  const float angle = static_cast<float>(p.positions[t]) * p.inv_freq[i];
  double sd, cd;
  sincos(static_cast<double>(angle), &sd, &cd);
  const float sn = static_cast<float>(sd), cs = static_cast<float>(cd);
  const int64_t a = p.style == RopeStyle::kNeox ? i : 2 * i;
  const int64_t b = p.style == RopeStyle::kNeox ? i + half : 2 * i + 1;
  const float x0 = v[a], x1 = v[b];
  v[a] = x0 * cs - x1 * sn;
  v[b] = x0 * sn + x1 * cs;
}

__global__ void swiglu_kernel(SwigluParams p) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (p.quant.q != nullptr) {
    // n % 32 == 0 and the grid covers whole warps: a warp is one chunk, in or out as a whole.
    if (i - threadIdx.x % 32 >= p.n) return;
    const float g = p.gate[i];
    const float v = g / (1.0f + __expf(-g)) * p.up[i];
    p.out[i] = v;
    quantize_chunk(p.quant, i / 32, v);
    return;
  }
  if (i >= p.n) return;
  const float g = p.gate[i];
  p.out[i] = g / (1.0f + __expf(-g)) * p.up[i];
}

__global__ void add_kernel(AddParams p) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < p.n) p.x[i] += p.y[i];
}

__global__ void bias_kernel(BiasParams p) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < p.m * p.n) p.y[i] += p.b[i % p.n];
}

__global__ void gather_act_rows_kernel(GatherActRowsParams p) {
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
  rmsnorm_kernel<<<static_cast<unsigned>(p.rows), kThreads, 0, stream>>>(p);
  TPNODE_CUDA_CHECK_LAUNCH();
}

void rope(const RopeKernelParams& p, cudaStream_t stream) {
  TPNODE_CHECK(p.head_dim % 2 == 0, "rope: odd head_dim {}", p.head_dim);
  const int64_t n = p.n_tokens * (p.n_head + p.n_head_kv) * (p.head_dim / 2);
  if (n == 0) return;
  rope_kernel<<<blocks_for(n), kThreads, 0, stream>>>(p);
  TPNODE_CUDA_CHECK_LAUNCH();
}

void swiglu(const SwigluParams& p, cudaStream_t stream) {
  if (p.n == 0) return;
  TPNODE_CHECK(p.quant.q == nullptr || p.n % 32 == 0,
               "swiglu: quantized output needs n % 32 == 0 (n = {})", p.n);
  swiglu_kernel<<<blocks_for(p.n), kThreads, 0, stream>>>(p);
  TPNODE_CUDA_CHECK_LAUNCH();
}

void add(const AddParams& p, cudaStream_t stream) {
  if (p.n == 0) return;
  add_kernel<<<blocks_for(p.n), kThreads, 0, stream>>>(p);
  TPNODE_CUDA_CHECK_LAUNCH();
}

void add_bias(const BiasParams& p, cudaStream_t stream) {
  if (p.m * p.n == 0) return;
  bias_kernel<<<blocks_for(p.m * p.n), kThreads, 0, stream>>>(p);
  TPNODE_CUDA_CHECK_LAUNCH();
}

void gather_act_rows(const GatherActRowsParams& p, cudaStream_t stream) {
  if (p.n * p.row_len == 0) return;
  gather_act_rows_kernel<<<blocks_for(p.n * p.row_len), kThreads, 0, stream>>>(p);
  TPNODE_CUDA_CHECK_LAUNCH();
}

}  // namespace tpnode::cuda
