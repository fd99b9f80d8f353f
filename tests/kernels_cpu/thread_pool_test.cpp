#include "kernels/cpu/thread_pool.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <mutex>
#include <set>
#include <stdexcept>
#include <thread>
#include <utility>
#include <vector>

namespace tpnode::cpu {
namespace {

TEST(ThreadPool, CoversRangeExactlyOnce) {
  for (int threads : {1, 2, 3, 4, 7}) {
    ThreadPool pool(threads);
    EXPECT_EQ(pool.size(), threads);
    for (int64_t n : {0, 1, 2, 3, 5, 8, 16, 17, 63, 100, 1000, 12345}) {
      for (int64_t grain : {1, 3, 16, 1000}) {
        std::vector<std::atomic<int>> hits(static_cast<size_t>(n));
        std::mutex mu;
        std::vector<std::pair<int64_t, int64_t>> chunks;
        pool.parallel_for(
            n,
            [&](int64_t b, int64_t e) {
              for (int64_t i = b; i < e; ++i) hits[static_cast<size_t>(i)].fetch_add(1);
              std::lock_guard<std::mutex> lock(mu);
              chunks.emplace_back(b, e);
            },
            grain);
        for (int64_t i = 0; i < n; ++i) {
          ASSERT_EQ(hits[static_cast<size_t>(i)].load(), 1)
              << "threads=" << threads << " n=" << n << " grain=" << grain << " i=" << i;
        }
        EXPECT_LE(static_cast<int64_t>(chunks.size()), threads);
        for (const auto& [b, e] : chunks) {
          EXPECT_LT(b, e);
          EXPECT_EQ(b % grain, 0) << "chunks start on a grain boundary";
          EXPECT_TRUE(e == n || e % grain == 0);
        }
      }
    }
  }
}

TEST(ThreadPool, ChunkBoundariesAreDeterministic) {
  ThreadPool pool(3);
  std::set<std::pair<int64_t, int64_t>> first;
  for (int rep = 0; rep < 50; ++rep) {
    std::mutex mu;
    std::set<std::pair<int64_t, int64_t>> seen;
    pool.parallel_for(1000, [&](int64_t b, int64_t e) {
      std::lock_guard<std::mutex> lock(mu);
      seen.emplace(b, e);
    }, 16);
    if (rep == 0) {
      first = seen;
      EXPECT_EQ(first.size(), 3u);
    }
    EXPECT_EQ(seen, first);
  }
}

TEST(ThreadPool, ManyQuickJobsAndSleepingWorkers) {
  ThreadPool pool(3);
  std::atomic<int64_t> total{0};
  for (int rep = 0; rep < 20000; ++rep) {
    pool.parallel_for(3, [&](int64_t b, int64_t e) { total.fetch_add(e - b); });
    if (rep % 5000 == 0) std::this_thread::sleep_for(std::chrono::milliseconds(5));  // let workers sleep
  }
  EXPECT_EQ(total.load(), 3 * 20000);
}

// Jobs whose chunk counts alternate, with more workers than cores: a worker that wakes late
// must not claim a chunk of the next job with the previous job's count (that ran chunks twice
// and left the caller waiting for a count that had already passed).
TEST(ThreadPool, LateWorkersNeverRunAChunkOfTheNextJob) {
  ThreadPool pool(16);
  std::vector<std::atomic<int>> hits(64);
  for (int job = 0; job < 6000; ++job) {
    const int64_t n = job % 2 ? 64 : 3 + job % 5;
    for (auto& h : hits) h.store(0);
    // Now and then the workers fall asleep between jobs, so that some wake late.
    if (job % 7 == 0) std::this_thread::sleep_for(std::chrono::microseconds(job % 300));
    pool.parallel_for(n, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) hits[static_cast<size_t>(i)].fetch_add(1);
    });
    for (int64_t i = 0; i < 64; ++i) {
      ASSERT_EQ(hits[static_cast<size_t>(i)].load(), i < n ? 1 : 0) << "job " << job << " item " << i;
    }
  }
}

TEST(ThreadPool, RethrowsAndStaysUsable) {
  ThreadPool pool(3);
  EXPECT_THROW(pool.parallel_for(30, [](int64_t b, int64_t) {
    if (b > 0) throw std::runtime_error("chunk failed");
  }), std::runtime_error);
  std::atomic<int64_t> total{0};
  pool.parallel_for(30, [&](int64_t b, int64_t e) { total.fetch_add(e - b); });
  EXPECT_EQ(total.load(), 30);
}

TEST(ThreadPool, NestedCallsRunInline) {
  ThreadPool pool(2);
  std::atomic<int64_t> total{0};
  pool.parallel_for(4, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      pool.parallel_for(10, [&](int64_t b2, int64_t e2) { total.fetch_add(e2 - b2); });
    }
  });
  EXPECT_EQ(total.load(), 40);
}

TEST(ThreadPool, ConcurrentCallersAreSerialised) {
  ThreadPool pool(2);
  std::atomic<int64_t> total{0};
  std::vector<std::thread> callers;
  for (int c = 0; c < 3; ++c) {
    callers.emplace_back([&] {
      for (int rep = 0; rep < 500; ++rep) {
        pool.parallel_for(64, [&](int64_t b, int64_t e) { total.fetch_add(e - b); }, 8);
      }
    });
  }
  for (auto& t : callers) t.join();
  EXPECT_EQ(total.load(), 3 * 500 * 64);
}

}  // namespace
}  // namespace tpnode::cpu
