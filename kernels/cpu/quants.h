// Block layouts of the quantized types (as ggml's ggml-common.h defines them) and the
// activation blocks the CPU matmul quantizes x into. This header is included by files built
// with and without AVX2, so its functions have internal linkage: an inline function compiled
// with -mavx2 in one file could otherwise be the copy the linker keeps for baseline files.
#pragma once

#include <cstdint>
#include <cstring>

#include "node/model/tensor_type.h"

namespace tpnode::cpu {

constexpr int kQK = 32;    // elements per block of the 32-block types
constexpr int kQKK = 256;  // elements per super-block of the K-quants
constexpr int kKScaleBytes = 12;

using f16_t = uint16_t;   // IEEE half, raw bits
using bf16_t = uint16_t;  // bfloat16, raw bits

struct BlockQ4_0 {
  f16_t d;
  uint8_t qs[kQK / 2];  // element i: low nibble of qs[i]; element i+16: high nibble
};
struct BlockQ4_1 {
  f16_t d;
  f16_t m;
  uint8_t qs[kQK / 2];
};
struct BlockQ5_0 {
  f16_t d;
  uint8_t qh[4];  // bit i: fifth bit of element i
  uint8_t qs[kQK / 2];
};
struct BlockQ5_1 {
  f16_t d;
  f16_t m;
  uint8_t qh[4];
  uint8_t qs[kQK / 2];
};
struct BlockQ8_0 {
  f16_t d;
  int8_t qs[kQK];
};
// 8 sub-blocks of 32; 6-bit scales and mins packed in `scales` (see unpack_scale_min_k4).
struct BlockQ4_K {
  f16_t d;
  f16_t dmin;
  uint8_t scales[kKScaleBytes];
  uint8_t qs[kQKK / 2];  // 64-element chunk c: sub-block 2c low nibbles, 2c+1 high nibbles
};
struct BlockQ5_K {
  f16_t d;
  f16_t dmin;
  uint8_t scales[kKScaleBytes];
  uint8_t qh[kQKK / 8];  // bit s of qh[i]: fifth bit of element i of sub-block s
  uint8_t qs[kQKK / 2];
};
// 16 sub-blocks of 16 with int8 scales; 6-bit values (low 4 bits in ql, high 2 in qh).
struct BlockQ6_K {
  uint8_t ql[kQKK / 2];
  uint8_t qh[kQKK / 4];
  int8_t scales[kQKK / 16];
  f16_t d;
};

static_assert(sizeof(BlockQ4_0) == 18);
static_assert(sizeof(BlockQ4_1) == 20);
static_assert(sizeof(BlockQ5_0) == 22);
static_assert(sizeof(BlockQ5_1) == 24);
static_assert(sizeof(BlockQ8_0) == 34);
static_assert(sizeof(BlockQ4_K) == 144);
static_assert(sizeof(BlockQ5_K) == 176);
static_assert(sizeof(BlockQ6_K) == 210);

// Activation block for the 32-block weight types: x ≈ d * qs, s = d * sum(qs) (the min term
// of Q4_1/Q5_1). Scales stay float: nothing forces them through F16, and it keeps the
// activation error at the rounding of qs alone.
struct BlockQ8A {
  float d;
  float s;
  int8_t qs[kQK];
};
// Activation block for the K-quants (ggml's block_q8_K): bsums[j] = sum of qs[16j, 16j+16).
struct BlockQ8K {
  float d;
  int8_t qs[kQKK];
  int16_t bsums[kQKK / 16];
};
static_assert(sizeof(BlockQ8A) == 40);
static_assert(sizeof(BlockQ8K) == 292);

// Elements per block and bytes per block of a weight type; {0, 0} for activation-only types.
struct BlockGeometry {
  int64_t block_size;
  size_t block_bytes;
};

namespace {

constexpr BlockGeometry block_geometry(TensorType t) {
  switch (t) {
    case TensorType::kF32: return {1, 4};
    case TensorType::kF16: return {1, 2};
    case TensorType::kBF16: return {1, 2};
    case TensorType::kQ4_0: return {kQK, sizeof(BlockQ4_0)};
    case TensorType::kQ4_1: return {kQK, sizeof(BlockQ4_1)};
    case TensorType::kQ5_0: return {kQK, sizeof(BlockQ5_0)};
    case TensorType::kQ5_1: return {kQK, sizeof(BlockQ5_1)};
    case TensorType::kQ8_0: return {kQK, sizeof(BlockQ8_0)};
    case TensorType::kQ4_K: return {kQKK, sizeof(BlockQ4_K)};
    case TensorType::kQ5_K: return {kQKK, sizeof(BlockQ5_K)};
    case TensorType::kQ6_K: return {kQKK, sizeof(BlockQ6_K)};
    default: return {0, 0};
  }
}

inline float bits_to_f32(uint32_t bits) {
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

inline uint32_t f32_to_bits(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, sizeof bits);
  return bits;
}

// Exact F16 -> F32, bit for bit as numpy's half->float (NaN payloads kept, not quieted).
inline float fp16_to_fp32(f16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1Fu;
  uint32_t mant = h & 0x3FFu;
  if (exp == 0x1F) return bits_to_f32(sign | 0x7F800000u | (mant << 13));
  if (exp != 0) return bits_to_f32(sign | ((exp + 112) << 23) | (mant << 13));
  if (mant == 0) return bits_to_f32(sign);
  // Subnormal half: normalise into a float exponent.
  uint32_t e = 113;
  while ((mant & 0x400u) == 0) {
    mant <<= 1;
    --e;
  }
  return bits_to_f32(sign | (e << 23) | ((mant & 0x3FFu) << 13));
}

inline float bf16_to_fp32(bf16_t b) { return bits_to_f32(static_cast<uint32_t>(b) << 16); }

inline f16_t load_f16(const void* p) {
  f16_t h;
  std::memcpy(&h, p, sizeof h);
  return h;
}

// The 6-bit scale and min of sub-block j (0..7) of a Q4_K/Q5_K block (ggml's get_scale_min_k4).
inline void unpack_scale_min_k4(const uint8_t* q, int j, uint8_t* sc, uint8_t* m) {
  if (j < 4) {
    *sc = q[j] & 63;
    *m = q[j + 4] & 63;
  } else {
    *sc = (q[j + 4] & 0x0F) | ((q[j - 4] >> 6) << 4);
    *m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
  }
}

}  // namespace
}  // namespace tpnode::cpu
