// The read probes (kernels/cuda/read_probe.h) read every 16-byte word of their buffer exactly
// once: their XOR and sum of the words' 64-bit halves, reduced on the device in checksum
// mode, equal the host's over a seeded random buffer. A word missed or read twice changes
// the sum. Shapes include rows that end mid-step, a last CTA with fewer rows, and every
// rows-per-warp / warps-per-row / items-per-lane combination.
#include <cuda_runtime.h>
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "kernels/cuda/read_probe.h"
#include "node/common/error.h"
#include "node/backend/cuda/cuda_backend.h"

namespace tpnode::test {
namespace {

namespace kc = ::tpnode::cuda;

struct Fold {
  uint64_t x = 0;
  uint64_t s = 0;
};

Fold host_fold(const std::vector<uint8_t>& buf) {
  Fold f;
  for (size_t i = 0; i < buf.size(); i += 16) {
    uint64_t lo, hi;
    std::memcpy(&lo, buf.data() + i, 8);
    std::memcpy(&hi, buf.data() + i + 8, 8);
    f.x ^= lo ^ hi;
    f.s += lo + hi;
  }
  return f;
}

class ReadProbe : public ::testing::Test {
 protected:
  void SetUp() override {
    if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device (cudaGetDeviceCount gave 0)";
    ASSERT_EQ(cudaMalloc(&sink_, 2 * sizeof(uint64_t)), cudaSuccess);
  }
  void TearDown() override {
    if (data_) cudaFree(data_);
    if (sink_) cudaFree(sink_);
  }

  // A seeded random buffer of `bytes` on the device; returns the host's fold of it.
  Fold put(size_t bytes, uint32_t seed) {
    std::vector<uint8_t> h(bytes);
    std::mt19937_64 rng(seed);
    for (size_t i = 0; i < bytes; i += 8) {
      const uint64_t v = rng();
      std::memcpy(h.data() + i, &v, 8);
    }
    if (data_) cudaFree(data_);
    data_ = nullptr;
    EXPECT_EQ(cudaMalloc(&data_, bytes), cudaSuccess);
    EXPECT_EQ(cudaMemcpy(data_, h.data(), bytes, cudaMemcpyHostToDevice), cudaSuccess);
    bytes_ = bytes;
    return host_fold(h);
  }

  kc::ReadProbeBuffer buffer(bool checksum) {
    EXPECT_EQ(cudaMemset(sink_, 0, 2 * sizeof(uint64_t)), cudaSuccess);
    return {.data = static_cast<const uint8_t*>(data_), .bytes = bytes_, .sink = sink_,
            .checksum = checksum};
  }

  Fold device_fold() {
    uint64_t h[2] = {0, 0};
    EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    EXPECT_EQ(cudaMemcpy(h, sink_, sizeof(h), cudaMemcpyDeviceToHost), cudaSuccess);
    return {h[0], h[1]};
  }

  void expect_fold(const Fold& want, const std::string& what) {
    const Fold got = device_fold();
    EXPECT_EQ(got.x, want.x) << what << ": XOR";
    EXPECT_EQ(got.s, want.s) << what << ": sum";
  }

  void* data_ = nullptr;
  size_t bytes_ = 0;
  uint64_t* sink_ = nullptr;
};

TEST_F(ReadProbe, SweepReadsEveryWordOnce) {
  // Sizes that leave partial grid strides; explicit and default (4 per SM) grids.
  for (size_t bytes : {size_t{16}, size_t{4096 + 48}, (size_t{1} << 20) + 16 * 37}) {
    const Fold want = put(bytes, static_cast<uint32_t>(bytes));
    for (int ctas : {0, 1, 3}) {
      kc::read_sweep(buffer(true), {.ctas = ctas}, nullptr);
      expect_fold(want, fmt::format("read_sweep {} bytes, {} CTAs", bytes, ctas));
    }
  }
}

TEST_F(ReadProbe, RowsReadEveryWordOnce) {
  struct Case {
    int64_t rows, row_bytes;
  };
  // 2304 B: Q4_K rows of 4096 (4.5 steps of a warp); 11760 B: Q6_K rows of 14336 (5.7 steps
  // of a CTA); 16 B: one item; 37 and 13 rows leave the last CTA short.
  const Case cases[] = {{37, 2304}, {13, 11760}, {9, 16}, {64, 512}, {5, 6000 * 16}};
  uint32_t seed = 1;
  for (const Case& c : cases) {
    const Fold want = put(static_cast<size_t>(c.rows * c.row_bytes), seed++);
    // Every geometry the probe has: 1 or 2 rows with 1 or 4 warps per row, 3 or 4 rows with 1.
    for (int r : {1, 2, 3, 4}) {
      for (int w : {1, 4}) {
        if (r >= 3 && w == 4) continue;
        for (int u : {1, 2, 4, 8}) {
          const kc::ReadRowsShape shape{.rows = c.rows, .row_bytes = c.row_bytes,
                                        .rows_per_warp = r, .warps_per_row = w,
                                        .items_per_lane = u};
          const std::string what =
              fmt::format("{} rows of {} B, R={} W={} U={}", c.rows, c.row_bytes, r, w, u);
          kc::read_rows(buffer(true), shape, nullptr);
          expect_fold(want, "read_rows " + what);
          kc::read_rows_interleaved(buffer(true), shape, nullptr);
          expect_fold(want, "read_rows_interleaved " + what);
        }
      }
    }
  }
}

// Without checksum mode the kernels store nothing (the sink keeps its zeros).
TEST_F(ReadProbe, TimingModeWritesNothing) {
  put(size_t{1} << 16, 99);
  kc::read_sweep(buffer(false), {}, nullptr);
  kc::read_rows(buffer(false), {.rows = 64, .row_bytes = 1024}, nullptr);
  kc::read_rows_interleaved(buffer(false), {.rows = 64, .row_bytes = 1024}, nullptr);
  const Fold got = device_fold();
  EXPECT_EQ(got.x, 0u);
  EXPECT_EQ(got.s, 0u);
}

TEST_F(ReadProbe, RejectsBadShapes) {
  put(4096, 3);
  EXPECT_THROW(kc::read_rows(buffer(false), {.rows = 3, .row_bytes = 1024}, nullptr), Error);
  EXPECT_THROW(kc::read_rows(buffer(false), {.rows = 4, .row_bytes = 1024, .items_per_lane = 3},
                             nullptr),
               Error);
  EXPECT_THROW(kc::read_rows(buffer(false), {.rows = 256, .row_bytes = 16, .rows_per_warp = 5},
                             nullptr),
               Error);
  EXPECT_THROW(kc::read_rows(buffer(false),
                             {.rows = 256, .row_bytes = 16, .rows_per_warp = 3, .warps_per_row = 4},
                             nullptr),
               Error);
  EXPECT_THROW(kc::read_rows(buffer(false),
                             {.rows = 256, .row_bytes = 16, .rows_per_warp = 4, .warps_per_row = 4},
                             nullptr),
               Error);
}

}  // namespace
}  // namespace tpnode::test
