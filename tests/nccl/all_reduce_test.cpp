// all_reduce_sum on device buffers between the ranks' GPUs, through the one-shot kernel and
// through NCCL: equal to a double-precision sum of the rounded inputs in rank order, with the
// same bits on every rank; odd sizes, unaligned buffers, changing sizes, CUDA graph replay.
#include <cuda_runtime.h>
#include <fmt/format.h>

#include <cmath>
#include <random>

#include "tests/nccl/nccl_fixture.h"

namespace tpnode::test {
namespace {

const char* path_name(AllReducePath p) {
  switch (p) {
    case AllReducePath::kOneShot: return "one-shot";
    case AllReducePath::kNccl: return "NCCL";
    default: return "auto";
  }
}

// Every rank's input for (seed, n), summed in double in rank order.
std::vector<double> reference_sum(uint64_t seed, size_t n, int ranks) {
  std::vector<double> ref(n, 0.0);
  for (int r = 0; r < ranks; ++r) {
    const std::vector<float> in = seeded_floats(seed, r, n);
    for (size_t i = 0; i < n; ++i) ref[i] += static_cast<double>(in[i]);
  }
  return ref;
}

// Elements farther from the reference than float rounding of the sum allows: with two
// ranks one rounding (the result is exactly the rounded double sum), with more one per add.
size_t count_wrong(const std::vector<float>& got, const std::vector<double>& ref, int ranks,
                   std::string* first) {
  size_t wrong = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    const bool ok = ranks == 2 ? got[i] == static_cast<float>(ref[i])
                               : std::fabs(got[i] - ref[i]) <= ranks * 1.2e-7 * ranks;
    if (!ok && wrong++ == 0) {
      *first = fmt::format("[{}] = {:.9g}, reference {:.17g}", i, got[i], ref[i]);
    }
  }
  return wrong;
}

struct Case {
  AllReducePath path;
  size_t n;  // floats
};

class AllReduce : public GpuRanks, public ::testing::WithParamInterface<Case> {};

TEST_P(AllReduce, EqualsDoubleReferenceWithTheSameBitsOnEveryRank) {
  const auto [path, n] = GetParam();
  const int rank = comm().rank(), ranks = comm().size();
  if (path == AllReducePath::kOneShot && !comm().one_shot_available()) {
    GTEST_SKIP() << "no peer access between these GPUs: the one-shot all-reduce is off";
  }
  const uint64_t seed = 1000 + n;
  float* dev = upload(seeded_floats(seed, rank, n));
  comm().all_reduce_sum(dev, n, path);
  const std::vector<float> got = download(dev, n);
  std::string first;
  const size_t wrong = count_wrong(got, reference_sum(seed, n, ranks), ranks, &first);
  EXPECT_EQ(wrong, 0u) << path_name(path) << " n=" << n << ": first wrong " << first;
  EXPECT_TRUE(same_on_all_ranks(bits_hash(got))) << path_name(path) << " n=" << n
                                                 << ": ranks hold different bits";
  // The same input again gives the same bits.
  backend().copy_to_device(dev, seeded_floats(seed, rank, n).data(), n * sizeof(float));
  comm().all_reduce_sum(dev, n, path);
  EXPECT_EQ(bits_hash(download(dev, n)), bits_hash(got)) << path_name(path) << " n=" << n;
}

std::vector<Case> cases() {
  // 1 float .. 8 MB, odd sizes among them (not multiples of 4 floats or of a 2048-float chunk).
  const size_t sizes[] = {1, 3, 1000, 1024, 4097, 65535, 262149, 262144, 1000003, 2097152};
  std::vector<Case> out;
  for (AllReducePath p : {AllReducePath::kOneShot, AllReducePath::kNccl, AllReducePath::kAuto}) {
    for (size_t n : sizes) out.push_back({p, n});
  }
  return out;
}

INSTANTIATE_TEST_SUITE_P(Sizes, AllReduce, ::testing::ValuesIn(cases()),
                         [](const ::testing::TestParamInfo<Case>& info) {
                           std::string p = path_name(info.param.path);
                           if (p == "one-shot") p = "OneShot";
                           return fmt::format("{}_{}", p, info.param.n);
                         });

using OneShot = GpuRanks;

// Sizes, alignments and paths that change from call to call (the same sequence on every
// rank; sizes on both sides of the one-shot's LL limit, so its two kernels alternate): the
// epoch and two-half logic must keep every call separate.
TEST_F(OneShot, ManyCallsOfChangingSizeAndAlignment) {
  if (!comm().one_shot_available()) GTEST_SKIP() << "one-shot all-reduce is off here";
  const int rank = comm().rank(), ranks = comm().size();
  const size_t max_n = 300000;
  float* base = upload(std::vector<float>(max_n + 4, 0.0f));
  std::mt19937 rng(7);  // same sequence on every rank
  std::uniform_int_distribution<size_t> small(1, 9000), large(1, max_n);
  size_t wrong_calls = 0;
  std::string first;
  for (int call = 0; call < 300; ++call) {
    const size_t n = call % 3 == 0 ? large(rng) : small(rng);
    const size_t shift = rng() % 4;  // 16-byte aligned or not
    const AllReducePath path = call % 7 == 3 ? AllReducePath::kNccl : AllReducePath::kOneShot;
    const uint64_t seed = 50000 + call;
    backend().copy_to_device(base + shift, seeded_floats(seed, rank, n).data(), n * sizeof(float));
    comm().all_reduce_sum(base + shift, n, path);
    // Read back only every few calls: the others run back to back on the stream.
    if (call % 5 != 0) continue;
    const std::vector<float> got = download(base + shift, n);
    std::string what;
    if (count_wrong(got, reference_sum(seed, n, ranks), ranks, &what) != 0 && wrong_calls++ == 0) {
      first = fmt::format("call {} ({} floats, shift {}, {}): {}", call, n, shift, path_name(path), what);
    }
  }
  EXPECT_EQ(wrong_calls, 0u) << first;
}

// Captured once, replayed with new inputs: the epochs live on the device, so replays stay in
// step across ranks.
TEST_F(OneShot, ReplaysInACudaGraph) {
  const int rank = comm().rank(), ranks = comm().size();
  auto stream = static_cast<cudaStream_t>(cuda_backend_stream(backend()));
  const size_t n_small = 4096, n_large = 200000;  // one-shot, then NCCL (auto)
  float* a = upload(std::vector<float>(n_small, 0.0f));
  float* b = upload(std::vector<float>(n_large, 0.0f));
  backend().sync();
  cudaGraph_t graph = nullptr;
  ASSERT_EQ(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal), cudaSuccess);
  comm().all_reduce_sum(a, n_small);
  comm().all_reduce_sum(b, n_large);
  comm().all_reduce_sum(a, n_small);  // twice: sums the sums
  ASSERT_EQ(cudaStreamEndCapture(stream, &graph), cudaSuccess);
  cudaGraphExec_t exec = nullptr;
  ASSERT_EQ(cudaGraphInstantiate(&exec, graph, 0), cudaSuccess);
  for (int replay = 0; replay < 4; ++replay) {
    const uint64_t sa = 70000 + replay, sb = 80000 + replay;
    backend().copy_to_device(a, seeded_floats(sa, rank, n_small).data(), n_small * sizeof(float));
    backend().copy_to_device(b, seeded_floats(sb, rank, n_large).data(), n_large * sizeof(float));
    ASSERT_EQ(cudaGraphLaunch(exec, stream), cudaSuccess);
    const std::vector<float> got_a = download(a, n_small), got_b = download(b, n_large);
    std::vector<double> ref_a = reference_sum(sa, n_small, ranks);
    // The second all-reduce of `a` adds `ranks` copies of the first's (rounded) result.
    for (double& v : ref_a) v = static_cast<double>(static_cast<float>(v)) * ranks;
    std::string what;
    EXPECT_EQ(count_wrong(got_a, ref_a, ranks, &what), 0u) << "replay " << replay << ": " << what;
    EXPECT_EQ(count_wrong(got_b, reference_sum(sb, n_large, ranks), ranks, &what), 0u)
        << "replay " << replay << ": " << what;
    EXPECT_TRUE(same_on_all_ranks(bits_hash(got_a) ^ bits_hash(got_b)));
  }
  cudaGraphExecDestroy(exec);
  cudaGraphDestroy(graph);
}

}  // namespace
}  // namespace tpnode::test
