// RoPE: frequencies against the closed forms (and Meta's llama3 apply_scaling), rotation of
// both pair layouts against formulas written out here, at the batch's positions.
#include "kernels/cpu/rope.h"

#include <gtest/gtest.h>

#include <cmath>
#include <numbers>
#include <string>
#include <vector>

#include "node/backend/cpu/cpu_backend.h"
#include "node/common/error.h"
#include "tests/backend_cpu/test_support.h"

namespace tpnode {
namespace {

void expect_rel_near(const std::vector<float>& got, const std::vector<double>& want, double rel) {
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < got.size(); ++i) {
    EXPECT_NEAR(got[i], want[i], rel * std::abs(want[i])) << "i = " << i;
  }
}

TEST(RopeFreq, DefaultIsThetaPowerLaw) {
  for (int64_t d : {8, 64, 128}) {
    std::vector<double> want;
    for (int64_t i = 0; i < d / 2; ++i) want.push_back(std::pow(100000.0, -2.0 * i / d));
    expect_rel_near(cpu::rope_inv_freq(d, 100000.0f, RopeScaling{}), want, 1e-6);
  }
}

TEST(RopeFreq, LinearDividesByFactor) {
  const RopeScaling s = test::linear_scaling(4.0f);
  std::vector<double> want;
  for (int64_t i = 0; i < 32; ++i) want.push_back(std::pow(10000.0, -2.0 * i / 64) / 4.0);
  expect_rel_near(cpu::rope_inv_freq(64, 10000.0f, s), want, 1e-6);
}

// Meta's reference (llama-models apply_scaling), written in double.
std::vector<double> llama3_reference(int64_t d, double theta, const RopeScaling& s, int* regions) {
  const double low_wavelen = s.original_context / s.low_freq_factor;
  const double high_wavelen = s.original_context / s.high_freq_factor;
  std::vector<double> out;
  for (int64_t i = 0; i < d / 2; ++i) {
    const double freq = std::pow(theta, -2.0 * i / d);
    const double wavelen = 2.0 * std::numbers::pi / freq;
    if (wavelen < high_wavelen) {
      out.push_back(freq);
      regions[0]++;
    } else if (wavelen > low_wavelen) {
      out.push_back(freq / s.factor);
      regions[2]++;
    } else {
      const double smooth = (s.original_context / wavelen - s.low_freq_factor) /
                            (s.high_freq_factor - s.low_freq_factor);
      out.push_back((1 - smooth) * freq / s.factor + smooth * freq);
      regions[1]++;
    }
  }
  return out;
}

TEST(RopeFreq, Llama3MatchesMetaReference) {
  // Llama 3.1's parameters: head_dim 128, theta 500000 reach all three frequency bands.
  const RopeScaling s = test::llama3_scaling();
  int regions[3] = {0, 0, 0};
  const auto want = llama3_reference(128, 500000.0, s, regions);
  EXPECT_GT(regions[0], 0);
  EXPECT_GT(regions[1], 0);
  EXPECT_GT(regions[2], 0);
  expect_rel_near(cpu::rope_inv_freq(128, 500000.0f, s), want, 2e-6);
  // Llama 3.2's factor 32 too.
  RopeScaling s32 = s;
  s32.factor = 32.0f;
  int r2[3] = {0, 0, 0};
  expect_rel_near(cpu::rope_inv_freq(64, 500000.0f, s32), llama3_reference(64, 500000.0, s32, r2),
                  2e-6);
}

TEST(RopeFreq, FreqFactorsDivideEachPair) {
  // llama.cpp's rope_freqs: per-pair divisors on top of the scaling kind.
  RopeScaling s = test::linear_scaling(2.0f);
  for (int64_t i = 0; i < 4; ++i) s.freq_factors.push_back(1.0f + static_cast<float>(i));
  std::vector<double> want;
  for (int64_t i = 0; i < 4; ++i) want.push_back(std::pow(10000.0, -2.0 * i / 8) / 2.0 / (1.0 + i));
  expect_rel_near(cpu::rope_inv_freq(8, 10000.0f, s), want, 1e-6);
  s.freq_factors.pop_back();
  EXPECT_THROW(cpu::rope_inv_freq(8, 10000.0f, s), Error);
  s.freq_factors = {1.0f, 0.0f, 1.0f, 1.0f};
  EXPECT_THROW(cpu::rope_inv_freq(8, 10000.0f, s), Error);
}

// --- rotation through the backend --------------------------------------------------------------

struct RopeCase {
  RopeStyle style;
  RopeScaling scaling;
  std::vector<int32_t> lengths;  // new tokens per sequence
  std::vector<int32_t> past;     // cached tokens per sequence
  // inv_freq used by the reference: HF-style float (exact match), or double (small positions).
  bool hf_float;
  double atol;
};

// What HF's LlamaRotaryEmbedding + apply_rotary_pos_emb compute, but with pairing chosen by
// style and angles from `inv_freq` (one per pair).
std::vector<double> rotate_reference(const std::vector<float>& x, int64_t n_heads, int64_t d,
                                     const std::vector<int32_t>& positions,
                                     const std::vector<double>& angles_per_pos_unit,
                                     bool float_angle, RopeStyle style) {
  std::vector<double> y(x.begin(), x.end());
  const int64_t half = d / 2;
  for (size_t t = 0; t < positions.size(); ++t) {
    for (int64_t h = 0; h < n_heads; ++h) {
      const float* in = x.data() + (t * n_heads + h) * d;
      double* out = y.data() + (t * n_heads + h) * d;
      for (int64_t i = 0; i < half; ++i) {
        double angle = positions[t] * angles_per_pos_unit[i];
        if (float_angle) {
          angle = static_cast<float>(static_cast<float>(positions[t]) *
                                     static_cast<float>(angles_per_pos_unit[i]));
        }
        const int64_t a = style == RopeStyle::kNeox ? i : 2 * i;
        const int64_t b = style == RopeStyle::kNeox ? i + half : 2 * i + 1;
        out[a] = in[a] * std::cos(angle) - in[b] * std::sin(angle);
        out[b] = in[b] * std::cos(angle) + in[a] * std::sin(angle);
      }
    }
  }
  return y;
}

class RopeRotation : public ::testing::TestWithParam<RopeCase> {};

TEST_P(RopeRotation, MatchesReference) {
  const RopeCase& c = GetParam();
  const int64_t n_head = 6, n_head_kv = 2, d = 64;
  const float theta = 100000.0f;

  std::vector<test::SeqSpec> specs;
  std::vector<std::vector<int32_t>> tables;
  for (size_t s = 0; s < c.lengths.size(); ++s) {
    specs.push_back({c.past[s], c.lengths[s]});
    tables.push_back({});  // no KV cache in this test: tables are not consulted
  }
  const BatchMeta batch = test::make_batch(specs, tables);
  CpuBackend backend(CpuBackendOptions{.n_threads = 3});
  backend.begin_step(batch);

  const int64_t n = batch.n_tokens();
  auto q = test::random_floats(static_cast<size_t>(n * n_head * d), 11);
  auto k = test::random_floats(static_cast<size_t>(n * n_head_kv * d), 12);
  const auto q0 = q, k0 = k;
  backend.rope(q.data(), k.data(),
               RopeParams{.n_head = n_head,
                          .n_head_kv = n_head_kv,
                          .head_dim = d,
                          .style = c.style,
                          .theta = theta,
                          .scaling = c.scaling});

  // Per-pair frequency for the reference.
  std::vector<double> freq(d / 2);
  if (c.hf_float) {
    // HF: inv_freq = 1.0 / (base ** (arange(0, d, 2).float() / d)) in float32.
    for (int64_t i = 0; i < d / 2; ++i) {
      freq[i] = 1.0f / std::pow(theta, static_cast<float>(2 * i) / static_cast<float>(d));
    }
  } else {
    int regions[3] = {0, 0, 0};
    if (c.scaling.kind == RopeScaling::Kind::kLlama3) {
      freq = llama3_reference(d, theta, c.scaling, regions);
    } else {
      for (int64_t i = 0; i < d / 2; ++i) {
        freq[i] = std::pow(static_cast<double>(theta), -2.0 * i / d);
        if (c.scaling.kind == RopeScaling::Kind::kLinear) freq[i] /= c.scaling.factor;
      }
    }
  }
  const auto qr = rotate_reference(q0, n_head, d, batch.positions, freq, c.hf_float, c.style);
  const auto kr = rotate_reference(k0, n_head_kv, d, batch.positions, freq, c.hf_float, c.style);
  double worst = 0.0;
  for (size_t i = 0; i < q.size(); ++i) worst = std::max(worst, std::abs(q[i] - qr[i]));
  for (size_t i = 0; i < k.size(); ++i) worst = std::max(worst, std::abs(k[i] - kr[i]));
  EXPECT_LT(worst, c.atol);
  // Rotation happened at all (position 0 is the identity, the others are not).
  double moved = 0.0;
  for (size_t i = 0; i < q.size(); ++i) moved = std::max<double>(moved, std::abs(q[i] - q0[i]));
  EXPECT_GT(moved, 0.1);
}

const RopeScaling kNone{};
const RopeScaling kLinear2 = test::linear_scaling(2.0f);
const RopeScaling kLlama3 = test::llama3_scaling();

std::string rope_case_name(const RopeCase& c, size_t index) {
  const char* scaling[] = {"none", "linear", "llama3"};
  return std::string(c.style == RopeStyle::kNeox ? "neox_" : "interleaved_") +
         scaling[static_cast<int>(c.scaling.kind)] + (c.hf_float ? "_hf_float_" : "_exact_") +
         std::to_string(index);
}

INSTANTIATE_TEST_SUITE_P(
    Styles, RopeRotation,
    ::testing::Values(
        // Large positions: HF's float32 angles, matched to 1e-6.
        RopeCase{RopeStyle::kNeox, kNone, {3, 1, 5}, {0, 4097, 30000}, true, 1e-6},
        RopeCase{RopeStyle::kInterleaved, kNone, {3, 1, 5}, {0, 4097, 30000}, true, 1e-6},
        // Small positions: the ideal double-precision formula.
        RopeCase{RopeStyle::kNeox, kNone, {7, 2}, {0, 40}, false, 5e-6},
        RopeCase{RopeStyle::kInterleaved, kNone, {7, 2}, {0, 40}, false, 5e-6},
        RopeCase{RopeStyle::kNeox, kLinear2, {4, 4}, {0, 50}, false, 5e-6},
        RopeCase{RopeStyle::kInterleaved, kLlama3, {4, 1, 3}, {0, 60, 20}, false, 1e-5},
        RopeCase{RopeStyle::kNeox, kLlama3, {4, 1, 3}, {0, 60, 20}, false, 1e-5}),
    [](const auto& info) { return rope_case_name(info.param, info.index); });

TEST(RopeChecks, RejectsOddHeadDim) {
  CpuBackend backend(CpuBackendOptions{.n_threads = 1});
  backend.begin_step(test::make_batch({{0, 1}}, {{}}));
  std::vector<float> q(7), k(7);
  EXPECT_THROW(backend.rope(q.data(), k.data(),
                            RopeParams{.n_head = 1, .n_head_kv = 1, .head_dim = 7, .scaling = {}}),
               Error);
}

}  // namespace
}  // namespace tpnode
