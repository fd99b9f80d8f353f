// The world communicator's collectives, on every rank of the job (1 rank when started
// without mpirun). Inputs are seeded, so every rank can compute every expected value itself.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <numeric>
#include <string>
#include <vector>

#include "node/common/error.h"
#include "tests/parallel/mpi_fixture.h"

namespace tpnode::test {
namespace {

Communicator& comm() { return world().comm(); }

// FNV-1a over the bytes, to compare buffers across ranks without shipping them.
uint64_t hash_bytes(const void* p, size_t n) {
  uint64_t h = 1469598103934665603ull;
  const auto* b = static_cast<const unsigned char*>(p);
  for (size_t i = 0; i < n; ++i) h = (h ^ b[i]) * 1099511628211ull;
  return h;
}

class AllReduceSizes : public ::testing::TestWithParam<size_t> {};

TEST_P(AllReduceSizes, RankOrderedSumIsBitIdenticalEverywhere) {
  const size_t n = GetParam();
  const int size = comm().size(), rank = comm().rank();
  const uint64_t seed = 1000 + n;
  std::vector<float> data = seeded_floats(seed, rank, n);
  comm().all_reduce_sum(data.data(), n);

  // Independent references from every rank's (regenerated) input.
  std::vector<std::vector<float>> inputs;
  for (int r = 0; r < size; ++r) inputs.push_back(seeded_floats(seed, r, n));
  size_t exact_mismatch = 0, tol_mismatch = 0;
  for (size_t i = 0; i < n; ++i) {
    float ordered = inputs[0][i];
    double exact = inputs[0][i], magnitude = std::fabs(inputs[0][i]);
    for (int r = 1; r < size; ++r) {
      ordered += inputs[r][i];
      exact += static_cast<double>(inputs[r][i]);
      magnitude += std::fabs(static_cast<double>(inputs[r][i]));
    }
    if (std::memcmp(&ordered, &data[i], sizeof(float)) != 0) ++exact_mismatch;
    // Each of the size-1 float additions rounds once.
    const double tol = (size - 1) * magnitude * std::ldexp(1.0, -24) + 1e-30;
    if (std::fabs(static_cast<double>(data[i]) - exact) > tol) ++tol_mismatch;
  }
  EXPECT_EQ(exact_mismatch, 0u) << "differs from the rank-ordered float sum (n " << n << ")";
  EXPECT_EQ(tol_mismatch, 0u) << "differs from the double reference (n " << n << ")";

  // Every rank holds the same bits as rank 0.
  uint64_t h = hash_bytes(data.data(), n * sizeof(float));
  uint64_t root_h = h;
  comm().broadcast(&root_h, sizeof(root_h), 0);
  EXPECT_EQ(h, root_h) << "rank " << rank << " ended with other bits than rank 0";
}

// Sizes below, at and above the rank count, odd ones, and one of several MB.
INSTANTIATE_TEST_SUITE_P(Sizes, AllReduceSizes,
                         ::testing::Values(size_t{0}, size_t{1}, size_t{2}, size_t{3}, size_t{5},
                                           size_t{769}, size_t{4096}, size_t{5125},
                                           (size_t{1} << 20) + 7));

TEST(Communicator, AllReduceIsDeterministicAcrossCalls) {
  const size_t n = 3001;
  std::vector<float> a = seeded_floats(7, comm().rank(), n), b = a;
  comm().all_reduce_sum(a.data(), n);
  comm().all_reduce_sum(b.data(), n);
  EXPECT_EQ(0, std::memcmp(a.data(), b.data(), n * sizeof(float)));
}

TEST(Communicator, BroadcastVariableSizesFromEveryRoot) {
  const int size = comm().size(), rank = comm().rank();
  const std::vector<size_t> sizes = {0, 1, 7, 4096, 4097, (size_t{1} << 20) + 3};
  int round = 0;
  for (size_t bytes : sizes) {
    for (int root = 0; root < size; ++root, ++round) {
      std::vector<unsigned char> expect(bytes);
      for (size_t i = 0; i < bytes; ++i)
        expect[i] = static_cast<unsigned char>(i * 31 + root + round);
      std::vector<unsigned char> buf(bytes, 0xEE);
      if (rank == root) buf = expect;
      comm().broadcast(buf.data(), bytes, root);
      EXPECT_EQ(buf, expect) << bytes << " bytes from root " << root;
    }
  }
}

TEST(Communicator, BroadcastIdleDeliversLikeBroadcast) {
  std::vector<int> v(100);
  if (comm().rank() == 0) std::iota(v.begin(), v.end(), 42);
  comm().broadcast_idle(v.data(), v.size() * sizeof(int), 0);
  for (int i = 0; i < 100; ++i) ASSERT_EQ(v[i], 42 + i);
}

TEST(Communicator, AllGatherPlacesEachRankInOrder) {
  const int size = comm().size(), rank = comm().rank();
  for (size_t each : {size_t{0}, size_t{1}, size_t{13}, size_t{70000}}) {
    std::vector<unsigned char> mine(each);
    for (size_t i = 0; i < each; ++i) mine[i] = static_cast<unsigned char>(rank * 17 + i);
    std::vector<unsigned char> all(each * size, 0xEE);
    comm().all_gather(mine.data(), each, all.data());
    for (int r = 0; r < size; ++r) {
      for (size_t i = 0; i < each; ++i) {
        ASSERT_EQ(all[r * each + i], static_cast<unsigned char>(r * 17 + i))
            << "rank " << r << " byte " << i << " of " << each;
      }
    }
  }
}

TEST(Communicator, GatherHostVariableCountsInRankOrder) {
  const int size = comm().size(), rank = comm().rank();
  // Uneven counts, one rank with none when there are more than two.
  std::vector<size_t> counts(size);
  for (int r = 0; r < size; ++r)
    counts[r] = (size > 2 && r == 1) ? 0 : static_cast<size_t>(3 + 5 * r);
  std::vector<float> mine(counts[rank]);
  for (size_t i = 0; i < mine.size(); ++i) mine[i] = static_cast<float>(rank * 1000 + i);
  const size_t total = std::accumulate(counts.begin(), counts.end(), size_t{0});
  std::vector<float> all(rank == 0 ? total : 0, -1.0f);
  comm().gather_host(mine.data(), mine.size(), rank == 0 ? all.data() : nullptr, counts);
  if (rank == 0) {
    size_t off = 0;
    for (int r = 0; r < size; ++r) {
      for (size_t i = 0; i < counts[r]; ++i) {
        ASSERT_EQ(all[off + i], static_cast<float>(r * 1000 + i)) << "rank " << r << " item " << i;
      }
      off += counts[r];
    }
  }
}

TEST(Communicator, GatherHostRejectsCountsThatDisagree) {
  std::vector<size_t> counts(comm().size(), 4);
  std::vector<float> mine(3);
  std::vector<float> all(4 * comm().size());
  EXPECT_THROW(comm().gather_host(mine.data(), mine.size(), all.data(), counts), Error);
}

TEST(Communicator, BarriersComplete) {
  for (int i = 0; i < 20; ++i) comm().barrier();
  comm().barrier_idle();
  EXPECT_FALSE(comm().failed());
}

TEST(World, TopologyIsConsistent) {
  const Topology& t = world().topology();
  EXPECT_EQ(t.rank, comm().rank());
  EXPECT_EQ(t.size, comm().size());
  EXPECT_GE(t.local_rank, 0);
  EXPECT_LT(t.local_rank, t.local_size);
  EXPECT_LE(t.local_size, t.size);
  EXPECT_FALSE(t.hostname.empty());
  // Local ranks on a host are 0..local_size-1, each once: their sum is known.
  struct Entry {
    int local_rank, local_size;
    char host[64];
  } mine{t.local_rank, t.local_size, {}};
  std::strncpy(mine.host, t.hostname.c_str(), sizeof(mine.host) - 1);
  std::vector<Entry> all(t.size);
  comm().all_gather(&mine, sizeof(Entry), all.data());
  for (int r = 0; r < t.size; ++r) {
    int same_host = 0, local_sum = 0;
    for (int q = 0; q < t.size; ++q) {
      if (std::strcmp(all[q].host, all[r].host) != 0) continue;
      ++same_host;
      local_sum += all[q].local_rank;
    }
    EXPECT_EQ(all[r].local_size, same_host) << "rank " << r;
    EXPECT_EQ(local_sum, same_host * (same_host - 1) / 2) << "rank " << r;
  }
  EXPECT_EQ(world().uses_mpi(), started_by_mpi_launcher());
}

}  // namespace
}  // namespace tpnode::test
