// Activation quantization for the integer dot products: x ≈ d * q with q in [-127, 127]
// per block, d = max|x| / 127, rounding to nearest (ties to even). Kept portable and shared
// by the scalar and AVX2 kernels so both see identical quantized activations.
#include <algorithm>
#include <cmath>
#include <cstring>

#include "kernels/cpu/quants.h"
#include "kernels/cpu/vec_dot.h"
#include "node/common/error.h"

namespace tpnode::cpu {
namespace {

// Round to nearest even for |v| < 2^22 (adding 1.5 * 2^23 drops the fraction).
inline int round_nearest(float v) {
  const float biased = v + 12582912.0f;
  int32_t bits;
  std::memcpy(&bits, &biased, sizeof bits);
  return (bits & 0x007FFFFF) - 0x00400000;
}

// Quantizes n values; returns the scale d and writes q.
float quantize_block(const float* x, int8_t* q, int n) {
  float amax = 0.0f;
  for (int i = 0; i < n; ++i) amax = std::max(amax, std::fabs(x[i]));
  const float d = amax / 127.0f;
  const float id = d != 0.0f ? 1.0f / d : 0.0f;
  for (int i = 0; i < n; ++i) {
    const int v = round_nearest(x[i] * id);
    q[i] = static_cast<int8_t>(std::clamp(v, -127, 127));
  }
  return d;
}

void quantize_row_q8a(const float* x, BlockQ8A* y, int64_t k) {
  for (int64_t b = 0; b < k / kQK; ++b, x += kQK) {
    y[b].d = quantize_block(x, y[b].qs, kQK);
    int sum = 0;
    for (int i = 0; i < kQK; ++i) sum += y[b].qs[i];
    y[b].s = y[b].d * static_cast<float>(sum);
  }
}

void quantize_row_q8k(const float* x, BlockQ8K* y, int64_t k) {
  for (int64_t b = 0; b < k / kQKK; ++b, x += kQKK) {
    y[b].d = quantize_block(x, y[b].qs, kQKK);
    for (int j = 0; j < kQKK / 16; ++j) {
      int sum = 0;
      for (int i = 0; i < 16; ++i) sum += y[b].qs[16 * j + i];
      y[b].bsums[j] = static_cast<int16_t>(sum);
    }
  }
}

}  // namespace

ActFormat act_format(TensorType w_type) {
  switch (w_type) {
    case TensorType::kF32:
    case TensorType::kF16:
    case TensorType::kBF16: return ActFormat::kF32;
    case TensorType::kQ4_0:
    case TensorType::kQ4_1:
    case TensorType::kQ5_0:
    case TensorType::kQ5_1:
    case TensorType::kQ8_0: return ActFormat::kQ8A;
    case TensorType::kQ4_K:
    case TensorType::kQ5_K:
    case TensorType::kQ6_K: return ActFormat::kQ8K;
    default: break;
  }
  TPNODE_THROW(ErrorKind::kUnsupported, "matmul: no CPU kernel for weight type {}",
               static_cast<uint32_t>(w_type));
}

size_t act_row_bytes(ActFormat format, int64_t k) {
  switch (format) {
    case ActFormat::kF32: return static_cast<size_t>(k) * sizeof(float);
    case ActFormat::kQ8A: return static_cast<size_t>(k / kQK) * sizeof(BlockQ8A);
    case ActFormat::kQ8K: return static_cast<size_t>(k / kQKK) * sizeof(BlockQ8K);
  }
  return 0;
}

void quantize_act_row(ActFormat format, const float* x, void* dst, int64_t k) {
  switch (format) {
    case ActFormat::kF32:
      std::memcpy(dst, x, static_cast<size_t>(k) * sizeof(float));
      return;
    case ActFormat::kQ8A: return quantize_row_q8a(x, static_cast<BlockQ8A*>(dst), k);
    case ActFormat::kQ8K: return quantize_row_q8k(x, static_cast<BlockQ8K*>(dst), k);
  }
}

}  // namespace tpnode::cpu
