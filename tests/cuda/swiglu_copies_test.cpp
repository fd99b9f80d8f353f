// SwiGLU's copies of its output in the layouts the next matmul's kernel reads, bitwise against
// the launches they replace: the 8-bit copy in 256-value groups (quantize_acts, group 256, for
// the K-quant MMA GEMVs), the BF16 copy in gemm_dq's layout (gemm_dq_acts) and gemm_kq's
// records (gemm_kq_acts), padding tokens included.
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <fmt/format.h>

#include <cstdint>
#include <cstring>
#include <vector>

#include "kernels/cuda/elementwise.h"
#include "kernels/cuda/gemm_dq.h"
#include "kernels/cuda/gemm_kq.h"
#include "kernels/cuda/gemv.h"
#include "node/common/error.h"
#include "tests/cuda/cuda_test_support.h"

namespace tpnode::test {
namespace {

namespace kc = ::tpnode::cuda;

#define SW_CUDA_OK(call) ASSERT_EQ((call), cudaSuccess) << #call

class SwigluCopies : public ::testing::Test {
 protected:
  void SetUp() override {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess || n == 0) {
      GTEST_SKIP() << "no CUDA device (cudaGetDeviceCount gave " << n << ")";
    }
    SW_CUDA_OK(cudaStreamCreate(&stream_));
  }
  void TearDown() override {
    if (stream_ != nullptr) cudaStreamDestroy(stream_);
  }

  // gate and up of m rows of k on the device, and out's buffer.
  void inputs(int64_t m, int64_t k, uint32_t seed) {
    gate_ = DeviceBytes(m * k * 4);
    up_ = DeviceBytes(m * k * 4);
    out_ = DeviceBytes(m * k * 4);
    const auto g = cuda_random_floats(m * k, seed, 4.0f), u = cuda_random_floats(m * k, seed + 1);
    SW_CUDA_OK(cudaMemcpy(gate_.as<float>(), g.data(), m * k * 4, cudaMemcpyHostToDevice));
    SW_CUDA_OK(cudaMemcpy(up_.as<float>(), u.data(), m * k * 4, cudaMemcpyHostToDevice));
  }

  template <typename T>
  std::vector<T> host(const DeviceBytes& d, size_t n) {
    std::vector<T> v(n);
    EXPECT_EQ(cudaMemcpy(v.data(), d.as<T>(), n * sizeof(T), cudaMemcpyDeviceToHost), cudaSuccess);
    return v;
  }

  // The first n elements of two device buffers are bitwise the same.
  template <typename T>
  void expect_same(const DeviceBytes& a, const DeviceBytes& b, size_t n) {
    const auto ha = host<T>(a, n), hb = host<T>(b, n);
    EXPECT_EQ(std::memcmp(ha.data(), hb.data(), n * sizeof(T)), 0);
  }

  cudaStream_t stream_ = nullptr;
  DeviceBytes gate_, up_, out_;
};

TEST_F(SwigluCopies, GroupsOf256AsQuantizeActsWritesThem) {
  uint32_t seed = 10;
  for (const int64_t m : {2, 5, 8}) {
    for (const int64_t k : {256, 14336}) {
      SCOPED_TRACE(fmt::format("m={} k={}", m, k));
      inputs(m, k, seed++);
      const int64_t n = m * k;
      DeviceBytes q1(n), d1(n / 32 * 4), s1(n / 32 * 4), q2(n), d2(n / 32 * 4), s2(n / 32 * 4);
      const kc::QuantActs a{q1.as<int8_t>(), d1.as<float>(), s1.as<float>(), 256};
      const kc::QuantActs b{q2.as<int8_t>(), d2.as<float>(), s2.as<float>(), 256};
      kc::swiglu({.gate = gate_.as<float>(), .up = up_.as<float>(), .out = out_.as<float>(), .n = n,
                  .quant = a},
                 stream_);
      kc::quantize_acts({.x = out_.as<float>(), .m = m, .k = k, .out = b}, stream_);
      SW_CUDA_OK(cudaStreamSynchronize(stream_));
      expect_same<int8_t>(q1, q2, n);
      expect_same<float>(d1, d2, n / 32);
      expect_same<float>(s1, s2, n / 32);
    }
  }
}

// Without 8-bit or gemm_dq copies SwiGLU takes four values per thread: bitwise what one per
// thread (the 8-bit copy's path) gives, and its BF16 copy the output rounded to nearest even.
TEST_F(SwigluCopies, FourValuesPerThreadAsOne) {
  const int64_t m = 64, k = 14336, n = m * k;
  inputs(m, k, 70);
  DeviceBytes one(n * 4), bf(n * 2), q(n), d(n / 32 * 4), s(n / 32 * 4);
  kc::swiglu({.gate = gate_.as<float>(),
              .up = up_.as<float>(),
              .out = out_.as<float>(),
              .n = n,
              .quant = {},
              .out_bf16 = bf.as<__nv_bfloat16>()},
             stream_);
  kc::swiglu({.gate = gate_.as<float>(),
              .up = up_.as<float>(),
              .out = one.as<float>(),
              .n = n,
              .quant = {q.as<int8_t>(), d.as<float>(), s.as<float>(), 32}},
             stream_);
  SW_CUDA_OK(cudaStreamSynchronize(stream_));
  const auto four = host<uint32_t>(out_, n), each = host<uint32_t>(one, n);
  EXPECT_EQ(std::memcmp(four.data(), each.data(), n * 4), 0);
  const auto b = host<uint16_t>(bf, n);
  int64_t bad = 0;
  for (int64_t i = 0; i < n; ++i) {
    const uint32_t x = four[i];
    const auto want = static_cast<uint16_t>((x + 0x7fffu + ((x >> 16) & 1u)) >> 16);
    bad += b[i] != want;
  }
  EXPECT_EQ(bad, 0);
}

TEST_F(SwigluCopies, GemmDqLayoutAsGemmDqActsWritesIt) {
  uint32_t seed = 40;
  for (const int64_t m : {9, 13, 16, 32}) {
    for (const int64_t k : {256, 768}) {
      SCOPED_TRACE(fmt::format("m={} k={}", m, k));
      inputs(m, k, seed++);
      const int64_t elems = kc::gemm_dq_acts_elems(m, k);
      DeviceBytes y1(elems * 2), y2(elems * 2);
      SW_CUDA_OK(cudaMemset(y1.as<uint8_t>(), 0xA5, elems * 2));  // every element is written
      kc::swiglu({.gate = gate_.as<float>(),
                  .up = up_.as<float>(),
                  .out = out_.as<float>(),
                  .n = m * k,
                  .quant = {},
                  .out_bf16 = nullptr,
                  .out_dq = y1.as<__nv_bfloat16>(),
                  .cols = k},
                 stream_);
      kc::gemm_dq_acts({.x = out_.as<float>(), .y = y2.as<__nv_bfloat16>(), .m = m, .cols = k},
                       stream_);
      SW_CUDA_OK(cudaStreamSynchronize(stream_));
      const auto ya = host<uint16_t>(y1, elems), yb = host<uint16_t>(y2, elems);
      EXPECT_EQ(std::memcmp(ya.data(), yb.data(), elems * 2), 0);
    }
  }
}

// With gemm_kq's records SwiGLU runs a warp per (token, stage): the records are gemm_kq_acts'
// bytes of its output, and every other copy it writes beside them (the 8-bit one in groups of
// 256 at GEMV batches, gemm_dq's above them, BF16 for cuBLASLt) and the output itself are
// bitwise what the kernels without records write.
TEST_F(SwigluCopies, GemmKqRecordsAsGemmKqActsWritesThem) {
  uint32_t seed = 90;
  for (const int64_t m : {2, 5, 8, 13, 32, 33, 64}) {
    for (const int64_t k : {256, 768}) {
      SCOPED_TRACE(fmt::format("m={} k={}", m, k));
      inputs(m, k, seed++);
      const int64_t n = m * k, rec_bytes = kc::gemm_kq_acts_bytes(m, k);
      const int64_t dq_elems = kc::gemm_dq_acts_elems(m, k);
      const bool gemv = m <= 8, dq = m > 8 && m <= 32;
      DeviceBytes rec1(rec_bytes), rec2(rec_bytes), ref(n * 4);
      DeviceBytes q1(n), d1(n / 32 * 4), s1(n / 32 * 4), q2(n), d2(n / 32 * 4), s2(n / 32 * 4);
      DeviceBytes y1(dq_elems * 2), y2(dq_elems * 2), bf1(n * 2), bf2(n * 2);
      // Different fills: a byte the kernel leaves unwritten differs from the reference's.
      SW_CUDA_OK(cudaMemset(rec1.as<uint8_t>(), 0xA5, rec_bytes));
      SW_CUDA_OK(cudaMemset(rec2.as<uint8_t>(), 0x5A, rec_bytes));
      SW_CUDA_OK(cudaMemset(y1.as<uint8_t>(), 0xA5, dq_elems * 2));
      kc::SwigluParams p{.gate = gate_.as<float>(), .up = up_.as<float>(), .out = out_.as<float>(),
                         .n = n, .quant = {}};
      p.kq = rec1.as<uint8_t>();
      p.cols = k;
      if (gemv) p.quant = {q1.as<int8_t>(), d1.as<float>(), s1.as<float>(), 256};
      if (dq) p.out_dq = y1.as<__nv_bfloat16>();
      if (!gemv && !dq) p.out_bf16 = bf1.as<__nv_bfloat16>();
      kc::swiglu(p, stream_);
      // The reference: SwiGLU without records (one value per thread, with the group-256 copy
      // where that is asked), then the launches the records replace.
      kc::swiglu({.gate = gate_.as<float>(), .up = up_.as<float>(), .out = ref.as<float>(), .n = n,
                  .quant = {q2.as<int8_t>(), d2.as<float>(), s2.as<float>(), 256},
                  .out_bf16 = nullptr},
                 stream_);
      kc::gemm_kq_acts({.x = ref.as<float>(), .y = rec2.as<uint8_t>(), .m = m, .cols = k}, stream_);
      kc::gemm_dq_acts({.x = ref.as<float>(), .y = y2.as<__nv_bfloat16>(), .m = m, .cols = k},
                       stream_);
      kc::swiglu({.gate = gate_.as<float>(), .up = up_.as<float>(), .out = ref.as<float>(), .n = n,
                  .quant = {}, .out_bf16 = bf2.as<__nv_bfloat16>()},
                 stream_);
      SW_CUDA_OK(cudaStreamSynchronize(stream_));
      expect_same<uint32_t>(out_, ref, n);
      expect_same<uint8_t>(rec1, rec2, rec_bytes);
      if (gemv) {
        expect_same<int8_t>(q1, q2, n);
        expect_same<float>(d1, d2, n / 32);
        expect_same<float>(s1, s2, n / 32);
      }
      if (dq) expect_same<uint16_t>(y1, y2, dq_elems);
      if (!gemv && !dq) expect_same<uint16_t>(bf1, bf2, n);
    }
  }
}

TEST_F(SwigluCopies, RefusesShapesItCannotWrite) {
  inputs(2, 320, 70);
  DeviceBytes q(640), d(80), s(80), y(kc::gemm_dq_acts_elems(2, 320) * 2);
  const kc::QuantActs a{q.as<int8_t>(), d.as<float>(), s.as<float>(), 256};
  kc::SwigluParams p;
  p.gate = gate_.as<float>();
  p.up = up_.as<float>();
  p.out = out_.as<float>();
  p.n = 640;
  p.quant = a;  // 640 values are no whole number of 256-value groups
  EXPECT_THROW(kc::swiglu(p, stream_), Error);
  p.quant = {};
  p.out_dq = y.as<__nv_bfloat16>();
  p.cols = 320;  // rows of gemm_dq's layout are whole 256-value stages
  EXPECT_THROW(kc::swiglu(p, stream_), Error);
  DeviceBytes rec(kc::gemm_kq_acts_bytes(2, 512));
  p.out_dq = nullptr;
  p.kq = rec.as<uint8_t>();  // nor are gemm_kq's records
  EXPECT_THROW(kc::swiglu(p, stream_), Error);
  p.cols = 256;
  p.n = 512;
  p.quant = {q.as<int8_t>(), d.as<float>(), s.as<float>(), 32};  // its copy: groups of 256 only
  EXPECT_THROW(kc::swiglu(p, stream_), Error);
}

}  // namespace
}  // namespace tpnode::test
