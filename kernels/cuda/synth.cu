#include "kernels/cuda/synth.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <type_traits>

#include "kernels/cuda/cuda_check.h"

namespace tpnode::cuda {
namespace {

constexpr int kThreads = 256;
unsigned blocks_for(int64_t n) { return static_cast<unsigned>((n + kThreads - 1) / kThreads); }

__device__ __forceinline__ uint64_t mix(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

// Uniform in [lo, hi] (integers).
__device__ __forceinline__ int uniform_int(uint64_t h, int lo, int hi) {
  return lo + static_cast<int>(h % static_cast<uint64_t>(hi - lo + 1));
}

struct SynthArgs {
  SynthParams p;
  int64_t q_row_bytes;
  int64_t s_row_bytes;
  int64_t q_bytes_per_block;
  int64_t s_bytes_per_block;
  uint8_t* s;
};

// Quant region, one thread per byte: random quants; scale/min fields of K-quant blocks set
// to the middle of their range so values have std ~1/sqrt(cols).
__global__ void synth_quant_kernel(SynthArgs a) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= a.p.rows * a.q_row_bytes) return;
  const uint64_t h = mix(a.p.seed * 0x100000001B3ull ^ static_cast<uint64_t>(i));
  const int64_t o = (i % a.q_row_bytes) % a.q_bytes_per_block;  // offset inside the block
  const float inv_sqrt = rsqrtf(static_cast<float>(a.p.cols));
  uint8_t byte = static_cast<uint8_t>(h);
  switch (a.p.type) {
    case TensorType::kQ4_K:
    case TensorType::kQ5_K: {
      // d*sc*q - dmin*m with sc in [4, 8], m ~ 7.5*sc (5-bit quants: ~15.5*sc) centres values.
      const float spread = a.p.type == TensorType::kQ4_K ? 4.6f : 9.2f;
      if (o < 4) {
        const __half d = __float2half(inv_sqrt / (6.0f * spread));
        const uint8_t* b = reinterpret_cast<const uint8_t*>(&d);
        byte = b[o % 2];
      } else if (o < 8) {
        byte = static_cast<uint8_t>(uniform_int(h, 4, 8));  // sc of sub-blocks 0..3
      } else if (o < 12) {
        byte = static_cast<uint8_t>(a.p.type == TensorType::kQ4_K ? uniform_int(h, 30, 60)
                                                                   : uniform_int(h, 50, 63));
      } else if (o < 16) {
        // sub-blocks 4..7: low nibble sc, high nibble m (4 bits each here)
        byte = static_cast<uint8_t>(uniform_int(h, 4, 8) | (15 << 4));
      }
      break;
    }
    case TensorType::kQ6_K:
      if (o >= 192) byte = static_cast<uint8_t>(uniform_int(h, 4, 8));  // int8 scales
      break;
    default:
      break;
  }
  a.p.out[i] = byte;
}

__global__ void synth_scale_kernel(SynthArgs a) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t nb = a.s_row_bytes / a.s_bytes_per_block;
  if (i >= a.p.rows * nb) return;
  const float inv_sqrt = rsqrtf(static_cast<float>(a.p.cols));
  float d = 0.0f, m = 0.0f;
  switch (a.p.type) {
    case TensorType::kQ4_0: d = inv_sqrt / 4.6f; break;
    case TensorType::kQ4_1: d = inv_sqrt / 4.6f; m = -7.5f * d; break;
    case TensorType::kQ5_0: d = inv_sqrt / 9.2f; break;
    case TensorType::kQ5_1: d = inv_sqrt / 9.2f; m = -15.5f * d; break;
    case TensorType::kQ8_0: d = inv_sqrt / 73.0f; break;
    case TensorType::kQ6_K: d = inv_sqrt / (6.0f * 18.5f); break;
    default: break;
  }
  __half* s = reinterpret_cast<__half*>(a.s + i * a.s_bytes_per_block);
  s[0] = __float2half(d);
  if (a.s_bytes_per_block == 4) s[1] = __float2half(m);
}

template <typename T>
__global__ void synth_float_kernel(SynthParams p) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= p.rows * p.cols) return;
  const uint64_t h = mix(p.seed * 0x100000001B3ull ^ static_cast<uint64_t>(i));
  const float u = static_cast<float>(h >> 40) * (1.0f / 16777216.0f);  // [0, 1)
  const float v = (2.0f * u - 1.0f) * sqrtf(3.0f / static_cast<float>(p.cols));
  T* out = reinterpret_cast<T*>(p.out);
  if constexpr (sizeof(T) == 4) {
    out[i] = v;
  } else if constexpr (std::is_same_v<T, __half>) {
    out[i] = __float2half(v);
  } else {
    out[i] = __float2bfloat16(v);
  }
}

__global__ void fill_kernel(FillParams p) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < p.n) p.out[i] = p.value;
}

}  // namespace

void synth_matrix(const SynthParams& p, cudaStream_t stream) {
  if (p.rows * p.cols == 0) return;
  const int64_t n = p.rows * p.cols;
  switch (p.type) {
    case TensorType::kF32: synth_float_kernel<float><<<blocks_for(n), kThreads, 0, stream>>>(p); break;
    case TensorType::kF16: synth_float_kernel<__half><<<blocks_for(n), kThreads, 0, stream>>>(p); break;
    case TensorType::kBF16:
      synth_float_kernel<__nv_bfloat16><<<blocks_for(n), kThreads, 0, stream>>>(p);
      break;
    default: {
      const SplitLayout l = split_layout(p.type);
      const DeviceMatrix m = device_matrix(p.type, p.rows, p.cols, p.out);
      SynthArgs a{p, static_cast<int64_t>(m.q_row_bytes), static_cast<int64_t>(m.s_row_bytes),
                  l.q_bytes, l.s_bytes, const_cast<uint8_t*>(m.s)};
      synth_quant_kernel<<<blocks_for(p.rows * a.q_row_bytes), kThreads, 0, stream>>>(a);
      TPNODE_CUDA_CHECK_LAUNCH();
      if (l.s_bytes > 0) {
        synth_scale_kernel<<<blocks_for(p.rows * (p.cols / l.block_size)), kThreads, 0, stream>>>(a);
      }
    }
  }
  TPNODE_CUDA_CHECK_LAUNCH();
}

void fill(const FillParams& p, cudaStream_t stream) {
  if (p.n == 0) return;
  fill_kernel<<<blocks_for(p.n), kThreads, 0, stream>>>(p);
  TPNODE_CUDA_CHECK_LAUNCH();
}

}  // namespace tpnode::cuda
