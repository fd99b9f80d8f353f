#include "kernels/cuda/dequant.h"

#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/dispatch.cuh"
#include "kernels/cuda/float_convert.cuh"
#include "kernels/cuda/pdl.cuh"
#include "kernels/cuda/quant_blocks.cuh"

namespace tpnode::cuda {
namespace {

constexpr int kThreads = 256;

unsigned blocks_for(int64_t n) { return static_cast<unsigned>((n + kThreads - 1) / kThreads); }

// 32 values (chunk j of a row) of a quantized matrix.
template <TensorType T>
__device__ __forceinline__ void row_chunk(const DeviceMatrix& w, int64_t row, int64_t j,
                                          float* out) {
  using P = quant::Policy<T>;
  constexpr int kChunks = P::kBlock / 32;
  const int64_t b = j / kChunks;
  const uint8_t* qb = w.q + row * w.q_row_bytes + b * P::kQBytes;
  const uint8_t* sb = P::kSBytes ? w.s + row * w.s_row_bytes + b * P::kSBytes : nullptr;
  P::dequant_chunk(qb, sb, static_cast<int>(j % kChunks), out);
}

// One thread per chunk of 32 values.
template <TensorType T>
__global__ void dequant_quant_kernel(DequantParams p) {
  const int64_t chunks_per_row = p.w.cols / 32;
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= p.rows * chunks_per_row) return;
  const int64_t r = i / chunks_per_row, j = i % chunks_per_row;
  float v[32];
  row_chunk<T>(p.w, p.row0 + r, j, v);
  __align__(16) __nv_bfloat162 packed[16];
#pragma unroll
  for (int e = 0; e < 16; ++e) packed[e] = __floats2bfloat162_rn(v[2 * e], v[2 * e + 1]);
  int4* dst = reinterpret_cast<int4*>(p.out + r * p.w.cols + j * 32);
  const int4* src = reinterpret_cast<const int4*>(packed);
#pragma unroll
  for (int e = 0; e < 4; ++e) dst[e] = src[e];
}

template <TensorType T>
__global__ void dequant_float_kernel(DequantParams p) {
  using E = typename FloatElem<T>::type;
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= p.rows * p.w.cols) return;
  const int64_t r = i / p.w.cols, c = i % p.w.cols;
  const E* row = reinterpret_cast<const E*>(p.w.q + (p.row0 + r) * p.w.q_row_bytes);
  p.out[i] = __float2bfloat16(FloatElem<T>::to_float(row[c]));
}

__device__ __forceinline__ int32_t gather_id(const GatherRowsParams& p, int64_t t) {
  const int32_t id = p.ids[t];
  if (id >= 0 || p.chained == nullptr) return id;
  return p.chained[-1 - id];
}

template <TensorType T>
__global__ void gather_quant_kernel(GatherRowsParams p) {
  const int64_t chunks_per_row = p.table.cols / 32;
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= p.n * chunks_per_row) return;
  const int64_t t = i / chunks_per_row, j = i % chunks_per_row;
  const int32_t id = gather_id(p, t);
  float v[32];
  if (id >= 0 && id < p.table.rows) {
    row_chunk<T>(p.table, id, j, v);
  } else {
#pragma unroll
    for (int e = 0; e < 32; ++e) v[e] = 0.0f;
  }
  float4* dst = reinterpret_cast<float4*>(p.out + t * p.table.cols + j * 32);
#pragma unroll
  for (int e = 0; e < 8; ++e) dst[e] = make_float4(v[4 * e], v[4 * e + 1], v[4 * e + 2], v[4 * e + 3]);
}

template <TensorType T>
__global__ void gather_float_kernel(GatherRowsParams p) {
  using E = typename FloatElem<T>::type;
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= p.n * p.table.cols) return;
  const int64_t t = i / p.table.cols, c = i % p.table.cols;
  const int32_t id = gather_id(p, t);
  float v = 0.0f;
  if (id >= 0 && id < p.table.rows) {
    v = FloatElem<T>::to_float(reinterpret_cast<const E*>(p.table.q + id * p.table.q_row_bytes)[c]);
  }
  p.out[i] = v;
}

// PDL: launched while the kernel before it (a norm, attention, SwiGLU) finishes.
__global__ void f32_to_bf16_kernel(ToBf16Params p) {
  pdl_wait();
  pdl_launch_dependents();
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < p.n) p.y[i] = __float2bfloat16(p.x[i]);
}

}  // namespace

void dequant_to_bf16(const DequantParams& p, cudaStream_t stream) {
  if (p.rows == 0) return;
  if (is_quantized(p.w.type)) {
    TPNODE_DISPATCH_QUANT_TYPE(p.w.type, T, {
      dequant_quant_kernel<T><<<blocks_for(p.rows * p.w.cols / 32), kThreads, 0, stream>>>(p);
    })
  } else {
    TPNODE_DISPATCH_FLOAT_TYPE(p.w.type, T, {
      dequant_float_kernel<T><<<blocks_for(p.rows * p.w.cols), kThreads, 0, stream>>>(p);
    })
  }
  TPNODE_CUDA_CHECK_LAUNCH();
}

void gather_weight_rows(const GatherRowsParams& p, cudaStream_t stream) {
  if (p.n == 0) return;
  if (is_quantized(p.table.type)) {
    TPNODE_DISPATCH_QUANT_TYPE(p.table.type, T, {
      gather_quant_kernel<T><<<blocks_for(p.n * p.table.cols / 32), kThreads, 0, stream>>>(p);
    })
  } else {
    TPNODE_DISPATCH_FLOAT_TYPE(p.table.type, T, {
      gather_float_kernel<T><<<blocks_for(p.n * p.table.cols), kThreads, 0, stream>>>(p);
    })
  }
  TPNODE_CUDA_CHECK_LAUNCH();
}

void f32_to_bf16(const ToBf16Params& p, cudaStream_t stream) {
  if (p.n == 0) return;
  launch_pdl(f32_to_bf16_kernel, dim3(blocks_for(p.n)), dim3(kThreads), 0, stream, p);
  TPNODE_CUDA_CHECK_LAUNCH();
}

}  // namespace tpnode::cuda
