#include "kernels/cpu/rope.h"

#include <cmath>
#include <numbers>

#include "node/common/error.h"

namespace tpnode::cpu {
namespace {

// transformers' _compute_llama3_parameters, step for step in float32 (python scalars meet
// float32 tensors, so every operation rounds to float).
void apply_llama3(std::vector<float>& inv_freq, const RopeScaling& s) {
  const float factor = s.factor;
  const float low = s.low_freq_factor;
  const float high = s.high_freq_factor;
  const float old_ctx = static_cast<float>(s.original_context);
  // Python computes these scalars in double before they meet the tensor.
  const float low_freq_wavelen = static_cast<float>(static_cast<double>(old_ctx) / low);
  const float high_freq_wavelen = static_cast<float>(static_cast<double>(old_ctx) / high);
  const float freq_span = static_cast<float>(static_cast<double>(high) - low);
  const float two_pi = static_cast<float>(2.0 * std::numbers::pi);
  for (float& f : inv_freq) {
    // torch evaluates `scalar / tensor` as tensor.reciprocal() * scalar.
    const float wavelen = (1.0f / f) * two_pi;
    const float base = wavelen > low_freq_wavelen ? f / factor : f;
    const bool medium = !(wavelen < high_freq_wavelen) && !(wavelen > low_freq_wavelen);
    if (medium) {
      const float smooth = ((1.0f / wavelen) * old_ctx - low) / freq_span;
      f = (1.0f - smooth) * base / factor + smooth * base;
    } else {
      f = base;
    }
  }
}

}  // namespace

std::vector<float> rope_inv_freq(int64_t head_dim, float theta, const RopeScaling& scaling) {
  const int64_t half = head_dim / 2;
  std::vector<float> inv_freq(static_cast<size_t>(half));
  for (int64_t i = 0; i < half; ++i) {
    const float exponent = static_cast<float>(2 * i) / static_cast<float>(head_dim);
    inv_freq[i] = 1.0f / std::pow(theta, exponent);
  }
  switch (scaling.kind) {
    case RopeScaling::Kind::kNone:
      break;
    case RopeScaling::Kind::kLinear:
      for (float& f : inv_freq) f /= scaling.factor;
      break;
    case RopeScaling::Kind::kLlama3:
      apply_llama3(inv_freq, scaling);
      break;
  }
  if (!scaling.freq_factors.empty()) {
    TPNODE_CHECK(static_cast<int64_t>(scaling.freq_factors.size()) == half,
                 "rope: {} frequency factors for head_dim {} (want {})",
                 scaling.freq_factors.size(), head_dim, half);
    for (int64_t i = 0; i < half; ++i) {
      const float f = scaling.freq_factors[i];
      TPNODE_CHECK(std::isfinite(f) && f > 0.0f, "rope: frequency factor {} = {} is not positive",
                   i, f);
      inv_freq[i] /= f;
    }
  }
  return inv_freq;
}

RopeTable rope_table(const int32_t* positions, int64_t n_tokens,
                     const std::vector<float>& inv_freq) {
  RopeTable t;
  t.half = static_cast<int64_t>(inv_freq.size());
  t.cos.resize(static_cast<size_t>(n_tokens * t.half));
  t.sin.resize(t.cos.size());
  for (int64_t tok = 0; tok < n_tokens; ++tok) {
    const float pos = static_cast<float>(positions[tok]);
    for (int64_t i = 0; i < t.half; ++i) {
      // The angle is rounded to float as torch does; cos/sin of it are then exact-ish.
      const float angle = pos * inv_freq[i];
      t.cos[tok * t.half + i] = static_cast<float>(std::cos(static_cast<double>(angle)));
      t.sin[tok * t.half + i] = static_cast<float>(std::sin(static_cast<double>(angle)));
    }
  }
  return t;
}

void rope_rotate(const RopeRotateArgs& a, ThreadPool& pool) {
  const int64_t half = a.head_dim / 2;
  const RopeTable& t = *a.table;
  pool.parallel_for(
      a.n_tokens * a.n_heads,
      [&](int64_t begin, int64_t end) {
        for (int64_t item = begin; item < end; ++item) {
          const int64_t tok = item / a.n_heads;
          float* x = a.x + item * a.head_dim;
          const float* c = t.cos.data() + tok * half;
          const float* s = t.sin.data() + tok * half;
          // Pair (lo, hi): neox rotates (i, i + half), interleaved (2i, 2i + 1). Either way
          // lo' = lo*cos - hi*sin and hi' = hi*cos + lo*sin, as HF's q*cos + rotate_half(q)*sin.
          const int64_t stride = a.style == RopeStyle::kNeox ? 1 : 2;
          const int64_t offset = a.style == RopeStyle::kNeox ? half : 1;
          for (int64_t i = 0; i < half; ++i) {
            float& lo = x[i * stride];
            float& hi = x[i * stride + offset];
            const float x0 = lo;
            const float x1 = hi;
            lo = x0 * c[i] - x1 * s[i];
            hi = x1 * c[i] + x0 * s[i];
          }
        }
      },
      /*grain=*/16);
}

}  // namespace tpnode::cpu
