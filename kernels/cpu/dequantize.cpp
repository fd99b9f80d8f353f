#include "kernels/cpu/dequantize.h"

#include <cstring>

#include "kernels/cpu/quants.h"
#include "node/common/error.h"

// gguf-py computes `d * q + m` and `d * q - dm` as two float32 roundings; a contracted
// multiply-add would round once and differ in the last bit.
#pragma GCC optimize("fp-contract=off")

namespace tpnode::cpu {
namespace {

void dequant_q4_0(const BlockQ4_0* b, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, y += kQK) {
    const float d = fp16_to_fp32(b[i].d);
    for (int j = 0; j < kQK / 2; ++j) {
      y[j] = d * static_cast<float>((b[i].qs[j] & 0x0F) - 8);
      y[j + kQK / 2] = d * static_cast<float>((b[i].qs[j] >> 4) - 8);
    }
  }
}

void dequant_q4_1(const BlockQ4_1* b, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, y += kQK) {
    const float d = fp16_to_fp32(b[i].d);
    const float m = fp16_to_fp32(b[i].m);
    for (int j = 0; j < kQK / 2; ++j) {
      y[j] = d * static_cast<float>(b[i].qs[j] & 0x0F) + m;
      y[j + kQK / 2] = d * static_cast<float>(b[i].qs[j] >> 4) + m;
    }
  }
}

inline uint32_t load_qh(const uint8_t* qh) {
  uint32_t v;
  std::memcpy(&v, qh, sizeof v);
  return v;
}

void dequant_q5_0(const BlockQ5_0* b, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, y += kQK) {
    const float d = fp16_to_fp32(b[i].d);
    const uint32_t qh = load_qh(b[i].qh);
    for (int j = 0; j < kQK / 2; ++j) {
      const int lo = (b[i].qs[j] & 0x0F) | static_cast<int>(((qh >> j) & 1u) << 4);
      const int hi = (b[i].qs[j] >> 4) | static_cast<int>(((qh >> (j + 16)) & 1u) << 4);
      y[j] = d * static_cast<float>(lo - 16);
      y[j + kQK / 2] = d * static_cast<float>(hi - 16);
    }
  }
}

void dequant_q5_1(const BlockQ5_1* b, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, y += kQK) {
    const float d = fp16_to_fp32(b[i].d);
    const float m = fp16_to_fp32(b[i].m);
    const uint32_t qh = load_qh(b[i].qh);
    for (int j = 0; j < kQK / 2; ++j) {
      const int lo = (b[i].qs[j] & 0x0F) | static_cast<int>(((qh >> j) & 1u) << 4);
      const int hi = (b[i].qs[j] >> 4) | static_cast<int>(((qh >> (j + 16)) & 1u) << 4);
      y[j] = d * static_cast<float>(lo) + m;
      y[j + kQK / 2] = d * static_cast<float>(hi) + m;
    }
  }
}

void dequant_q8_0(const BlockQ8_0* b, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, y += kQK) {
    const float d = fp16_to_fp32(b[i].d);
    for (int j = 0; j < kQK; ++j) y[j] = static_cast<float>(b[i].qs[j]) * d;
  }
}

void dequant_q4_k(const BlockQ4_K* b, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i) {
    const float d = fp16_to_fp32(b[i].d);
    const float dmin = fp16_to_fp32(b[i].dmin);
    for (int c = 0; c < 4; ++c) {
      const uint8_t* q = b[i].qs + 32 * c;
      for (int half = 0; half < 2; ++half, y += 32) {
        uint8_t sc, m;
        unpack_scale_min_k4(b[i].scales, 2 * c + half, &sc, &m);
        const float dl = d * static_cast<float>(sc);
        const float ml = dmin * static_cast<float>(m);
        const int shift = 4 * half;
        for (int l = 0; l < 32; ++l) y[l] = dl * static_cast<float>((q[l] >> shift) & 0x0F) - ml;
      }
    }
  }
}

void dequant_q5_k(const BlockQ5_K* b, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i) {
    const float d = fp16_to_fp32(b[i].d);
    const float dmin = fp16_to_fp32(b[i].dmin);
    for (int s = 0; s < 8; ++s, y += 32) {
      uint8_t sc, m;
      unpack_scale_min_k4(b[i].scales, s, &sc, &m);
      const float dl = d * static_cast<float>(sc);
      const float ml = dmin * static_cast<float>(m);
      const uint8_t* ql = b[i].qs + 32 * (s / 2);
      const int shift = 4 * (s % 2);
      for (int l = 0; l < 32; ++l) {
        const int q = ((ql[l] >> shift) & 0x0F) | (((b[i].qh[l] >> s) & 1) << 4);
        y[l] = dl * static_cast<float>(q) - ml;
      }
    }
  }
}

void dequant_q6_k(const BlockQ6_K* b, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i) {
    const float d = fp16_to_fp32(b[i].d);
    for (int h = 0; h < 2; ++h) {
      const uint8_t* ql = b[i].ql + 64 * h;
      const uint8_t* qh = b[i].qh + 32 * h;
      for (int s = 0; s < 4; ++s, y += 32) {
        // Sub-block s of this half: ql bytes [32*(s%2), +32), nibble s/2; qh bits 2s, 2s+1.
        const uint8_t* qls = ql + 32 * (s % 2);
        const int lshift = 4 * (s / 2);
        for (int l = 0; l < 32; ++l) {
          const int q = (((qls[l] >> lshift) & 0x0F) | (((qh[l] >> (2 * s)) & 3) << 4)) - 32;
          const float dl = d * static_cast<float>(b[i].scales[8 * h + 2 * s + l / 16]);
          y[l] = dl * static_cast<float>(q);
        }
      }
    }
  }
}

}  // namespace

void dequantize_row(TensorType type, const void* src, float* dst, int64_t n) {
  const BlockGeometry g = block_geometry(type);
  TPNODE_CHECK_KIND(g.block_size != 0, ErrorKind::kUnsupported,
                    "dequantize_row: unsupported tensor type {}", static_cast<uint32_t>(type));
  TPNODE_CHECK(n >= 0 && n % g.block_size == 0,
               "dequantize_row: {} elements is not a multiple of the block size {} (type {})", n,
               g.block_size, static_cast<uint32_t>(type));
  const int64_t nb = n / g.block_size;
  switch (type) {
    case TensorType::kF32:
      std::memcpy(dst, src, static_cast<size_t>(n) * sizeof(float));
      return;
    case TensorType::kF16: {
      const auto* h = static_cast<const uint8_t*>(src);
      for (int64_t i = 0; i < n; ++i) dst[i] = fp16_to_fp32(load_f16(h + 2 * i));
      return;
    }
    case TensorType::kBF16: {
      const auto* h = static_cast<const uint8_t*>(src);
      for (int64_t i = 0; i < n; ++i) dst[i] = bf16_to_fp32(load_f16(h + 2 * i));
      return;
    }
    case TensorType::kQ4_0: return dequant_q4_0(static_cast<const BlockQ4_0*>(src), dst, nb);
    case TensorType::kQ4_1: return dequant_q4_1(static_cast<const BlockQ4_1*>(src), dst, nb);
    case TensorType::kQ5_0: return dequant_q5_0(static_cast<const BlockQ5_0*>(src), dst, nb);
    case TensorType::kQ5_1: return dequant_q5_1(static_cast<const BlockQ5_1*>(src), dst, nb);
    case TensorType::kQ8_0: return dequant_q8_0(static_cast<const BlockQ8_0*>(src), dst, nb);
    case TensorType::kQ4_K: return dequant_q4_k(static_cast<const BlockQ4_K*>(src), dst, nb);
    case TensorType::kQ5_K: return dequant_q5_k(static_cast<const BlockQ5_K*>(src), dst, nb);
    case TensorType::kQ6_K: return dequant_q6_k(static_cast<const BlockQ6_K*>(src), dst, nb);
    default: break;
  }
  TPNODE_THROW(ErrorKind::kUnsupported, "dequantize_row: unsupported tensor type {}",
               static_cast<uint32_t>(type));
}

}  // namespace tpnode::cpu
