#include "node/backend/cpu/synth_weight.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numbers>

#include "kernels/cpu/elementwise.h"
#include "node/common/error.h"

namespace tpnode {
namespace {

// splitmix64: a small, seedable generator with good enough statistics for test weights.
class Rng {
 public:
  static uint64_t mix(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
  explicit Rng(uint64_t seed) : state_(seed) {}
  uint64_t next() {
    state_ += 0x9e3779b97f4a7c15ull;
    return mix(state_);
  }
  // Uniform in (0, 1].
  double uniform() { return (static_cast<double>(next() >> 11) + 1.0) * 0x1.0p-53; }
  double normal() {
    const double r = std::sqrt(-2.0 * std::log(uniform()));
    return r * std::cos(2.0 * std::numbers::pi * uniform());
  }
  // ±1: the offset codes (q - 8, q - 16, ...) are not symmetric, so scales of random sign
  // (as ggml's own quantizers produce) keep the mean at zero.
  double sign() { return (next() >> 63) != 0 ? 1.0 : -1.0; }
  int uniform_int(int lo, int hi) {  // [lo, hi]
    return lo + static_cast<int>(next() % static_cast<uint64_t>(hi - lo + 1));
  }
  void fill_bytes(uint8_t* p, size_t n) {
    for (size_t i = 0; i < n; i += 8) {
      const uint64_t r = next();
      std::memcpy(p + i, &r, std::min<size_t>(8, n - i));
    }
  }

 private:
  uint64_t state_;
};

void put_f16(uint8_t* p, float f) {
  const uint16_t h = cpu::f32_to_fp16(f);
  std::memcpy(p, &h, sizeof(h));
}

uint16_t f32_to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  u += 0x7fffu + ((u >> 16) & 1u);  // round to nearest even (inputs are finite)
  return static_cast<uint16_t>(u >> 16);
}

// Standard deviations of the integer quant codes (uniform over their range) and the mean
// of the sub-block scales we draw, so that d = sigma / (code_std * mean_scale).
constexpr double kStd4 = 4.6097722;          // uniform over 16 codes
constexpr double kStd5 = 9.2330927;          // 32 codes
constexpr double kStd6 = 18.472953;          // 64 codes
constexpr double kStd8 = 73.900383;          // 256 codes
constexpr int kScaleLo = 32, kScaleHi = 63;  // 6-bit sub-block scales of the K-quants
constexpr double kMeanScale = (kScaleLo + kScaleHi) / 2.0;

// K-quant 6-bit scales and mins packed into 12 bytes, as ggml's get_scale_min_k4 reads them.
void pack_scales_k4(const uint8_t sc[8], const uint8_t mn[8], uint8_t* q) {
  for (int j = 0; j < 4; ++j) {
    q[j] = static_cast<uint8_t>((sc[j] & 63) | ((sc[j + 4] >> 4) << 6));
    q[j + 4] = static_cast<uint8_t>((mn[j] & 63) | ((mn[j + 4] >> 4) << 6));
    q[j + 8] = static_cast<uint8_t>((sc[j + 4] & 0xf) | ((mn[j + 4] & 0xf) << 4));
  }
}

// Q4_K / Q5_K: x = d*sc*q - dmin*m with q in [0, levels). dmin = d*levels/2 and
// m = sc*(levels-1)/levels make dmin*m ≈ d*sc*(levels-1)/2, centring each sub-block on zero.
void synth_block_k(uint8_t* b, double sigma, int levels, double code_std, Rng& rng) {
  const double d = sigma / (code_std * kMeanScale);
  const double dmin_ratio = levels / 2.0;  // keeps m = sc*(levels-1)/2/dmin_ratio below 64
  uint8_t sc[8], mn[8];
  for (int j = 0; j < 8; ++j) {
    sc[j] = static_cast<uint8_t>(rng.uniform_int(kScaleLo, kScaleHi));
    mn[j] = static_cast<uint8_t>(std::lround(sc[j] * (levels - 1) / 2.0 / dmin_ratio));
  }
  put_f16(b + 0, static_cast<float>(d));
  put_f16(b + 2, static_cast<float>(d * dmin_ratio));
  pack_scales_k4(sc, mn, b + 4);
}

void synth_quant_row(TensorType type, uint8_t* row, int64_t n_blocks, size_t block_bytes,
                     double sigma, Rng& rng) {
  rng.fill_bytes(row, static_cast<size_t>(n_blocks) * block_bytes);
  for (int64_t i = 0; i < n_blocks; ++i) {
    uint8_t* b = row + static_cast<size_t>(i) * block_bytes;
    switch (type) {
      case TensorType::kQ4_0:  // x = (q - 8) * d
        put_f16(b, static_cast<float>(rng.sign() * sigma / kStd4));
        break;
      case TensorType::kQ4_1:  // x = q * d + m
        put_f16(b, static_cast<float>(sigma / kStd4));
        put_f16(b + 2, static_cast<float>(-7.5 * sigma / kStd4));
        break;
      case TensorType::kQ5_0:  // x = (q - 16) * d
        put_f16(b, static_cast<float>(rng.sign() * sigma / kStd5));
        break;
      case TensorType::kQ5_1:
        put_f16(b, static_cast<float>(sigma / kStd5));
        put_f16(b + 2, static_cast<float>(-15.5 * sigma / kStd5));
        break;
      case TensorType::kQ8_0:  // x = q * d, q int8
        put_f16(b, static_cast<float>(rng.sign() * sigma / kStd8));
        break;
      case TensorType::kQ4_K:
        synth_block_k(b, sigma, 16, kStd4, rng);
        break;
      case TensorType::kQ5_K:
        synth_block_k(b, sigma, 32, kStd5, rng);
        break;
      case TensorType::kQ6_K: {  // ql[128] qh[64] scales int8[16] d: x = d*sc*(q - 32)
        for (int j = 0; j < 16; ++j) {
          const int scale = static_cast<int>(rng.sign()) * rng.uniform_int(kScaleLo, kScaleHi);
          b[192 + j] = static_cast<uint8_t>(static_cast<int8_t>(scale));
        }
        put_f16(b + 208, static_cast<float>(sigma / (kStd6 * kMeanScale)));
        break;
      }
      default:
        TPNODE_THROW(ErrorKind::kUnsupported, "synth_weight: type {} unsupported", type_name(type));
    }
  }
}

// Block sizes the code above assumes, checked against the type table once per call.
size_t expected_block_bytes(TensorType type) {
  switch (type) {
    case TensorType::kQ4_0:
      return 18;
    case TensorType::kQ4_1:
      return 20;
    case TensorType::kQ5_0:
      return 22;
    case TensorType::kQ5_1:
      return 24;
    case TensorType::kQ8_0:
      return 34;
    case TensorType::kQ4_K:
      return 144;
    case TensorType::kQ5_K:
      return 176;
    case TensorType::kQ6_K:
      return 210;
    default:
      return 0;
  }
}

}  // namespace

void synth_fill(const SynthSpec& s, void* dst, cpu::ThreadPool& pool) {
  const TypeTraits& traits = type_traits(s.type);
  const size_t stride = row_bytes(s.type, s.cols);
  const double sigma = 1.0 / std::sqrt(static_cast<double>(std::max<int64_t>(s.cols, 1)));
  if (traits.quantized) {
    TPNODE_CHECK_KIND(expected_block_bytes(s.type) == traits.block_bytes, ErrorKind::kUnsupported,
                      "synth_weight: no synthesiser for {} ({} bytes per block)", type_name(s.type),
                      traits.block_bytes);
  }
  auto* base = static_cast<uint8_t*>(dst);
  pool.parallel_for(s.rows, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      // Row streams from hashed seeds: nearby rows never share a shifted sequence.
      Rng rng(Rng::mix(Rng::mix(s.seed) + static_cast<uint64_t>(r)));
      uint8_t* row = base + static_cast<size_t>(r) * stride;
      switch (s.type) {
        case TensorType::kF32:
          for (int64_t i = 0; i < s.cols; ++i) {
            const float v = static_cast<float>(sigma * rng.normal());
            std::memcpy(row + i * 4, &v, 4);
          }
          break;
        case TensorType::kF16:
          for (int64_t i = 0; i < s.cols; ++i)
            put_f16(row + i * 2, static_cast<float>(sigma * rng.normal()));
          break;
        case TensorType::kBF16:
          for (int64_t i = 0; i < s.cols; ++i) {
            const uint16_t v = f32_to_bf16(static_cast<float>(sigma * rng.normal()));
            std::memcpy(row + i * 2, &v, 2);
          }
          break;
        default:  // quantized types, checked above
          synth_quant_row(s.type, row, s.cols / traits.block_size, traits.block_bytes, sigma, rng);
      }
    }
  });
}

}  // namespace tpnode
