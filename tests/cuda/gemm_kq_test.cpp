// gemm_kq (Q4_K on int8 warpgroup MMAs) against a host reference, and gemm_kq_acts (x in
// 8 bits per 256-value group, in the kernel's record layout) against a host recompute.
//
// The reference for gemm_kq takes the very 8-bit activations the GPU reads (decoded from the
// records gemm_kq_acts wrote, which the second test checks) and the weights dequantized by the
// CPU library (kernels/cpu), summed in double. The kernel's main term is exact integer
// arithmetic and one FP32 conversion per block; its mins' term is a BF16 product of -dmin * m
// (rounded once) and the chunks' sums of x (rounded once), so per output
//   |error| <= 2^-7 * sum over chunks |dmin * m * chunk sum| + 2^-20 * sum |w x|
// (the two roundings of 2^-9 each, with margin, plus FP32 accumulation over the blocks); a
// wrong row, token, scale or chunk lands far outside it.
#include "kernels/cuda/gemm_kq.h"

#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <fmt/format.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "kernels/cpu/dequantize.h"
#include "kernels/cuda/elementwise.h"
#include "kernels/cuda/quant_layout.h"
#include "node/model/tensor_type.h"
#include "tests/cuda/cuda_test_support.h"

namespace tpnode::test {
namespace {

namespace kc = ::tpnode::cuda;

#define KQ_CUDA_OK(call) ASSERT_EQ((call), cudaSuccess) << #call

constexpr int kRec = kc::kGemmKqRecordBytes;

float bf16_to_float(uint16_t h) {
  const uint32_t b = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &b, 4);
  return f;
}

// One token's 256 values of one stage, decoded from a record: q (int8) and the scale.
struct StageActs {
  int q[256];
  float scale;
  float sums[8];  // the record's BF16 chunk sums
};
StageActs decode_record(const std::vector<uint8_t>& recs, int64_t st, int64_t groups,
                        int64_t tok) {
  const uint8_t* rec = recs.data() + (st * groups + tok / 8) * kRec;
  const int t8 = static_cast<int>(tok % 8);
  StageActs a{};
  for (int c = 0; c < 8; ++c) {
    for (int h = 0; h < 2; ++h) {
      for (int i = 0; i < 4; ++i) {
        for (int j = 0; j < 4; ++j) {
          a.q[32 * c + 8 * i + 4 * h + j] =
              static_cast<int8_t>(rec[(2 * c + h) * 128 + t8 * 16 + 4 * i + j]);
        }
      }
    }
    uint16_t s;
    std::memcpy(&s, rec + 2048 + t8 * 16 + 2 * c, 2);
    a.sums[c] = bf16_to_float(s);
  }
  std::memcpy(&a.scale, rec + 2304 + 4 * t8, 4);
  return a;
}

class GemmKqTest : public ::testing::Test {
 protected:
  void SetUp() override {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess || n == 0) {
      GTEST_SKIP() << "no CUDA device (cudaGetDeviceCount gave " << n << ")";
    }
    kc::gemm_kq_init();
    if (!kc::gemm_kq_available()) {
      GTEST_SKIP() << "gemm_kq needs compute capability 9.0 and an sm_90a build";
    }
    KQ_CUDA_OK(cudaStreamCreate(&stream_));
    const kc::GemmDqWorkspaceSize wsz = kc::gemm_kq_workspace_size();
    partials_ = DeviceBytes(wsz.partial_floats * sizeof(float));
    counters_ = DeviceBytes(wsz.n_counters * sizeof(unsigned));
    ASSERT_NE(partials_.as<float>(), nullptr);
    ASSERT_NE(counters_.as<unsigned>(), nullptr);
    KQ_CUDA_OK(cudaMemset(counters_.as<unsigned>(), 0, wsz.n_counters * sizeof(unsigned)));
    ws_ = {.partials = partials_.as<float>(),
           .partial_floats = wsz.partial_floats,
           .counters = counters_.as<unsigned>(),
           .n_counters = wsz.n_counters};
  }
  void TearDown() override {
    if (stream_ != nullptr) cudaStreamDestroy(stream_);
  }

  // x [m, k] to the device and through gemm_kq_acts; the records come back in `recs`.
  DeviceBytes acts(const std::vector<float>& xf, int64_t m, int64_t k,
                   std::vector<uint8_t>& recs) {
    DeviceBytes xd(xf.size() * sizeof(float));
    const size_t bytes = kc::gemm_kq_acts_bytes(m, k);
    DeviceBytes y(bytes);
    EXPECT_EQ(cudaMemcpy(xd.as<float>(), xf.data(), xf.size() * 4, cudaMemcpyHostToDevice),
              cudaSuccess);
    EXPECT_EQ(cudaMemset(y.as<uint8_t>(), 0xA5, bytes), cudaSuccess);  // every byte is written
    kc::gemm_kq_acts({.x = xd.as<float>(), .y = y.as<uint8_t>(), .m = m, .cols = k}, stream_);
    EXPECT_EQ(cudaStreamSynchronize(stream_), cudaSuccess);
    recs.resize(bytes);
    EXPECT_EQ(cudaMemcpy(recs.data(), y.as<uint8_t>(), bytes, cudaMemcpyDeviceToHost),
              cudaSuccess);
    return y;
  }

  struct Case {
    int64_t rows = 0, cols = 0, m = 0;
    int64_t ldy = 0;  // 0 = rows
    int splits = 0;   // 0 = the planner's
    int ctas = -1;    // -1 = the planner's; 0 = one CTA per tile and split; > 0 stream-K
    bool workspace = true;
    kc::GemmKqTuning tuning{};
  };

  void check(const Case& c, uint32_t seed) {
    const int64_t rows = c.rows, k = c.cols, m = c.m, ldy = c.ldy ? c.ldy : rows;
    std::string what = fmt::format("rows={} cols={} m={} ldy={}", rows, k, m, ldy);
    if (c.splits > 0) what += fmt::format(" splits={}", c.splits);
    if (c.ctas >= 0) what += fmt::format(" ctas={}", c.ctas);
    what += fmt::format(" tile<={} ctas/SM={}", c.tuning.max_tile_tokens, c.tuning.ctas_per_sm);
    SCOPED_TRACE(what);

    const auto gguf = random_gguf_rows(TensorType::kQ4_K, rows, k, seed);
    const size_t stride = gguf.size() / rows;
    std::vector<float> deq(rows * k);
    for (int64_t r = 0; r < rows; ++r) {
      cpu::dequantize_row(TensorType::kQ4_K, gguf.data() + r * stride, deq.data() + r * k, k);
    }
    std::vector<uint8_t> split(kc::split_matrix_bytes(TensorType::kQ4_K, rows, k));
    kc::repack_to_split(TensorType::kQ4_K, gguf.data(), stride, rows, k, split.data());
    DeviceBytes wd(split.size());
    KQ_CUDA_OK(cudaMemcpy(wd.as<uint8_t>(), split.data(), split.size(), cudaMemcpyHostToDevice));
    const kc::DeviceMatrix dm = kc::device_matrix(TensorType::kQ4_K, rows, k, wd.as<uint8_t>());

    const auto xf = cuda_random_floats(m * k, seed + 1);
    std::vector<uint8_t> recs;
    DeviceBytes x = acts(xf, m, k, recs);

    const size_t yn = static_cast<size_t>(m * ldy);
    DeviceBytes y(yn * sizeof(float));
    const std::vector<float> poison(yn, NAN);
    KQ_CUDA_OK(cudaMemcpy(y.as<float>(), poison.data(), yn * 4, cudaMemcpyHostToDevice));
    const kc::GemmKqParams p{.w = dm,
                             .x = x.as<uint8_t>(),
                             .y = y.as<float>(),
                             .m = m,
                             .ldy = c.ldy,
                             .ws = c.workspace ? ws_ : kc::GemmDqWorkspace{}};
    kc::GemmKqPlan plan = kc::gemm_kq_plan(p, c.tuning);
    if (c.splits > 0) plan.k_splits = c.splits;
    if (c.ctas >= 0) plan.ctas = c.ctas;
    kc::gemm_kq(p, plan, stream_);
    KQ_CUDA_OK(cudaStreamSynchronize(stream_));
    std::vector<float> got(yn);
    KQ_CUDA_OK(cudaMemcpy(got.data(), y.as<float>(), yn * 4, cudaMemcpyDeviceToHost));
    last_ = got;

    // The activations the kernel read, per token and stage.
    const int64_t groups = (m + 7) / 8, stages = k / 256;
    std::vector<double> xq(m * k);
    std::vector<float> sums(m * stages * 8);
    for (int64_t t = 0; t < m; ++t) {
      for (int64_t st = 0; st < stages; ++st) {
        const StageActs a = decode_record(recs, st, groups, t);
        for (int i = 0; i < 256; ++i) xq[t * k + st * 256 + i] = a.scale * a.q[i];
        for (int cc = 0; cc < 8; ++cc) sums[(t * stages + st) * 8 + cc] = a.sums[cc];
      }
    }
    int bad = 0;
    for (int64_t row = 0; row < rows; ++row) {
      // Large matrices: every 5th row (all fragment rows and tiles) and the last 16.
      if (rows > 1024 && row % 5 != 0 && row < rows - 16) continue;
      const float* w = deq.data() + row * k;
      const uint8_t* blocks = gguf.data() + row * stride;
      for (int64_t t = 0; t < m; ++t) {
        double ref = 0.0, mag = 0.0, mins = 0.0;
        for (int64_t i = 0; i < k; ++i) {
          ref += static_cast<double>(w[i]) * xq[t * k + i];
          mag += std::fabs(static_cast<double>(w[i]) * xq[t * k + i]);
        }
        for (int64_t st = 0; st < stages; ++st) {  // the mins' term's magnitude
          const uint8_t* b = blocks + st * 144;
          uint16_t dmin_bits;
          std::memcpy(&dmin_bits, b + 2, 2);
          _Float16 dmin_h;
          std::memcpy(&dmin_h, &dmin_bits, 2);
          const uint8_t* sc = b + 4;
          for (int cc = 0; cc < 8; ++cc) {
            const int mn = cc < 4 ? sc[cc + 4] & 63 : (sc[cc + 4] >> 4) | ((sc[cc] >> 6) << 4);
            mins += std::fabs(static_cast<double>(dmin_h) * mn * sums[(t * stages + st) * 8 + cc]);
          }
        }
        const float v = got[t * ldy + row];
        const double tol = std::ldexp(mins, -7) + std::ldexp(mag, -20) + 1e-30;
        if (!(std::fabs(v - ref) <= tol) && ++bad <= 5) {
          ADD_FAILURE() << "y[" << t << "][" << row << "] = " << v << ", reference " << ref
                        << " (tolerance " << tol << ")";
        }
      }
    }
    EXPECT_EQ(bad, 0);
    // Columns past the rows and tokens past m stay untouched.
    for (int64_t t = 0; t < m && ldy > rows; ++t) {
      for (int64_t col = rows; col < ldy; ++col) EXPECT_TRUE(std::isnan(got[t * ldy + col]));
    }
  }

  cudaStream_t stream_ = nullptr;
  std::vector<float> last_;  // y of the last check
  DeviceBytes partials_, counters_;
  kc::GemmDqWorkspace ws_;
};

TEST_F(GemmKqTest, ActsMatchAHostRecompute) {
  for (const int64_t m : {1, 5, 8, 13, 64}) {
    const int64_t k = 512;
    auto xf = cuda_random_floats(m * k, 100 + static_cast<uint32_t>(m), 3.0f);
    if (m > 1) std::fill(xf.begin() + k, xf.begin() + k + 256, 0.0f);  // an all-zero group
    std::vector<uint8_t> recs;
    DeviceBytes y = acts(xf, m, k, recs);
    const int64_t groups = (m + 7) / 8;
    for (int64_t t = 0; t < groups * 8; ++t) {
      for (int64_t st = 0; st < k / 256; ++st) {
        SCOPED_TRACE(fmt::format("m={} token={} stage={}", m, t, st));
        const StageActs a = decode_record(recs, st, groups, t);
        const uint8_t* rec = recs.data() + (st * groups + t / 8) * kRec;
        for (int j = 0; j < 16; ++j) ASSERT_EQ(rec[2048 + 128 + (t % 8) * 16 + j], 0);
        if (t >= m) {  // padding tokens: zeros
          EXPECT_EQ(a.scale, 0.0f);
          for (int i = 0; i < 256; ++i) ASSERT_EQ(a.q[i], 0);
          continue;
        }
        const float* x = xf.data() + t * k + st * 256;
        float amax = 0.0f;
        for (int i = 0; i < 256; ++i) amax = std::max(amax, std::fabs(x[i]));
        EXPECT_FLOAT_EQ(a.scale, amax / 127.0f);
        for (int c = 0; c < 8; ++c) {
          int sum = 0;
          for (int i = 0; i < 32; ++i) {
            const int idx = 32 * c + i;
            ASSERT_LE(std::abs(a.q[idx]), 127);
            const int want = amax > 0.0f ? static_cast<int>(std::nearbyint(x[idx] / (amax / 127.0f))) : 0;
            ASSERT_EQ(a.q[idx], want) << "value " << idx;
            sum += a.q[idx];
          }
          const float s = a.scale * static_cast<float>(sum);
          EXPECT_NEAR(a.sums[c], s, std::fabs(s) * 0x1p-8 + 1e-30f) << "chunk " << c;
        }
      }
    }
  }
}

// The RMSNorm's records of its output are gemm_kq_acts' bytes for the same output, padding
// tokens included (with and without the residual add).
TEST_F(GemmKqTest, RmsNormWritesTheRecordsOfItsOutput) {
  uint32_t seed = 300;
  for (const int64_t m : {1, 5, 8, 13, 64}) {
    for (const int64_t n : {256, 4096, 5120, 12288}) {
      for (const bool residual : {false, true}) {
        SCOPED_TRACE(fmt::format("m={} n={} residual={}", m, n, residual));
        const auto xf = cuda_random_floats(m * n, seed++, 3.0f);
        const auto wf = cuda_random_floats(n, seed++);
        const auto rf = cuda_random_floats(m * n, seed++);
        DeviceBytes x(m * n * 4), w(n * 4), r(m * n * 4), xo(m * n * 4), y(m * n * 4);
        KQ_CUDA_OK(cudaMemcpy(x.as<float>(), xf.data(), m * n * 4, cudaMemcpyHostToDevice));
        KQ_CUDA_OK(cudaMemcpy(w.as<float>(), wf.data(), n * 4, cudaMemcpyHostToDevice));
        KQ_CUDA_OK(cudaMemcpy(r.as<float>(), rf.data(), m * n * 4, cudaMemcpyHostToDevice));
        const size_t bytes = kc::gemm_kq_acts_bytes(m, n);
        DeviceBytes from_norm(bytes);
        KQ_CUDA_OK(cudaMemset(from_norm.as<uint8_t>(), 0xA5, bytes));  // every byte is written
        kc::rmsnorm({.x = x.as<float>(),
                     .w = w.as<float>(),
                     .y = y.as<float>(),
                     .rows = m,
                     .n = n,
                     .eps = 1e-5f,
                     .quant = {},
                     .r = residual ? r.as<float>() : nullptr,
                     .x_out = residual ? xo.as<float>() : nullptr,
                     .kq = from_norm.as<uint8_t>()},
                    stream_);
        KQ_CUDA_OK(cudaStreamSynchronize(stream_));
        std::vector<float> yh(m * n);
        KQ_CUDA_OK(cudaMemcpy(yh.data(), y.as<float>(), m * n * 4, cudaMemcpyDeviceToHost));
        std::vector<uint8_t> want, got(bytes);
        DeviceBytes from_acts = acts(yh, m, n, want);
        KQ_CUDA_OK(cudaMemcpy(got.data(), from_norm.as<uint8_t>(), bytes, cudaMemcpyDeviceToHost));
        EXPECT_EQ(std::memcmp(got.data(), want.data(), bytes), 0);
      }
    }
  }
  // Rows that no 256-value stage divides are refused.
  DeviceBytes x(2 * 320 * 4), w(320 * 4), y(2 * 320 * 4), recs(kc::gemm_kq_acts_bytes(2, 512));
  kc::RmsNormParams bad;
  bad.x = x.as<float>();
  bad.w = w.as<float>();
  bad.y = y.as<float>();
  bad.rows = 2;
  bad.n = 320;
  bad.kq = recs.as<uint8_t>();
  EXPECT_THROW(kc::rmsnorm(bad, stream_), Error);
}

TEST_F(GemmKqTest, SmallShapes) {
  uint32_t seed = 1;
  for (const int64_t m : {1, 2, 7, 8, 9, 31, 32}) check({.rows = 64, .cols = 256, .m = m}, seed++);
  for (const int64_t m : {33, 40, 63, 64}) check({.rows = 200, .cols = 512, .m = m}, seed++);
}

TEST_F(GemmKqTest, TwoTokenTiles) {
  check({.rows = 256, .cols = 1024, .m = 65}, 11);
  check({.rows = 130, .cols = 768, .m = 128}, 12);
}

// 32-token tiles, one or two CTAs per SM (the two-CTA kernel has its own ring and row stride).
TEST_F(GemmKqTest, ThirtyTwoTokenTiles) {
  uint32_t seed = 70;
  for (const int cps : {1, 2}) {
    const kc::GemmKqTuning t{.max_tile_tokens = 32, .ctas_per_sm = cps};
    for (const int64_t m : {2, 9, 32, 33, 64, 100}) {
      check({.rows = 200, .cols = 768, .m = m, .tuning = t}, seed++);
    }
    for (const int splits : {1, 3}) {
      check({.rows = 320, .cols = 2048, .m = 64, .ldy = 333, .splits = splits, .tuning = t},
            seed++);
    }
    check({.rows = 14336, .cols = 4096, .m = 64, .tuning = t}, seed++);  // gate / up
  }
}

// Tiles of 33-48 tokens (one tile of a batch of 33-48, two of 65-96) run as 48-token MMAs.
TEST_F(GemmKqTest, FortyEightTokenTiles) {
  uint32_t seed = 90;
  for (const int64_t m : {33, 41, 48, 72, 96}) check({.rows = 200, .cols = 768, .m = m}, seed++);
  for (const int splits : {1, 3}) {
    check({.rows = 320, .cols = 2048, .m = 40, .ldy = 333, .splits = splits}, seed++);
  }
  check({.rows = 4096, .cols = 4096, .m = 48}, seed++);  // q / o
}

// The plan keeps two CTAs per SM to 32-token tiles, and both kernels add in the same order.
TEST_F(GemmKqTest, TwoCtasPerSmBitwiseAsOne) {
  kc::GemmKqGroupParams g;
  g.n = 1;
  g.m = 64;
  g.outs[0].w = {.type = TensorType::kQ4_K, .rows = 512, .cols = 2048};
  EXPECT_EQ(kc::gemm_kq_plan(g, {.max_tile_tokens = 64, .ctas_per_sm = 2}).ctas_per_sm, 1);
  EXPECT_EQ(kc::gemm_kq_plan(g, {.max_tile_tokens = 32, .ctas_per_sm = 2}).ctas_per_sm, 2);
  EXPECT_THROW(kc::gemm_kq_plan(g, {.max_tile_tokens = 48, .ctas_per_sm = 1}), Error);
  std::vector<float> one;
  for (const int cps : {1, 2}) {
    check({.rows = 512, .cols = 2048, .m = 57, .splits = 2,
           .tuning = {.max_tile_tokens = 32, .ctas_per_sm = cps}},
          80);
    if (cps == 1) {
      one = last_;
    } else {
      ASSERT_EQ(one.size(), last_.size());
      EXPECT_EQ(std::memcmp(one.data(), last_.data(), one.size() * 4), 0);
    }
  }
}

TEST_F(GemmKqTest, KSplitsAndStride) {
  for (const int splits : {1, 2, 3, 4, 8}) {
    check({.rows = 384, .cols = 4096, .m = 24, .splits = splits}, 20 + splits);
  }
  check({.rows = 320, .cols = 2048, .m = 64, .ldy = 333, .splits = 4}, 30);
  check({.rows = 320, .cols = 2048, .m = 48, .workspace = false}, 31);
}

// Stream-K: CTAs share all the tiles' stages in even ranges, tiles shared by several CTAs
// added up by the last of them; from a few stages per CTA (tiles over many CTAs, a CTA
// holding parts of two tiles) to several tiles per CTA, token tiles and ragged last tiles.
TEST_F(GemmKqTest, StreamKMatchesTheReference) {
  uint32_t seed = 200;
  for (const int ctas : {1, 3, 7, 13}) {
    check({.rows = 200, .cols = 2048, .m = 64, .ctas = ctas}, seed++);  // 2 tiles x 8 stages
  }
  check({.rows = 200, .cols = 2048, .m = 64, .ctas = 16}, seed++);  // one stage per CTA
  check({.rows = 320, .cols = 1024, .m = 100, .ldy = 333, .ctas = 9}, seed++);  // token tiles
  check({.rows = 320, .cols = 1024, .m = 40, .ctas = 11}, seed++);              // 48-token tiles
  // 32-token tiles (stream-K runs one CTA per SM only).
  check({.rows = 640, .cols = 1024, .m = 24, .ctas = 7,
         .tuning = {.max_tile_tokens = 32, .ctas_per_sm = 1}},
        seed++);
  // The planner's pick for gate/up at batch 64 (224 tiles: one and a bit waves on an H200).
  kc::GemmKqGroupParams g;
  g.n = 2;
  g.m = 64;
  for (int i = 0; i < 2; ++i) {
    g.outs[i].w = {.type = TensorType::kQ4_K, .rows = 14336, .cols = 4096, .q_row_bytes = 16 * 144};
  }
  g.ws = ws_;
  int sms = 0;
  KQ_CUDA_OK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
  const bool waves = 224 > sms && 224 % sms != 0;
  EXPECT_EQ(kc::gemm_kq_plan(g).ctas, waves ? sms : 0);
  EXPECT_EQ(kc::gemm_kq_plan(g, {.stream_k = false}).ctas, 0);
  check({.rows = 14336, .cols = 4096, .m = 64}, seed++);
}

// A stream-K plan gives the same bits run after run: no float atomics, parts added in CTA
// order.
TEST_F(GemmKqTest, StreamKRepeatsBitwise) {
  std::vector<float> first;
  for (int rep = 0; rep < 3; ++rep) {
    check({.rows = 384, .cols = 4096, .m = 64, .ctas = 5}, 300);
    if (rep == 0) {
      first = last_;
    } else {
      ASSERT_EQ(std::memcmp(first.data(), last_.data(), first.size() * 4), 0) << "run " << rep;
    }
  }
}

TEST_F(GemmKqTest, ModelShapes) {
  check({.rows = 1024, .cols = 4096, .m = 64}, 40);   // k / v of Llama-3-8B
  check({.rows = 4096, .cols = 4096, .m = 16}, 41);   // q / o
  check({.rows = 14336, .cols = 4096, .m = 40}, 42);  // gate / up
}

// q, k and v (or gate and up) in one launch, against each matrix alone (bitwise: the same
// plan per tile, the same order of sums).
TEST_F(GemmKqTest, GroupMatchesSingleLaunches) {
  const int64_t cols = 1024, m = 40;
  const int64_t rows[3] = {512, 128, 200};
  std::vector<DeviceBytes> w;
  kc::GemmKqGroupParams g;
  for (int i = 0; i < 3; ++i) {
    const auto gguf = random_gguf_rows(TensorType::kQ4_K, rows[i], cols, 60 + i);
    std::vector<uint8_t> split(kc::split_matrix_bytes(TensorType::kQ4_K, rows[i], cols));
    kc::repack_to_split(TensorType::kQ4_K, gguf.data(), gguf.size() / rows[i], rows[i], cols,
                        split.data());
    w.emplace_back(split.size());
    KQ_CUDA_OK(cudaMemcpy(w.back().as<uint8_t>(), split.data(), split.size(),
                          cudaMemcpyHostToDevice));
    g.outs[i].w = kc::device_matrix(TensorType::kQ4_K, rows[i], cols, w.back().as<uint8_t>());
  }
  g.n = 3;
  std::vector<uint8_t> recs;
  DeviceBytes x = acts(cuda_random_floats(m * cols, 63), m, cols, recs);
  g.x = x.as<uint8_t>();
  g.m = m;
  g.ws = ws_;
  for (const int splits : {1, 2, 3}) {
    SCOPED_TRACE(fmt::format("splits={}", splits));
    std::vector<DeviceBytes> yg, ys;
    for (int i = 0; i < 3; ++i) {
      yg.emplace_back(m * rows[i] * sizeof(float));
      ys.emplace_back(m * rows[i] * sizeof(float));
      g.outs[i].y = yg.back().as<float>();
    }
    kc::gemm_kq_group(g, kc::GemmKqPlan{.k_splits = splits}, stream_);
    for (int i = 0; i < 3; ++i) {
      kc::gemm_kq({.w = g.outs[i].w, .x = g.x, .y = ys[i].as<float>(), .m = m, .ldy = 0, .ws = ws_},
                  kc::GemmKqPlan{.k_splits = splits}, stream_);
    }
    KQ_CUDA_OK(cudaStreamSynchronize(stream_));
    for (int i = 0; i < 3; ++i) {
      std::vector<float> a(m * rows[i]), b(m * rows[i]);
      KQ_CUDA_OK(cudaMemcpy(a.data(), yg[i].as<float>(), a.size() * 4, cudaMemcpyDeviceToHost));
      KQ_CUDA_OK(cudaMemcpy(b.data(), ys[i].as<float>(), b.size() * 4, cudaMemcpyDeviceToHost));
      EXPECT_EQ(std::memcmp(a.data(), b.data(), a.size() * 4), 0) << "matrix " << i;
    }
  }
  // One matrix of another width cannot join.
  g.outs[1].w.cols = 512;
  EXPECT_THROW(kc::gemm_kq_group(g, stream_), Error);
}

TEST_F(GemmKqTest, RepeatsBitwise) {
  const Case c{.rows = 512, .cols = 4096, .m = 64};
  const auto gguf = random_gguf_rows(TensorType::kQ4_K, c.rows, c.cols, 50);
  std::vector<uint8_t> split(kc::split_matrix_bytes(TensorType::kQ4_K, c.rows, c.cols));
  kc::repack_to_split(TensorType::kQ4_K, gguf.data(), gguf.size() / c.rows, c.rows, c.cols,
                      split.data());
  DeviceBytes wd(split.size());
  KQ_CUDA_OK(cudaMemcpy(wd.as<uint8_t>(), split.data(), split.size(), cudaMemcpyHostToDevice));
  std::vector<uint8_t> recs;
  DeviceBytes x = acts(cuda_random_floats(c.m * c.cols, 51), c.m, c.cols, recs);
  DeviceBytes y(c.m * c.rows * sizeof(float));
  std::vector<float> first, again(c.m * c.rows);
  for (int rep = 0; rep < 3; ++rep) {
    kc::gemm_kq({.w = kc::device_matrix(TensorType::kQ4_K, c.rows, c.cols, wd.as<uint8_t>()),
                 .x = x.as<uint8_t>(),
                 .y = y.as<float>(),
                 .m = c.m,
                 .ldy = 0,
                 .ws = ws_},
                stream_);
    KQ_CUDA_OK(cudaStreamSynchronize(stream_));
    KQ_CUDA_OK(cudaMemcpy(again.data(), y.as<float>(), again.size() * 4, cudaMemcpyDeviceToHost));
    if (rep == 0) {
      first = again;
    } else {
      ASSERT_EQ(std::memcmp(first.data(), again.data(), first.size() * 4), 0) << "run " << rep;
    }
  }
}

TEST_F(GemmKqTest, RejectsWhatItCannotRun) {
  const kc::DeviceMatrix q6{.type = TensorType::kQ6_K, .rows = 64, .cols = 256};
  EXPECT_FALSE(kc::gemm_kq_supports(q6));
  const kc::DeviceMatrix odd{.type = TensorType::kQ4_K, .rows = 64, .cols = 200};
  EXPECT_FALSE(kc::gemm_kq_supports(odd));
  // A view 8 bytes into an allocation: the backend then takes another kernel.
  const kc::DeviceMatrix shifted{.type = TensorType::kQ4_K,
                                 .rows = 64,
                                 .cols = 256,
                                 .q = reinterpret_cast<const uint8_t*>(uintptr_t{4096 + 8}),
                                 .q_row_bytes = 144};
  EXPECT_FALSE(kc::gemm_kq_supports(shifted));
  EXPECT_THROW(
      kc::gemm_kq({.w = q6, .x = nullptr, .y = nullptr, .m = 1, .ldy = 0, .ws = {}}, stream_),
      Error);
}

}  // namespace
}  // namespace tpnode::test
