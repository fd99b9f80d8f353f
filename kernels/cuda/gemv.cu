#include "kernels/cuda/gemv.h"

#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/dispatch.cuh"
#include "kernels/cuda/float_convert.cuh"
#include "kernels/cuda/quant_blocks.cuh"

namespace tpnode::cuda {
namespace {

constexpr int kWarpsPerCta = 4;  // one output row per warp

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

// One warp per chunk of 32 values.
__global__ void quantize_acts_kernel(QuantizeActsParams p) {
  const int64_t chunk = static_cast<int64_t>(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  const int64_t chunks = p.m * (p.k / 32);
  if (chunk >= chunks) return;
  const float v = p.x[chunk * 32 + lane];
  const float amax = warp_max(fabsf(v));
  const float d = amax / 127.0f;
  const int q = amax > 0.0f ? __float2int_rn(v / d) : 0;
  p.out.q[chunk * 32 + lane] = static_cast<int8_t>(q);
  const float sum = warp_sum(static_cast<float>(q));
  if (lane == 0) {
    p.out.d[chunk] = d;
    p.out.s[chunk] = d * sum;
  }
}

template <TensorType T, int NC>
__global__ void __launch_bounds__(kWarpsPerCta * 32) gemv_quant_kernel(GemvParams p) {
  using P = quant::Policy<T>;
  const int lane = threadIdx.x % 32;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kWarpsPerCta + threadIdx.x / 32;
  if (row >= p.w.rows) return;
  const int64_t k = p.w.cols, kc = k / 32;
  const int nb = static_cast<int>(k / P::kBlock);
  const uint8_t* __restrict__ qrow = p.w.q + row * p.w.q_row_bytes;
  const uint8_t* __restrict__ srow = P::kSBytes ? p.w.s + row * p.w.s_row_bytes : nullptr;
  float acc[NC];
#pragma unroll
  for (int c = 0; c < NC; ++c) acc[c] = 0.0f;
  const int items = nb * P::kParts;
  for (int it = lane; it < items; it += 32) {
    const int b = it / P::kParts, part = it % P::kParts;
    const uint8_t* qb = qrow + static_cast<int64_t>(b) * P::kQBytes;
    const uint8_t* sb = P::kSBytes ? srow + static_cast<int64_t>(b) * P::kSBytes : nullptr;
#pragma unroll
    for (int c = 0; c < NC; ++c) {
      if (c < p.m) {
        const quant::ActView a{p.xq.q + c * k + static_cast<int64_t>(b) * P::kBlock,
                               p.xq.d + c * kc + b * (P::kBlock / 32),
                               p.xq.s + c * kc + b * (P::kBlock / 32)};
        acc[c] += P::dot_part(qb, sb, part, a);
      }
    }
  }
#pragma unroll
  for (int c = 0; c < NC; ++c) {
    const float v = warp_sum(acc[c]);
    if (lane == 0 && c < p.m) p.y[c * p.w.rows + row] = v;
  }
}

template <TensorType T, int NC>
__global__ void __launch_bounds__(kWarpsPerCta * 32) gemv_float_kernel(GemvParams p) {
  constexpr int E = FloatElem<T>::kPer16B;
  const int lane = threadIdx.x % 32;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kWarpsPerCta + threadIdx.x / 32;
  if (row >= p.w.rows) return;
  const int64_t k = p.w.cols;
  const int4* __restrict__ wrow = reinterpret_cast<const int4*>(p.w.q + row * p.w.q_row_bytes);
  float acc[NC];
#pragma unroll
  for (int c = 0; c < NC; ++c) acc[c] = 0.0f;
  const int64_t items = k / E;
  for (int64_t it = lane; it < items; it += 32) {
    float w[E];
    unpack16<T>(wrow[it], w);
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
#pragma unroll
  for (int c = 0; c < NC; ++c) {
    const float v = warp_sum(acc[c]);
    if (lane == 0 && c < p.m) p.y[c * p.w.rows + row] = v;
  }
}

}  // namespace

void quantize_acts(const QuantizeActsParams& p, cudaStream_t stream) {
  TPNODE_CHECK(p.k % 32 == 0, "quantize_acts: k = {} is not a multiple of 32", p.k);
  const int64_t chunks = p.m * (p.k / 32);
  if (chunks == 0) return;
  constexpr int kThreads = 256;
  const int64_t grid = (chunks * 32 + kThreads - 1) / kThreads;
  quantize_acts_kernel<<<static_cast<unsigned>(grid), kThreads, 0, stream>>>(p);
  TPNODE_CUDA_CHECK_LAUNCH();
}

bool gemv_supports(const DeviceMatrix& w) {
  if (is_quantized(w.type)) return true;
  return w.cols % 8 == 0;
}

void gemv(const GemvParams& p, cudaStream_t stream) {
  TPNODE_CHECK(p.m >= 1 && p.m <= kGemvMaxBatch, "gemv: batch {} outside 1..{}", p.m,
               kGemvMaxBatch);
  TPNODE_CHECK(gemv_supports(p.w), "gemv: {} matrix with {} columns unsupported",
               weight_type_label(p.w.type), p.w.cols);
  const unsigned grid = static_cast<unsigned>((p.w.rows + kWarpsPerCta - 1) / kWarpsPerCta);
  const int threads = kWarpsPerCta * 32;
  if (is_quantized(p.w.type) && p.m >= 2) {
    gemv_mma(p, stream);
  } else if (is_quantized(p.w.type)) {
    TPNODE_DISPATCH_QUANT_TYPE(p.w.type, T, {
      TPNODE_DISPATCH_GEMV_COLS(p.m, NC, {
        gemv_quant_kernel<T, NC><<<grid, threads, 0, stream>>>(p);
      })
    })
  } else {
    TPNODE_DISPATCH_FLOAT_TYPE(p.w.type, T, {
      TPNODE_DISPATCH_GEMV_COLS(p.m, NC, {
        gemv_float_kernel<T, NC><<<grid, threads, 0, stream>>>(p);
      })
    })
  }
  TPNODE_CUDA_CHECK_LAUNCH();
}

}  // namespace tpnode::cuda
