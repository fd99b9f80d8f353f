// CPU matmul throughput: weight bytes streamed per second for decode-shaped GEMVs (m = 1)
// and GFLOP/s for prefill-shaped GEMMs, next to a read-bandwidth roofline measured in the
// same run with the same threads.
//
// "hot": one matrix, reused (cache-resident when it fits). "cold": a ring of copies larger
// than the last-level cache, as a decode step streams every layer's weights from DRAM.
//
// Usage: cpu_matmul_bench [threads=2] [seconds_per_case=0.5]
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <random>
#include <vector>

#include "kernels/cpu/matmul.h"
#include "kernels/cpu/matmul_path.h"
#include "node/model/tensor_type.h"

namespace {

using tpnode::TensorType;
using namespace tpnode::cpu;
using Clock = std::chrono::steady_clock;

constexpr size_t kColdBytes = size_t{256} << 20;  // beyond any L3 this runs on

std::vector<uint8_t> random_matrix(TensorType t, int64_t n, int64_t k, uint64_t seed) {
  const size_t row = tpnode::row_bytes(t, k);
  std::vector<uint8_t> w(row * static_cast<size_t>(n));
  std::mt19937_64 rng(seed);
  for (auto& b : w) b = static_cast<uint8_t>(rng());
  // Sane F16 scales at the start of each 32-block (d, and m for Q4_1).
  const size_t bb = tpnode::type_traits(t).block_bytes;
  for (size_t off = 0; off + bb <= w.size(); off += bb) {
    w[off] = 0x00;
    w[off + 1] = 0x20;  // 2^-7
    if (t == TensorType::kQ4_1) {
      w[off + 2] = 0x00;
      w[off + 3] = 0xA0;
    }
  }
  return w;
}

template <class Fn>
double seconds_per_call(Fn&& fn, double budget) {
  fn();  // warm-up
  int64_t calls = 0;
  const auto t0 = Clock::now();
  double elapsed = 0;
  do {
    fn();
    ++calls;
    elapsed = std::chrono::duration<double>(Clock::now() - t0).count();
  } while (elapsed < budget);
  return elapsed / static_cast<double>(calls);
}

// Read bandwidth of the pool: each thread sums its slice of a large buffer.
double read_bandwidth(ThreadPool& pool, double budget) {
  std::vector<uint64_t> buf(kColdBytes / sizeof(uint64_t), 1);
  std::vector<uint64_t> sums(64 * static_cast<size_t>(pool.size()));
  const double s = seconds_per_call(
      [&] {
        pool.parallel_for(static_cast<int64_t>(buf.size()), [&](int64_t b, int64_t e) {
          uint64_t a0 = 0, a1 = 0, a2 = 0, a3 = 0;
          for (int64_t i = b; i + 4 <= e; i += 4) {
            a0 += buf[i];
            a1 += buf[i + 1];
            a2 += buf[i + 2];
            a3 += buf[i + 3];
          }
          sums[static_cast<size_t>(b % 64)] += a0 + a1 + a2 + a3;
        }, 1 << 16);
      },
      budget);
  return static_cast<double>(kColdBytes) / s / 1e9;
}

struct Case {
  const char* what;
  TensorType type;
  int64_t n, k, m;
};

void run_case(const Case& c, ThreadPool& pool, MatmulPath path, double budget, double roof) {
  const size_t bytes = tpnode::row_bytes(c.type, c.k) * static_cast<size_t>(c.n);
  const int copies = c.m == 1 ? static_cast<int>(std::max<size_t>(1, kColdBytes / bytes)) : 1;
  std::vector<std::vector<uint8_t>> ws;
  for (int i = 0; i < copies; ++i) ws.push_back(random_matrix(c.type, c.n, c.k, 1 + i));
  std::vector<float> x(static_cast<size_t>(c.m * c.k), 0.5f), y(static_cast<size_t>(c.m * c.n));
  MatmulArgs a;
  a.w_type = c.type;
  a.w_row_stride = tpnode::row_bytes(c.type, c.k);
  a.n = c.n;
  a.k = c.k;
  a.x = x.data();
  a.m = c.m;
  a.y = y.data();
  a.w = ws[0].data();
  const double hot = seconds_per_call([&] { matmul(a, pool, path); }, budget);
  int next = 0;
  const double cold = seconds_per_call(
      [&] {
        a.w = ws[static_cast<size_t>(next)].data();
        next = (next + 1) % copies;
        matmul(a, pool, path);
      },
      budget);
  const double flops = 2.0 * static_cast<double>(c.m * c.n * c.k);
  fmt::print("{:<28} {:>5} {:>5}x{:<5} m={:<4} {:>9.1f} us hot {:>6.1f} GB/s {:>7.1f} GFLOP/s | "
             "{:>9.1f} us cold {:>6.1f} GB/s = {:.2f} of roofline\n",
             c.what, tpnode::type_name(c.type), c.n, c.k, c.m, hot * 1e6, bytes / hot / 1e9,
             flops / hot / 1e9, cold * 1e6, bytes / cold / 1e9, bytes / cold / 1e9 / roof);
}

}  // namespace

int main(int argc, char** argv) {
  const int threads = argc > 1 ? std::atoi(argv[1]) : 2;
  const double budget = argc > 2 ? std::atof(argv[2]) : 0.5;
  ThreadPool pool(threads);
  const double roof = read_bandwidth(pool, budget);
  std::vector<int64_t> touched(static_cast<size_t>(threads) * 16);
  const double round_trip = seconds_per_call(
      [&] { pool.parallel_for(threads, [&](int64_t b, int64_t) { ++touched[static_cast<size_t>(b) * 16]; }); },
      budget);
  fmt::print("threads={} isa={} read bandwidth (roofline) {:.1f} GB/s, parallel_for round trip {:.2f} us\n",
             threads, cpu_matmul_isa(), roof, round_trip * 1e6);
  const Case cases[] = {
      {"ffn gate/up (SmolLM2-135M)", TensorType::kQ4_1, 1536, 576, 1},
      {"ffn down", TensorType::kQ4_1, 576, 1536, 1},
      {"attn q/o", TensorType::kQ4_1, 576, 576, 1},
      {"lm head (tied token_embd)", TensorType::kQ8_0, 49152, 576, 1},
      {"ffn gate/up Q4_0", TensorType::kQ4_0, 1536, 576, 1},
      {"ffn gate/up Q4_K", TensorType::kQ4_K, 1536, 768, 1},
      {"ffn gate/up Q6_K", TensorType::kQ6_K, 1536, 768, 1},
      {"ffn gate/up F16", TensorType::kF16, 1536, 576, 1},
      {"prefill gate/up", TensorType::kQ4_1, 1536, 576, 64},
      {"prefill gate/up", TensorType::kQ4_1, 1536, 576, 512},
  };
  for (MatmulPath path : {MatmulPath::kAuto, MatmulPath::kScalar}) {
    fmt::print("-- {} path\n", path == MatmulPath::kAuto ? "auto (AVX2 when present)" : "scalar");
    for (const Case& c : cases) {
      if (path == MatmulPath::kScalar && c.m > 64) continue;
      run_case(c, pool, path, budget, roof);
    }
  }
  return 0;
}
