#include "kernels/cpu/thread_pool.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

#include <fmt/format.h>

#include "node/common/error.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

namespace tpnode::cpu {
namespace {

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  _mm_pause();
#else
  std::this_thread::yield();
#endif
}

// How long an idle worker (or a waiting caller) spins before it sleeps. Kernels of one
// forward step follow each other within microseconds, so a short spin saves a futex wake-up
// per op; beyond it the thread sleeps and leaves the core to others.
constexpr auto kSpin = std::chrono::microseconds(200);

// Set while a thread runs a chunk: a parallel_for issued from inside one runs inline.
thread_local bool t_in_pool = false;

// Spins on `cond` for up to kSpin; false when it never became true.
template <class Cond>
bool spin_until(Cond cond) {
  const auto deadline = std::chrono::steady_clock::now() + kSpin;
  for (int i = 0;; ++i) {
    if (cond()) return true;
    cpu_relax();
    if ((i & 63) == 63 && std::chrono::steady_clock::now() > deadline) return false;
  }
}

// Sleeping and waking on a condition published through atomics. A thread that gives up
// spinning registers as a sleeper and re-checks the condition under the mutex; the waker
// publishes first, then wakes only when someone registered (seq_cst on both sides, so one
// of them sees the other), so the common no-sleeper case costs no lock and no syscall.
class Parker {
 public:
  template <class Ready>
  void wait(Ready ready) {
    std::unique_lock<std::mutex> lock(mutex_);
    sleepers_.fetch_add(1, std::memory_order_seq_cst);
    cv_.wait(lock, ready);
    sleepers_.fetch_sub(1, std::memory_order_relaxed);
  }
  void wake_all() {
    if (sleepers_.load(std::memory_order_seq_cst) == 0) return;
    { std::lock_guard<std::mutex> lock(mutex_); }
    cv_.notify_all();
  }
  int sleepers() const { return sleepers_.load(std::memory_order_relaxed); }

 private:
  std::mutex mutex_;
  std::condition_variable cv_;
  std::atomic<int> sleepers_{0};
};

}  // namespace

// One job at a time. The caller publishes the job's fields, then bumps `epoch` (release);
// workers that see the new epoch claim chunks through `claim`, one word holding the job's
// epoch (bits 32..63), its chunk count (16..31) and the next chunk index (0..15). A worker
// that wakes late holds a stale copy of that word, so its compare-exchange fails once the
// next job is published, and it never reads a chunk count or fields of a job it did not claim.
struct ThreadPool::Impl {
  static constexpr int64_t kMaxChunks = 0xFFFF;

  int n_threads = 1;
  std::vector<std::thread> workers;
  std::mutex call_mutex;  // serialises parallel_for callers

  std::atomic<uint32_t> epoch{0};
  std::atomic<uint64_t> claim{0};
  std::atomic<int64_t> done{0};
  std::atomic<bool> stop{false};
  Parker work_parker;  // idle workers wait here for a new epoch
  Parker done_parker;  // the caller waits here for the last chunk

  // The current job; written only between jobs, read after a successful claim.
  const std::function<void(int64_t, int64_t)>* fn = nullptr;
  int64_t n = 0;
  int64_t grain = 1;
  std::mutex error_mutex;
  std::exception_ptr error;

  static uint64_t pack(uint32_t job, int64_t chunks, int64_t next) {
    return (static_cast<uint64_t>(job) << 32) | (static_cast<uint64_t>(chunks) << 16) |
           static_cast<uint64_t>(next);
  }

  // Chunk c of `chunks` covers whole grains: boundaries depend on n, grain and chunks only.
  std::pair<int64_t, int64_t> chunk_range(int64_t c, int64_t chunks) const {
    const int64_t grains = (n + grain - 1) / grain;
    const int64_t g0 = grains * c / chunks;
    const int64_t g1 = grains * (c + 1) / chunks;
    return {std::min(n, g0 * grain), std::min(n, g1 * grain)};
  }

  // Claims and runs chunks of job `job` until none is left.
  void run_chunks(uint32_t job) {
    uint64_t cur = claim.load(std::memory_order_acquire);
    for (;;) {
      if (static_cast<uint32_t>(cur >> 32) != job) return;
      const auto chunks = static_cast<int64_t>((cur >> 16) & 0xFFFFu);
      const auto c = static_cast<int64_t>(cur & 0xFFFFu);
      if (c >= chunks) return;
      if (!claim.compare_exchange_weak(cur, cur + 1, std::memory_order_acq_rel,
                                       std::memory_order_acquire)) {
        continue;
      }
      const auto [begin, end] = chunk_range(c, chunks);
      t_in_pool = true;
      try {
        if (begin < end) (*fn)(begin, end);
      } catch (...) {
        std::lock_guard<std::mutex> lock(error_mutex);
        if (!error) error = std::current_exception();
      }
      t_in_pool = false;
      if (done.fetch_add(1, std::memory_order_seq_cst) + 1 == chunks) done_parker.wake_all();
      cur = claim.load(std::memory_order_acquire);
    }
  }

  void worker_loop() {
    // Start from the initial epoch, not the current one: a worker that starts late must
    // still see the jobs (or the stop) published before it ran.
    uint32_t seen = 0;
    for (;;) {
      const auto ready = [&] { return epoch.load(std::memory_order_seq_cst) != seen; };
      if (!spin_until(ready)) work_parker.wait(ready);
      // Take the epoch before looking at `stop`: the destructor sets stop before it bumps the
      // epoch, so a worker that read the bumped epoch also sees stop. Checked the other way
      // round, the destructor could slip in between the two loads; the worker then took the
      // stop epoch for a job, waited for a later epoch that never came, and the join hung.
      seen = epoch.load(std::memory_order_acquire);
      if (stop.load(std::memory_order_acquire)) return;
      run_chunks(seen);
    }
  }
};

ThreadPool::ThreadPool(int n_threads) : impl_(std::make_unique<Impl>()) {
  if (n_threads <= 0) n_threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  impl_->n_threads = n_threads;
  impl_->workers.reserve(static_cast<size_t>(n_threads - 1));
  for (int i = 1; i < n_threads; ++i) impl_->workers.emplace_back([this] { impl_->worker_loop(); });
}

ThreadPool::~ThreadPool() {
  impl_->stop.store(true, std::memory_order_release);
  impl_->epoch.fetch_add(1, std::memory_order_seq_cst);
  impl_->work_parker.wake_all();
  for (auto& t : impl_->workers) t.join();
}

int ThreadPool::size() const { return impl_->n_threads; }

std::string ThreadPool::describe() const {
  const Impl& s = *impl_;
  const uint64_t c = s.claim.load(std::memory_order_seq_cst);
  return fmt::format(
      "threads={} epoch={} claim=(job {}, chunks {}, next {}) done={} workers asleep={} "
      "caller asleep={} stop={}",
      s.n_threads, s.epoch.load(std::memory_order_seq_cst), c >> 32, (c >> 16) & 0xFFFFu,
      c & 0xFFFFu, s.done.load(std::memory_order_seq_cst), s.work_parker.sleepers(),
      s.done_parker.sleepers(), s.stop.load(std::memory_order_seq_cst));
}

void ThreadPool::parallel_for(int64_t n, const std::function<void(int64_t, int64_t)>& fn,
                              int64_t grain) {
  TPNODE_CHECK(n >= 0, "parallel_for: negative range {}", n);
  if (n == 0) return;
  grain = std::max<int64_t>(grain, 1);
  const int64_t grains = (n + grain - 1) / grain;
  // One chunk per thread: with the weights split by rows, each thread then streams one
  // contiguous slice of W. Callers inside a chunk, and tiny ranges, run inline.
  const int64_t n_chunks = std::min<int64_t>(grains, impl_->n_threads);
  if (n_chunks <= 1 || t_in_pool) {
    fn(0, n);
    return;
  }
  TPNODE_CHECK(n_chunks <= Impl::kMaxChunks, "parallel_for: {} chunks", n_chunks);

  Impl& s = *impl_;
  std::lock_guard<std::mutex> lock(s.call_mutex);
  s.fn = &fn;
  s.n = n;
  s.grain = grain;
  s.error = nullptr;
  s.done.store(0, std::memory_order_relaxed);
  const uint32_t job = s.epoch.load(std::memory_order_relaxed) + 1;
  s.claim.store(Impl::pack(job, n_chunks, 0), std::memory_order_release);
  s.epoch.store(job, std::memory_order_seq_cst);
  s.work_parker.wake_all();

  s.run_chunks(job);
  const auto all_done = [&] { return s.done.load(std::memory_order_seq_cst) == n_chunks; };
  if (!spin_until(all_done)) s.done_parker.wait(all_done);
  s.fn = nullptr;
  if (s.error) std::rethrow_exception(s.error);
}

}  // namespace tpnode::cpu
