#include "node/engine/sampler.h"

#include <algorithm>
#include <cmath>
#include <unordered_map>

#include "node/common/error.h"

namespace tpnode {

void SamplingParams::validate() const {
  TPNODE_CHECK(std::isfinite(temperature) && temperature >= 0.0f,
               "temperature must be >= 0 (got {})", temperature);
  TPNODE_CHECK(top_k >= 0, "top_k must be >= 0 (got {})", top_k);
  TPNODE_CHECK(top_p > 0.0f && top_p <= 1.0f, "top_p must be in (0, 1] (got {})", top_p);
  TPNODE_CHECK(min_p >= 0.0f && min_p <= 1.0f, "min_p must be in [0, 1] (got {})", min_p);
  TPNODE_CHECK(std::isfinite(repetition_penalty) && repetition_penalty > 0.0f,
               "repetition_penalty must be > 0 (got {})", repetition_penalty);
  TPNODE_CHECK(std::isfinite(presence_penalty) && std::abs(presence_penalty) <= 2.0f,
               "presence_penalty must be in [-2, 2] (got {})", presence_penalty);
  TPNODE_CHECK(std::isfinite(frequency_penalty) && std::abs(frequency_penalty) <= 2.0f,
               "frequency_penalty must be in [-2, 2] (got {})", frequency_penalty);
  TPNODE_CHECK(penalty_last_n >= 0, "penalty_last_n must be >= 0");
}

Sampler::Sampler(const SamplingParams& params) : params_(params), rng_(params.seed) {}

int32_t Sampler::sample(std::span<const float> logits, std::span<const int32_t> history) {
  const int32_t n = static_cast<int32_t>(logits.size());
  TPNODE_CHECK(n > 0, "sampler: empty logits");
  scratch_.resize(static_cast<size_t>(n));
  for (int32_t i = 0; i < n; ++i) scratch_[i] = {logits[i], i};

  // Penalties over the recent window: repetition as in CTRL (divide positive logits,
  // multiply negative ones), presence and frequency as OpenAI defines them.
  const bool penalize = params_.repetition_penalty != 1.0f || params_.presence_penalty != 0.0f ||
                        params_.frequency_penalty != 0.0f;
  if (penalize && params_.penalty_last_n > 0 && !history.empty()) {
    const size_t window = std::min(history.size(), static_cast<size_t>(params_.penalty_last_n));
    std::unordered_map<int32_t, int> counts;
    for (size_t i = history.size() - window; i < history.size(); ++i) ++counts[history[i]];
    for (const auto& [tok, count] : counts) {
      if (tok < 0 || tok >= n) continue;
      float& l = scratch_[tok].first;
      l = l > 0 ? l / params_.repetition_penalty : l * params_.repetition_penalty;
      l -= params_.presence_penalty + params_.frequency_penalty * static_cast<float>(count);
    }
  }

  auto by_logit = [](const auto& a, const auto& b) {
    return a.first > b.first || (a.first == b.first && a.second < b.second);
  };
  if (params_.temperature <= 0.0f) {
    return std::min_element(scratch_.begin(), scratch_.end(), by_logit)->second;
  }

  size_t keep = scratch_.size();
  if (params_.top_k > 0 && static_cast<size_t>(params_.top_k) < keep) {
    keep = static_cast<size_t>(params_.top_k);
    std::partial_sort(scratch_.begin(), scratch_.begin() + keep, scratch_.end(), by_logit);
  } else {
    std::sort(scratch_.begin(), scratch_.end(), by_logit);
  }
  scratch_.resize(keep);

  // Softmax at the temperature, in double for a stable cumulative sum.
  const double max_l = scratch_[0].first;
  std::vector<double> p(keep);
  double sum = 0;
  for (size_t i = 0; i < keep; ++i) {
    p[i] = std::exp((scratch_[i].first - max_l) / params_.temperature);
    sum += p[i];
  }
  for (auto& x : p) x /= sum;

  size_t cut = keep;
  if (params_.top_p < 1.0f) {
    double cum = 0;
    for (size_t i = 0; i < keep; ++i) {
      cum += p[i];
      if (cum >= params_.top_p) {
        cut = i + 1;
        break;
      }
    }
  }
  if (params_.min_p > 0.0f) {
    const double floor = params_.min_p * p[0];
    size_t i = 1;
    while (i < cut && p[i] >= floor) ++i;
    cut = i;
  }

  double total = 0;
  for (size_t i = 0; i < cut; ++i) total += p[i];
  // 53 random bits: the same seed gives the same draw on every platform we build for.
  const double u = static_cast<double>(rng_() >> 11) * 0x1.0p-53 * total;
  double acc = 0;
  for (size_t i = 0; i < cut; ++i) {
    acc += p[i];
    if (u < acc) return scratch_[i].second;
  }
  return scratch_[cut - 1].second;
}

}  // namespace tpnode
