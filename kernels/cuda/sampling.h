// Token sampling over device logits, one CTA per row, without a sort:
//
// - greedy (temperature <= 0 or top_k == 1): argmax, ties to the lowest id (as the host
//   Sampler);
// - otherwise the host Sampler's kept set, found exactly: the tokens in the order (logit
//   descending, id ascending) are cut to the first top_k, then to the shortest prefix whose
//   probability mass (softmax at the temperature over the top-k set) reaches top_p, then to
//   those with p >= min_p * p_max. Top-k and top-p thresholds come from radix selects over
//   order-preserving keys of the logits (4 passes of 8-bit digits, histograms of counts and
//   of fixed-point probability mass in shared memory); ties at a threshold are split by id.
//   One token is then drawn from the renormalised kept set by the exponential race
//   (Gumbel-max): argmax of (logit - max) / T - log(E_i), E_i = -log(1 - u_i), with u_i from
//   Philox4x32-10 keyed by the row's seed and counted by (token id / 4, draw).
//
// Determinism: every sum is in integers (fixed-point mass) and every reduction is an exact
// max with ties broken by id, so the same logits, seed and draw give the same token on every
// run. The device stream differs from the host Sampler's (mt19937_64): a seeded request is
// reproducible per backend, not across backends. The mass of a top-p boundary is computed in
// float (expf), so a token whose inclusion hinges on a relative difference below ~1e-6 of the
// mass may be decided differently from the host's double arithmetic.
//
// NaN logits sort below every number and are never drawn.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace tpnode::cuda {

// One row's parameters (an array of these lives in device memory).
struct SampleRowParams {
  int32_t logit_row = 0;     // row of SampleParams::logits to sample from
  float temperature = 0.0f;  // <= 0: greedy
  int32_t top_k = 0;         // 0 (or >= n_vocab): off
  float top_p = 1.0f;        // in (0, 1]; 1: off
  float min_p = 0.0f;        // in [0, 1]; 0: off
  uint32_t pad = 0;
  uint64_t seed = 0;  // Philox key
  uint64_t draw = 0;  // Philox counter: which draw of this seed (e.g. the position)
};
static_assert(sizeof(SampleRowParams) == 40, "SampleRowParams is copied to the device as is");

// A row whose draw is its argmax: temperature <= 0 (or NaN), or top_k == 1.
__host__ __device__ inline bool greedy_row(float temperature, int32_t top_k) {
  return !(temperature > 0.0f) || top_k == 1;
}

// Greedy rows split over up to this many CTAs each (SampleParams::partials).
inline constexpr int kSampleMaxSplits = 32;

struct SampleParams {
  const float* logits = nullptr;          // [*, n_vocab] device
  int64_t n_vocab = 0;                    // < 2^30
  const SampleRowParams* rows = nullptr;  // [n_rows] device
  int32_t n_rows = 0;
  int32_t* tokens = nullptr;  // [n_rows] device: the sampled ids
  float* best = nullptr;      // [n_rows] device, optional: a greedy row's logit at its id
  // Optional, for draws whose rows are all greedy (all_greedy, which the caller vouches
  // for): each row's argmax is split over several CTAs, whose best (key, id) meet in
  // partials [n_rows * kSampleMaxSplits]; the last CTA of a row in (a ticket in counters
  // [n_rows], 0 before the launch and left at 0) writes its id. One CTA per row takes a whole
  // row of 128K logits through one SM.
  bool all_greedy = false;
  unsigned long long* partials = nullptr;
  unsigned* counters = nullptr;
};

// Enqueues the sampling of every row on `stream`.
void sample_tokens(const SampleParams& p, cudaStream_t stream);

}  // namespace tpnode::cuda
