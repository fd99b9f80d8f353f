// Device sampling (kernels/cuda/sampling.cu through CudaBackend::sample_tokens) against the
// host Sampler's rules computed here in double: greedy equals the host argmax (ties, -0/+0,
// unaligned rows); every sampled id lies in the host's top-k / top-p / min-p set; over many
// seeds the frequencies match the renormalised probabilities (chi-square); the same seed and
// draw give the same ids. Then the engine: greedy tokens sampled on the device equal the host
// path's over prefill and decode steps, and seeded sampling repeats.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <numeric>
#include <span>

#include "node/engine/engine.h"
#include "node/engine/sampler.h"
#include "node/engine/single_rank_collective.h"
#include "node/engine/weight_source.h"
#include "node/model/model_file.h"
#include "tests/cuda/cuda_test_support.h"

namespace tpnode::test {
namespace {

// The host Sampler's kept set for `r` over `logits` as renormalised probabilities (0 outside
// the set), in double. `slack` > 0 widens the top-p and min-p thresholds by that relative
// amount (the device decides those boundaries in float).
std::vector<double> kept_probs(std::span<const float> logits, const SampleRow& r, double slack) {
  const size_t n = logits.size();
  std::vector<int32_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(), [&](int32_t a, int32_t b) {
    return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
  });
  size_t keep = n;
  if (r.top_k > 0 && static_cast<size_t>(r.top_k) < n) keep = static_cast<size_t>(r.top_k);
  const double max_l = logits[order[0]];
  std::vector<double> p(keep);
  double sum = 0;
  for (size_t i = 0; i < keep; ++i) {
    p[i] = std::exp((logits[order[i]] - max_l) / r.temperature);
    sum += p[i];
  }
  for (double& x : p) x /= sum;
  size_t cut = keep;
  if (r.top_p < 1.0f) {
    const double target = static_cast<double>(r.top_p) * (1.0 + slack);
    double cum = 0;
    for (size_t i = 0; i < keep; ++i) {
      cum += p[i];
      if (cum >= target) {
        cut = i + 1;
        break;
      }
    }
  }
  if (r.min_p > 0.0f) {
    const double floor = static_cast<double>(r.min_p) * (1.0 - slack) * p[0];
    size_t i = 1;
    while (i < cut && p[i] >= floor) ++i;
    cut = i;
  }
  double total = 0;
  for (size_t i = 0; i < cut; ++i) total += p[i];
  std::vector<double> out(n, 0.0);
  for (size_t i = 0; i < cut; ++i) out[order[i]] = p[i] / total;
  return out;
}

// A chi-square bound a correct sampler exceeds with probability ~3e-7 (Wilson-Hilferty, z = 5).
double chi_square_bound(int df) {
  const double a = 2.0 / (9.0 * df);
  const double c = 1.0 - a + 5.0 * std::sqrt(a);
  return df * c * c * c;
}

struct ChiSquare {
  double stat = 0;
  int df = 0;
  int64_t outside = 0;  // draws of tokens with probability 0
};

// Pearson's statistic of `counts` against n * probs; cells expecting fewer than 5 draws are
// pooled into one.
ChiSquare chi_square(const std::vector<int64_t>& counts, const std::vector<double>& probs) {
  int64_t n = 0;
  for (int64_t c : counts) n += c;
  ChiSquare r;
  double pooled_e = 0, pooled_o = 0;
  int cells = 0;
  for (size_t i = 0; i < counts.size(); ++i) {
    if (probs[i] == 0.0) {
      r.outside += counts[i];
      continue;
    }
    const double e = probs[i] * static_cast<double>(n);
    if (e < 5.0) {
      pooled_e += e;
      pooled_o += static_cast<double>(counts[i]);
      continue;
    }
    r.stat += (counts[i] - e) * (counts[i] - e) / e;
    ++cells;
  }
  if (pooled_e > 0) {
    r.stat += (pooled_o - pooled_e) * (pooled_o - pooled_e) / pooled_e;
    ++cells;
  }
  r.df = std::max(1, cells - 1);
  return r;
}

class CudaSampling : public ::testing::Test {
 protected:
  void SetUp() override {
    if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device (cudaGetDeviceCount gave 0)";
    CudaBackendOptions o;
    o.gpu_memory_fraction = 0.3;
    cuda_ = make_cuda_backend(o);
  }

  // Uploads rows of logits [rows, n_vocab]; returns the device pointer.
  const float* upload(const std::vector<float>& logits) {
    auto* dev = static_cast<float*>(cuda_->alloc(logits.size() * sizeof(float)));
    cuda_->copy_to_device(dev, logits.data(), logits.size() * sizeof(float));
    return dev;
  }

  std::vector<int32_t> sample(const float* logits, int64_t n_vocab,
                              const std::vector<SampleRow>& rows) {
    std::vector<int32_t> out(rows.size(), -7);
    cuda_->sample_tokens(logits, n_vocab, rows, out.data());
    return out;
  }

  std::unique_ptr<Backend> cuda_;
};

int32_t host_greedy(std::span<const float> row) {
  Sampler s(SamplingParams{});
  return s.sample(row, {});
}

// Logits ~ N(0, sigma) rounded to a coarse grid so that many values tie.
std::vector<float> random_logits(size_t n, uint32_t seed, float sigma, float grid) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> d(0.0f, sigma);
  std::vector<float> v(n);
  for (float& x : v) x = grid > 0 ? std::round(d(rng) / grid) * grid : d(rng);
  return v;
}

TEST_F(CudaSampling, GreedyEqualsTheHostArgmaxWithTiesAndUnalignedRows) {
  for (const int64_t V : {int64_t{1001}, int64_t{49152}, int64_t{128256}, int64_t{3}}) {
    constexpr int kRows = 7;
    std::vector<float> logits;
    for (int r = 0; r < kRows; ++r) {
      std::vector<float> row = random_logits(static_cast<size_t>(V), 100 + r, 3.0f, 0.25f);
      if (r == 1) {
        // The maximum three times: the lowest id wins.
        const float top = *std::max_element(row.begin(), row.end()) + 1.0f;
        row[static_cast<size_t>(V - 1)] = top;
        row[static_cast<size_t>(V / 2)] = top;
        row[static_cast<size_t>(V / 3)] = top;
      }
      if (r == 2) {
        // -0 and +0 compare equal on the host: the lower id wins whatever its sign.
        for (float& x : row) x = -1.0f - std::fabs(x);
        row[static_cast<size_t>(V / 3)] = -0.0f;
        row[static_cast<size_t>(V - 1)] = 0.0f;
      }
      if (r == 3) std::fill(row.begin(), row.end(), -2.5f);  // all equal: id 0
      if (r == 4) row[0] = -INFINITY;
      logits.insert(logits.end(), row.begin(), row.end());
    }
    const float* dev = upload(logits);
    std::vector<SampleRow> rows;
    for (int r = 0; r < kRows; ++r) {
      // Temperature 0, or any temperature with top_k = 1, is greedy.
      rows.push_back({.logit_row = r,
                      .temperature = r == 5 ? 0.9f : 0.0f,
                      .top_k = r == 5 ? 1 : 0,
                      .seed = static_cast<uint64_t>(r)});
    }
    const std::vector<int32_t> got = sample(dev, V, rows);
    for (int r = 0; r < kRows; ++r) {
      const std::span<const float> row(logits.data() + r * V, static_cast<size_t>(V));
      EXPECT_EQ(got[r], host_greedy(row)) << "V " << V << " row " << r;
    }
  }
}

// argmax_rows (the distributed argmax's local half under tensor parallelism): the same ids as
// greedy sampling, with the logit at that id, on rows listed out of order and repeated.
TEST_F(CudaSampling, ArgmaxRowsGiveTheGreedyIdAndItsLogit) {
  for (const int64_t V : {int64_t{1001}, int64_t{64128}}) {
    constexpr int kRows = 5;
    std::vector<float> logits;
    for (int r = 0; r < kRows; ++r) {
      std::vector<float> row = random_logits(static_cast<size_t>(V), 300 + r, 3.0f, 0.25f);
      if (r == 1) {
        const float top = *std::max_element(row.begin(), row.end()) + 1.0f;
        row[static_cast<size_t>(V - 1)] = top;
        row[static_cast<size_t>(V / 2)] = top;
      }
      if (r == 3) std::fill(row.begin(), row.end(), -2.5f);
      logits.insert(logits.end(), row.begin(), row.end());
    }
    const float* dev = upload(logits);
    const std::vector<int32_t> rows = {4, 1, 0, 3, 1};
    std::vector<float> best(rows.size(), NAN);
    std::vector<int32_t> ids(rows.size(), -7);
    cuda_->argmax_rows(dev, V, rows, best.data(), ids.data());
    for (size_t i = 0; i < rows.size(); ++i) {
      const std::span<const float> row(logits.data() + rows[i] * V, static_cast<size_t>(V));
      const int32_t want = host_greedy(row);
      EXPECT_EQ(ids[i], want) << "V " << V << " row " << rows[i];
      EXPECT_EQ(best[i], row[static_cast<size_t>(want)]) << "V " << V << " row " << rows[i];
    }
  }
}

struct Case {
  const char* name;
  SampleRow row;
};

// Every draw lies in the host's kept set (widened by 1e-5 at the float-decided top-p and
// min-p boundaries), on large rows with many tied values and on an unaligned vocabulary.
TEST_F(CudaSampling, SampledIdsStayInsideTheHostKeptSet) {
  const std::vector<Case> cases = {
      {"temperature", {.temperature = 1.0f}},
      {"top_k", {.temperature = 0.8f, .top_k = 40}},
      {"top_k_tie", {.temperature = 1.0f, .top_k = 1000}},
      {"top_p", {.temperature = 1.0f, .top_p = 0.5f}},
      {"top_p_small", {.temperature = 0.7f, .top_p = 0.05f}},
      {"min_p", {.temperature = 1.3f, .min_p = 0.2f}},
      {"all", {.temperature = 0.8f, .top_k = 40, .top_p = 0.95f, .min_p = 0.05f}},
      {"top_k_then_p", {.temperature = 2.0f, .top_k = 300, .top_p = 0.3f}},
  };
  for (const int64_t V : {int64_t{128256}, int64_t{50257}}) {
    constexpr int kLogitRows = 4, kSeeds = 24;
    std::vector<float> logits;
    for (int r = 0; r < kLogitRows; ++r) {
      // Sharper rows put most mass on few tokens; the grid makes ties at every threshold.
      const std::vector<float> row =
          random_logits(static_cast<size_t>(V), 7 + r, 1.5f + 1.5f * r, r % 2 ? 0.0f : 0.05f);
      logits.insert(logits.end(), row.begin(), row.end());
    }
    const float* dev = upload(logits);
    std::vector<SampleRow> rows;
    for (size_t c = 0; c < cases.size(); ++c) {
      for (int r = 0; r < kLogitRows; ++r) {
        for (int s = 0; s < kSeeds; ++s) {
          SampleRow row = cases[c].row;
          row.logit_row = r;
          row.seed = 1000 * c + 10 * s + r;
          row.draw = static_cast<uint64_t>(s);
          rows.push_back(row);
        }
      }
    }
    const std::vector<int32_t> got = sample(dev, V, rows);
    size_t i = 0;
    for (size_t c = 0; c < cases.size(); ++c) {
      for (int r = 0; r < kLogitRows; ++r) {
        const std::span<const float> row(logits.data() + r * V, static_cast<size_t>(V));
        const std::vector<double> keep = kept_probs(row, cases[c].row, 1e-5);
        for (int s = 0; s < kSeeds; ++s, ++i) {
          ASSERT_TRUE(got[i] >= 0 && got[i] < V) << cases[c].name << ": id " << got[i];
          EXPECT_GT(keep[static_cast<size_t>(got[i])], 0.0)
              << cases[c].name << " V " << V << " row " << r << " seed " << s << ": id " << got[i]
              << " (logit " << row[static_cast<size_t>(got[i])] << ") is outside the kept set";
        }
      }
    }
  }
}

// Frequencies over many seeds against the renormalised kept probabilities. A sampler that
// ignored a filter would draw tokens outside the set; one that ignored the temperature or
// renormalised wrongly would exceed the chi-square bound by far at this many draws.
class CudaSamplingDistribution : public CudaSampling {
 protected:
  void check(const std::vector<float>& logits, const Case& c, int n_draws) {
    const int64_t V = static_cast<int64_t>(logits.size());
    // The set must not hinge on float rounding: a 1e-4 wider threshold keeps the same set.
    const std::vector<double> strict = kept_probs(logits, c.row, 0.0);
    const std::vector<double> wide = kept_probs(logits, c.row, 1e-4);
    for (int64_t i = 0; i < V; ++i) {
      ASSERT_EQ(strict[i] > 0, wide[i] > 0) << c.name << ": token " << i << " sits on a boundary";
    }
    const float* dev = upload(logits);
    std::vector<SampleRow> rows(static_cast<size_t>(n_draws), c.row);
    for (int i = 0; i < n_draws; ++i) {
      rows[i].logit_row = 0;
      rows[i].seed = 0x9E3779B97F4A7C15ull * static_cast<uint64_t>(i + 1);
      rows[i].draw = static_cast<uint64_t>(i % 5);
    }
    const std::vector<int32_t> got = sample(dev, V, rows);
    std::vector<int64_t> counts(static_cast<size_t>(V), 0);
    for (int32_t t : got) {
      ASSERT_TRUE(t >= 0 && t < V) << c.name << ": id " << t;
      ++counts[static_cast<size_t>(t)];
    }
    const ChiSquare x = chi_square(counts, strict);
    EXPECT_EQ(x.outside, 0) << c.name << ": draws outside the kept set";
    EXPECT_LT(x.stat, chi_square_bound(x.df))
        << c.name << ": chi-square " << x.stat << " with " << x.df << " degrees of freedom";
    std::printf("  %-22s kept %3d cells, chi-square %7.2f (df %2d, bound %6.2f)\n", c.name,
                x.df + 1, x.stat, x.df, chi_square_bound(x.df));
  }
};

TEST_F(CudaSamplingDistribution, SmallVocabularyFrequenciesMatchTheKeptProbabilities) {
  // Sixteen tokens, ids shuffled against the order, with a tie (1.5, 1.5) at ids 3 and 11.
  const std::vector<float> logits = {0.3f, -1.0f, 1.7f, 1.5f, -3.0f, 2.0f, 0.0f,  -0.2f,
                                     1.2f, -4.0f, 0.9f, 1.5f, -0.6f, 0.5f, -2.0f, -1.5f};
  const std::vector<Case> cases = {
      {"temperature 1", {.temperature = 1.0f}},
      {"temperature 0.5", {.temperature = 0.5f}},
      {"top_k 3 (cuts a tie)", {.temperature = 0.7f, .top_k = 3}},
      {"top_k 6", {.temperature = 1.0f, .top_k = 6}},
      {"top_p 0.8", {.temperature = 1.3f, .top_p = 0.8f}},
      {"min_p 0.2", {.temperature = 1.0f, .min_p = 0.2f}},
      {"top_k+top_p+min_p", {.temperature = 0.8f, .top_k = 10, .top_p = 0.9f, .min_p = 0.05f}},
  };
  for (const Case& c : cases) check(logits, c, 40000);
}

TEST_F(CudaSamplingDistribution, LargeVocabularyFrequenciesMatchTheKeptProbabilities) {
  // 128256 tokens: a N(0, 1) background and twelve peaks (20, 19.4, ...) at scattered ids,
  // so the filters cut among the peaks after radix passes over the whole row.
  std::vector<float> logits = random_logits(128256, 3, 1.0f, 0.0f);
  for (int j = 0; j < 12; ++j)
    logits[static_cast<size_t>(7919 * (j + 1) % 128256)] = 20.0f - 0.6f * j;
  const std::vector<Case> cases = {
      {"top_k 8", {.temperature = 1.5f, .top_k = 8}},
      {"top_p 0.7", {.temperature = 1.2f, .top_p = 0.7f}},
      {"min_p 0.01", {.temperature = 1.0f, .min_p = 0.01f}},
  };
  for (const Case& c : cases) check(logits, c, 30000);
}

TEST_F(CudaSampling, SameSeedAndDrawGiveTheSameIds) {
  constexpr int64_t V = 128256;
  const std::vector<float> logits = random_logits(V, 11, 2.0f, 0.0f);
  const float* dev = upload(logits);
  std::vector<SampleRow> rows;
  for (int i = 0; i < 64; ++i) {
    rows.push_back({.logit_row = 0,
                    .temperature = 1.0f,
                    .top_p = i % 2 ? 0.9f : 1.0f,
                    .seed = 42,
                    .draw = static_cast<uint64_t>(i / 2)});
  }
  const std::vector<int32_t> a = sample(dev, V, rows);
  const std::vector<int32_t> b = sample(dev, V, rows);
  EXPECT_EQ(a, b);
  // Another seed, and other draws of one seed, give other ids (this row spreads its mass
  // over thousands of tokens, so a repeat is unlikely).
  for (SampleRow& r : rows) r.seed = 43;
  const std::vector<int32_t> c = sample(dev, V, rows);
  int same = 0, same_draw = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    same += a[i] == c[i];
    if (i >= 2) same_draw += a[i] == a[i - 2];
  }
  EXPECT_LT(same, 8);
  EXPECT_LT(same_draw, 8);
}

// Not a check of speed, a record of it: microseconds per call (upload of the row
// parameters, the kernel, the copy of the ids) for the lead's notes.
TEST_F(CudaSampling, ReportsTime) {
  constexpr int64_t V = 128256;
  std::vector<float> logits;
  for (int r = 0; r < 16; ++r) {
    const std::vector<float> row = random_logits(V, 50 + r, 3.0f, 0.0f);
    logits.insert(logits.end(), row.begin(), row.end());
  }
  const float* dev = upload(logits);
  const std::vector<Case> cases = {
      {"greedy", {.temperature = 0.0f}},
      {"temperature 1", {.temperature = 1.0f}},
      {"k40 p0.95 minp0.05 T0.8",
       {.temperature = 0.8f, .top_k = 40, .top_p = 0.95f, .min_p = 0.05f}},
      {"top_p 0.9", {.temperature = 1.0f, .top_p = 0.9f}},
  };
  for (const Case& c : cases) {
    for (const int n : {1, 16}) {
      std::vector<SampleRow> rows(static_cast<size_t>(n), c.row);
      for (int i = 0; i < n; ++i) rows[i].logit_row = i;
      sample(dev, V, rows);
      constexpr int kIters = 50;
      const auto t0 = std::chrono::steady_clock::now();
      for (int i = 0; i < kIters; ++i) sample(dev, V, rows);
      const double us =
          std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count() /
          kIters;
      std::printf("  sample %-26s V %lld, %2d rows: %8.1f us per call\n", c.name,
                  static_cast<long long>(V), n, us);
      EXPECT_LT(us, 20000.0) << c.name;  // far above any sane time: catches a hang-like path
    }
  }
}

// The engine: sequences that ask for device sampling come back as tokens, the others as
// logits, and greedy device tokens equal the host Sampler's on another engine's logits.
class CudaEngineSampling : public ::testing::TestWithParam<const char*> {
 protected:
  void SetUp() override {
    if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device (cudaGetDeviceCount gave 0)";
    if (!std::filesystem::exists(path())) GTEST_SKIP() << path() << " is absent";
  }
  std::string path() const { return std::string(TPNODE_SOURCE_DIR) + "/" + GetParam(); }
  static std::unique_ptr<Backend> backend() {
    CudaBackendOptions o;
    o.gpu_memory_fraction = 0.25;
    return make_cuda_backend(o);
  }
  static EngineOptions engine_options() {
    EngineOptions eo;
    eo.max_context = 128;
    eo.kv_tokens = 512;
    eo.max_batch_tokens = 64;
    return eo;
  }
  static StepPlan prompts(int32_t n_vocab, uint64_t id0, int32_t block0) {
    StepPlan plan;
    SeqStep a{.seq_id = id0,
              .n_past = 0,
              .tokens = {},
              .blocks = {block0, block0 + 1},
              .want_logits = true};
    SeqStep b{.seq_id = id0 + 1,
              .n_past = 0,
              .tokens = {3, 7, n_vocab - 1},
              .blocks = {block0 + 3},
              .want_logits = true};
    for (int i = 0; i < 20; ++i) a.tokens.push_back((i * 37 + 11) % n_vocab);
    plan.seqs = {a, b};
    return plan;
  }
  static void advance(StepPlan& plan, const std::vector<int32_t>& next) {
    for (size_t s = 0; s < plan.seqs.size(); ++s) {
      SeqStep& q = plan.seqs[s];
      q.n_past += static_cast<int32_t>(q.tokens.size());
      q.tokens = {next[s]};
    }
    ++plan.step;
  }
};

TEST_P(CudaEngineSampling, GreedyDeviceTokensEqualTheHostPath) {
  auto file = ModelFile::open(path());
  const HParams& hp = file->hparams();
  const size_t V = static_cast<size_t>(hp.n_vocab);
  auto gpu_a = backend(), gpu_b = backend();
  FileWeightSource src_a(*file), src_b(*file);
  SingleRankCollective c_a, c_b;
  Engine device(hp, src_a, *gpu_a, c_a, engine_options());
  Engine host(hp, src_b, *gpu_b, c_b, engine_options());

  StepPlan plan = prompts(hp.n_vocab, 1, 0);
  const DeviceSampling greedy{.enabled = true, .temperature = 0.0f};
  for (int step = 0; step < 6; ++step) {
    // Odd steps: the second sequence stays on the host path, so one step mixes both.
    StepPlan dplan = plan;
    dplan.seqs[0].sampling = greedy;
    if (step % 2 == 0) dplan.seqs[1].sampling = greedy;
    const StepOutput& d = device.run(dplan);
    const std::vector<float> lh = host.step(plan);
    ASSERT_EQ(lh.size(), 2 * V);
    ASSERT_EQ(d.tokens.size(), 2u) << "step " << step;
    std::vector<int32_t> want(2);
    for (size_t s = 0; s < 2; ++s) want[s] = host_greedy({lh.data() + s * V, V});
    EXPECT_EQ(d.tokens[0], want[0]) << "step " << step;
    if (step % 2 == 0) {
      EXPECT_EQ(d.tokens[1], want[1]) << "step " << step;
      EXPECT_TRUE(d.logits.empty()) << "step " << step << ": logits copied although sampled";
    } else {
      EXPECT_EQ(d.tokens[1], -1) << "step " << step;
      ASSERT_EQ(d.logits.size(), V) << "step " << step;
      EXPECT_EQ(0, std::memcmp(d.logits.data(), lh.data() + V, V * sizeof(float)))
          << "step " << step << ": the host row differs from the other engine's";
    }
    advance(plan, want);
  }
}

TEST_P(CudaEngineSampling, SeededSamplingRepeats) {
  auto file = ModelFile::open(path());
  const HParams& hp = file->hparams();
  auto gpu = backend();
  FileWeightSource src(*file);
  SingleRankCollective c;
  Engine engine(hp, src, *gpu, c, engine_options());
  auto run = [&](uint64_t id0, int32_t block0) {
    StepPlan plan = prompts(hp.n_vocab, id0, block0);
    std::vector<int32_t> all;
    for (int step = 0; step < 6; ++step) {
      for (size_t s = 0; s < plan.seqs.size(); ++s) {
        plan.seqs[s].sampling = {
            .enabled = true, .temperature = 1.0f, .top_p = 0.95f, .seed = 5 + s};
      }
      const StepOutput& out = engine.run(plan);
      EXPECT_TRUE(out.logits.empty());
      EXPECT_EQ(out.tokens.size(), 2u);
      if (out.tokens.size() != 2) return all;
      all.insert(all.end(), out.tokens.begin(), out.tokens.end());
      advance(plan, out.tokens);
    }
    return all;
  };
  const std::vector<int32_t> first = run(1, 0);
  const std::vector<int32_t> again = run(3, 8);  // other sequences, other KV blocks
  EXPECT_EQ(first, again);
  EXPECT_EQ(first.size(), 12u);
}

// Steps queued ahead, each decode token taken on the device from the step before's draw
// (kChainedToken; decode steps replay graphs), give the tokens of steps fed from the host.
TEST_P(CudaEngineSampling, ChainedStepsGiveTheHostFedTokens) {
  auto file = ModelFile::open(path());
  const HParams& hp = file->hparams();
  auto gpu = backend();
  FileWeightSource src(*file);
  SingleRankCollective c;
  Engine engine(hp, src, *gpu, c, engine_options());
  ASSERT_TRUE(engine.chains());
  constexpr int kSteps = 10;
  auto sampled = [&](StepPlan plan) {
    for (size_t s = 0; s < plan.seqs.size(); ++s) {
      // One greedy sequence, one drawing with a seed.
      plan.seqs[s].sampling = {.enabled = true, .temperature = s == 0 ? 0.0f : 1.0f,
                               .top_p = 0.95f, .seed = 5 + s};
    }
    return plan;
  };
  std::vector<int32_t> fed;
  StepPlan plan = sampled(prompts(hp.n_vocab, 1, 0));
  for (int step = 0; step < kSteps; ++step) {
    const StepOutput& out = engine.run(plan);
    ASSERT_EQ(out.tokens.size(), 2u);
    fed.insert(fed.end(), out.tokens.begin(), out.tokens.end());
    advance(plan, out.tokens);
  }

  std::vector<int32_t> chained;
  plan = sampled(prompts(hp.n_vocab, 3, 8));  // other sequences, other KV blocks
  engine.submit(plan);
  for (int step = 1; step < kSteps; ++step) {
    advance(plan, {kChainedToken, kChainedToken});
    engine.submit(plan);
    const StepOutput& out = engine.collect();
    ASSERT_EQ(out.tokens.size(), 2u);
    chained.insert(chained.end(), out.tokens.begin(), out.tokens.end());
  }
  const StepOutput& last = engine.collect();
  chained.insert(chained.end(), last.tokens.begin(), last.tokens.end());
  EXPECT_EQ(chained, fed);
}

INSTANTIATE_TEST_SUITE_P(Models, CudaEngineSampling,
                         ::testing::Values("tests/fixtures/model_files/tiny_llama.gguf",
                                           "tests/fixtures/model_files/tiny_qwen2.gguf",
                                           "models/SmolLM2-135M-Instruct.Q4_1.gguf"),
                         model_param_name);

}  // namespace
}  // namespace tpnode::test
