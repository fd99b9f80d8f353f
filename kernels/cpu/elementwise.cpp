#include "kernels/cpu/elementwise.h"

#include <cstring>

namespace tpnode::cpu {
namespace {

// Elementwise work below this size is not worth waking the pool for.
constexpr int64_t kElementGrain = 1 << 14;

uint32_t float_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  return u;
}

float bits_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
}

}  // namespace

float fp16_to_f32(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t mant = h & 0x3ffu;
  if (exp == 0x1f) return bits_float(sign | 0x7f800000u | (mant << 13));  // inf / nan
  if (exp != 0) return bits_float(sign | ((exp + 112u) << 23) | (mant << 13));
  if (mant == 0) return bits_float(sign);
  // Subnormal half: normalise into a float exponent.
  int e = -1;
  do {
    ++e;
    mant <<= 1;
  } while ((mant & 0x400u) == 0);
  return bits_float(sign | static_cast<uint32_t>(112 - e) << 23 | ((mant & 0x3ffu) << 13));
}

uint16_t f32_to_fp16(float f) {
  const uint32_t x = float_bits(f);
  const uint16_t sign = static_cast<uint16_t>((x >> 16) & 0x8000u);
  const uint32_t abs = x & 0x7fffffffu;
  if (abs >= 0x7f800000u) {  // inf or nan (keep nan quiet and non-zero)
    return static_cast<uint16_t>(sign | 0x7c00u | (abs > 0x7f800000u ? 0x200u : 0u));
  }
  if (abs >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);  // rounds past 65504
  if (abs < 0x38800000u) {
    // Result is subnormal (or zero) in half: scale by 2^24 and round to an integer ulp.
    const float scaled = bits_float(abs) * 16777216.0f;  // exact: abs < 2^-14
    // Round to nearest even by hand so the result does not depend on the FP environment.
    const uint32_t whole = static_cast<uint32_t>(scaled);
    const float frac = scaled - static_cast<float>(whole);
    uint32_t q = whole;
    if (frac > 0.5f || (frac == 0.5f && (whole & 1u))) ++q;
    return static_cast<uint16_t>(sign | q);  // q == 0x400 becomes the smallest normal
  }
  // Normal: rebias the exponent and round the 13 dropped mantissa bits to nearest even.
  const uint32_t dropped = abs & 0x1fffu;
  uint32_t h = ((abs >> 13) - (112u << 10));
  if (dropped > 0x1000u || (dropped == 0x1000u && (h & 1u))) ++h;
  return static_cast<uint16_t>(sign | h);
}

float bf16_to_f32(uint16_t b) { return bits_float(static_cast<uint32_t>(b) << 16); }

void fp16_to_f32_row(const uint16_t* src, float* dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = fp16_to_f32(src[i]);
}

void f32_to_fp16_row(const float* src, uint16_t* dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = f32_to_fp16(src[i]);
}

void bf16_to_f32_row(const uint16_t* src, float* dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = bf16_to_f32(src[i]);
}

void add(const float* x, const float* y, float* out, int64_t n, ThreadPool& pool) {
  pool.parallel_for(
      n,
      [=](int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end; ++i) out[i] = x[i] + y[i];
      },
      kElementGrain);
}

void add_bias(float* y, const float* b, int64_t m, int64_t n, ThreadPool& pool) {
  const int64_t grain = n > 0 ? (kElementGrain + n - 1) / n : 1;
  pool.parallel_for(
      m,
      [=](int64_t begin, int64_t end) {
        for (int64_t r = begin; r < end; ++r) {
          float* row = y + r * n;
          for (int64_t c = 0; c < n; ++c) row[c] += b[c];
        }
      },
      grain);
}

void gather_rows(const float* x, const int32_t* rows, int64_t n_rows, int64_t row_len, float* out) {
  for (int64_t j = 0; j < n_rows; ++j) {
    std::memcpy(out + j * row_len, x + static_cast<int64_t>(rows[j]) * row_len,
                static_cast<size_t>(row_len) * sizeof(float));
  }
}

}  // namespace tpnode::cpu
