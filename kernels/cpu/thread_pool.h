// A fixed pool of worker threads for the CPU kernels. parallel_for splits [0, n) into
// contiguous chunks, runs them on the pool (the caller's thread included) and returns when
// all are done. Chunk boundaries depend only on n and the pool size, so results are
// deterministic for a given thread count.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

namespace tpnode::cpu {

class ThreadPool {
 public:
  explicit ThreadPool(int n_threads);  // n_threads <= 0: hardware concurrency
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int size() const;
  // fn(begin, end) over disjoint chunks covering [0, n); `grain` is the smallest chunk.
  void parallel_for(int64_t n, const std::function<void(int64_t, int64_t)>& fn,
                    int64_t grain = 1);

  // The job protocol's state in one line (epoch, claim word, done count, sleepers), for a
  // watchdog to print when a parallel_for seems stuck.
  std::string describe() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace tpnode::cpu
