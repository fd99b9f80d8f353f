#include "kernels/cpu/thread_pool.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <future>
#include <memory>
#include <mutex>
#include <random>
#include <set>
#include <stdexcept>
#include <string>
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

// What a stress body shares with its watchdog: a progress counter and the pool in use.
struct Progress {
  std::atomic<int64_t> jobs{0};
  std::atomic<ThreadPool*> pool{nullptr};
  std::atomic<int64_t> n{-1};
};

// Runs `body` on its own thread. When `progress.jobs` stops moving for `stall` (a hang: a
// healthy job takes microseconds, even under TSan or on one core), prints the pool's state
// and aborts, so that a hang fails the test with a message instead of stalling ctest; a
// stuck thread could be neither joined nor detached safely.
void run_with_watchdog(const char* what, Progress& progress, const std::function<void()>& body,
                       std::chrono::seconds stall = std::chrono::seconds(60)) {
  auto done = std::async(std::launch::async, body);
  int64_t last = -1;
  auto last_move = std::chrono::steady_clock::now();
  while (done.wait_for(std::chrono::milliseconds(200)) != std::future_status::ready) {
    const int64_t now_jobs = progress.jobs.load();
    const auto now = std::chrono::steady_clock::now();
    if (now_jobs != last) {
      last = now_jobs;
      last_move = now;
    } else if (now - last_move > stall) {
      ThreadPool* pool = progress.pool.load();
      std::fprintf(stderr, "%s: no job finished for %lld s after %lld jobs (n=%lld); pool: %s\n",
                   what, static_cast<long long>(stall.count()), static_cast<long long>(now_jobs),
                   static_cast<long long>(progress.n.load()),
                   pool ? pool->describe().c_str() : "(none)");
      std::fflush(stderr);
      std::abort();
    }
  }
  done.get();  // rethrows what the body threw
}

// One job's bookkeeping: every index of [0, n) must be covered exactly once, by chunks of
// this job only, and no chunk may run after parallel_for returned.
struct JobCheck {
  int64_t n = 0;
  std::atomic<int64_t> items{0};
  std::atomic<int64_t> index_sum{0};
  std::atomic<int64_t> chunks{0};
  std::atomic<int64_t> foreign{0};  // chunks run outside this job's parallel_for
  std::atomic<bool> open{false};
  std::vector<std::atomic<uint8_t>> hits;

  explicit JobCheck(int64_t n_items) : n(n_items), hits(static_cast<size_t>(std::min<int64_t>(n_items, 2048))) {}

  void chunk(int64_t b, int64_t e) {
    if (!open.load()) foreign.fetch_add(1);
    chunks.fetch_add(1);
    items.fetch_add(e - b);
    int64_t sum = 0;
    for (int64_t i = b; i < e; ++i) {
      sum += i;
      if (i < static_cast<int64_t>(hits.size())) hits[static_cast<size_t>(i)].fetch_add(1);
    }
    index_sum.fetch_add(sum);
  }

  // Empty when the job ran correctly, else what went wrong.
  std::string verify(int threads) const {
    std::string err;
    if (items.load() != n) err += " items " + std::to_string(items.load()) + " of " + std::to_string(n);
    if (index_sum.load() != n * (n - 1) / 2) err += " index sum " + std::to_string(index_sum.load());
    if (chunks.load() > threads) err += " chunks " + std::to_string(chunks.load());
    if (foreign.load() != 0) err += " chunks outside the call " + std::to_string(foreign.load());
    for (size_t i = 0; i < hits.size(); ++i) {
      if (hits[i].load() != 1) {
        err += " index " + std::to_string(i) + " hit " + std::to_string(hits[i].load()) + " times";
        break;
      }
    }
    return err;
  }
};

// Range sizes around the pool size (0, 1, fewer chunks than workers, exactly as many, one
// more) and large ones, with grains that shrink the chunk count.
int64_t pick_n(std::mt19937& rng, int threads) {
  switch (rng() % 8) {
    case 0: return 0;
    case 1: return 1;
    case 2: return 1 + static_cast<int64_t>(rng() % static_cast<unsigned>(threads));
    case 3: return threads;
    case 4: return threads + 1;
    case 5: return 2 + static_cast<int64_t>(rng() % 64);
    default: return static_cast<int64_t>(rng() % 5000);
  }
}

// Pools of 1..31 threads on however few cores the machine has, tens of thousands of jobs of
// every chunk count. Random pauses between jobs (around the spin time) let workers fall
// asleep or wake late, and a slow chunk now and then puts the caller to sleep on the done
// count, so both sleep/wake paths race with new jobs.
TEST(ThreadPool, StressEveryChunkRunsOncePerJob) {
  Progress progress;
  std::string first_error;
  int64_t total_jobs = 0;
  run_with_watchdog("StressEveryChunkRunsOncePerJob", progress, [&] {
    std::mt19937 rng(12345);
    for (int threads = 1; threads <= 31; ++threads) {
      ThreadPool pool(threads);
      progress.pool.store(&pool);
      const int jobs = 800;
      for (int job = 0; job < jobs && first_error.empty(); ++job) {
        const int64_t n = pick_n(rng, threads);
        const int64_t grain = std::array<int64_t, 4>{1, 1, 3, 64}[rng() % 4];
        const unsigned pause = rng() % 32;
        if (pause == 0) {
          std::this_thread::sleep_for(std::chrono::microseconds(rng() % 400));
        } else if (pause == 1) {
          std::this_thread::yield();
        }
        const int64_t slow_chunk = rng() % 48 == 0 ? static_cast<int64_t>(rng() % 4) : -1;
        JobCheck check(n);
        progress.n.store(n);
        check.open.store(true);
        pool.parallel_for(
            n,
            [&](int64_t b, int64_t e) {
              if (slow_chunk >= 0 && b <= slow_chunk && slow_chunk < e) {
                std::this_thread::sleep_for(std::chrono::microseconds(300));
              }
              check.chunk(b, e);
            },
            grain);
        check.open.store(false);
        const std::string err = check.verify(threads);
        if (!err.empty()) {
          first_error = "threads " + std::to_string(threads) + " job " + std::to_string(job) +
                        " n " + std::to_string(n) + " grain " + std::to_string(grain) + ":" + err;
        }
        progress.jobs.fetch_add(1);
        ++total_jobs;
      }
      progress.pool.store(nullptr);
    }
  });
  EXPECT_EQ(first_error, "");
  EXPECT_EQ(total_jobs, 31 * 800);
}

// Pools made and destroyed at once, with zero to two jobs each, so that the destructor often
// runs while workers are still starting or waking for a job the caller finished alone. A
// worker must see the jobs and the stop published before it ran, and must never take the
// destructor's epoch bump for a job (it then waited for one more epoch and the join hung;
// that window is two loads wide, so this exercises the path rather than catching it often).
TEST(ThreadPool, StressShortLivedPools) {
  Progress progress;
  std::atomic<int64_t> total{0};
  int64_t expected = 0;
  run_with_watchdog("StressShortLivedPools", progress, [&] {
    std::mt19937 rng(777);
    for (int rep = 0; rep < 1000; ++rep) {
      ThreadPool pool(1 + static_cast<int>(rng() % 31));
      progress.pool.store(&pool);
      const int jobs = static_cast<int>(rng() % 3);
      for (int j = 0; j < jobs; ++j) {
        const int64_t n = pick_n(rng, pool.size());
        expected += n;
        pool.parallel_for(n, [&](int64_t b, int64_t e) { total.fetch_add(e - b); });
      }
      progress.pool.store(nullptr);
      progress.jobs.fetch_add(1);
    }
  });
  EXPECT_EQ(total.load(), expected);
}

// Several threads calling one pool at once, with chunks that call parallel_for on the same
// pool and on a second one (both run inline from inside a chunk).
TEST(ThreadPool, StressConcurrentAndNestedCallers) {
  Progress progress;
  for (int threads : {2, 5, 16}) {
    ThreadPool pool(threads), other(3);
    std::atomic<int64_t> total{0};
    std::atomic<int64_t> expected{0};
    progress.pool.store(&pool);
    run_with_watchdog("StressConcurrentAndNestedCallers", progress, [&] {
      std::vector<std::thread> callers;
      for (int c = 0; c < 4; ++c) {
        callers.emplace_back([&, c] {
          std::mt19937 rng(100 + static_cast<unsigned>(c));
          for (int rep = 0; rep < 1500; ++rep) {
            const int64_t n = pick_n(rng, threads);
            const bool nested = rng() % 4 == 0;
            expected.fetch_add(nested ? n * 7 : n);
            ThreadPool& target = c == 3 ? other : pool;
            target.parallel_for(n, [&](int64_t b, int64_t e) {
              if (!nested) {
                total.fetch_add(e - b);
                return;
              }
              for (int64_t i = b; i < e; ++i) {
                pool.parallel_for(3, [&](int64_t b2, int64_t e2) { total.fetch_add(e2 - b2); });
                other.parallel_for(4, [&](int64_t b2, int64_t e2) { total.fetch_add(e2 - b2); });
              }
            });
            progress.jobs.fetch_add(1);
          }
        });
      }
      for (auto& t : callers) t.join();
    });
    EXPECT_EQ(total.load(), expected.load()) << threads << " threads";
  }
  progress.pool.store(nullptr);
}

}  // namespace
}  // namespace tpnode::cpu
