#include "parallel/mpi/peer_monitor.h"

#include <spdlog/spdlog.h>

#include <algorithm>

#include "node/common/error.h"
#include "parallel/mpi/mpi_check.h"
#include "parallel/mpi/request_set.h"
#include "parallel/stop_signal.h"

namespace tpnode::mpi {
namespace {

constexpr int kTagBeat = 1;
constexpr int kTagBye = 2;

int64_t to_ns(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(t.time_since_epoch()).count();
}

}  // namespace

PeerMonitor::PeerMonitor(MPI_Comm parent, std::vector<std::string> hosts,
                         const PeerMonitorOptions& options)
    : options_(options), hosts_(std::move(hosts)) {
  TPNODE_CHECK(
      options.timeout_s > 0 && options.interval_s > 0 && options.interval_s < options.timeout_s,
      "heartbeat interval ({} s) must be positive and below the timeout ({} s)", options.interval_s,
      options.timeout_s);
  TPNODE_MPI_CHECK(MPI_Comm_dup(parent, &comm_));
  TPNODE_MPI_CHECK(MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN));
  TPNODE_MPI_CHECK(MPI_Comm_rank(comm_, &rank_));
  TPNODE_MPI_CHECK(MPI_Comm_size(comm_, &size_));
  TPNODE_CHECK(static_cast<int>(hosts_.size()) == size_, "peer monitor: {} host names for {} ranks",
               hosts_.size(), size_);
  send_reqs_.assign(size_, MPI_REQUEST_NULL);
  recv_reqs_.assign(size_, MPI_REQUEST_NULL);
  beat_in_.assign(size_, 0);
  beat_out_.assign(size_, 0);
  last_seen_ns_ = std::make_unique<std::atomic<int64_t>[]>(size_);
  const auto now = Clock::now();
  for (int p = 0; p < size_; ++p) {
    last_seen_ns_[p].store(to_ns(now));
    if (p == rank_) continue;
    TPNODE_MPI_CHECK(MPI_Irecv(&beat_in_[p], 1, MPI_UINT64_T, p, kTagBeat, comm_, &recv_reqs_[p]));
  }
  next_beat_ = now;
  if (size_ > 1) thread_ = std::thread([this] { loop(); });
}

PeerMonitor::~PeerMonitor() {
  stop_.store(true);
  if (thread_.joinable()) thread_.join();
  close_quietly();
}

std::optional<LostPeer> PeerMonitor::lost() const {
  if (!any_lost()) return std::nullopt;
  std::lock_guard<std::mutex> lock(mutex_);
  return lost_;
}

void PeerMonitor::mute_for_testing() { muted_.store(true); }

double PeerMonitor::silence_s(int peer) const {
  if (peer == rank_ || peer < 0 || peer >= size_) return 0.0;
  const int64_t ns = to_ns(Clock::now()) - last_seen_ns_[peer].load(std::memory_order_relaxed);
  return static_cast<double>(ns) * 1e-9;
}

void PeerMonitor::loop() {
  const auto tick = std::chrono::duration<double>(std::min(options_.interval_s / 4, 0.05));
  while (!stop_.load(std::memory_order_relaxed)) {
    const auto now = Clock::now();
    beat_all(now);
    receive_all(now);
    check_silence(now);
    if (options_.abort_grace_s >= 0) {
      std::string reason;
      bool due = false;
      {
        std::lock_guard<std::mutex> lock(mutex_);
        reason = abort_reason_;
        due = !reason.empty() && now > abort_deadline_;
      }
      // Nothing on this rank ended the process (e.g. rank 0 idle between requests, or a server
      // that keeps answering errors): end the job here rather than leave any rank waiting.
      // After SIGINT/SIGTERM the process is on its way out already.
      if (due && !stop_requested()) {
        // A counted reference: the main thread may be replacing the default logger.
        const auto log = spdlog::default_logger();
        log->error("rank {}: aborting the job after: {}", rank_, reason);
        log->flush();
        MPI_Abort(MPI_COMM_WORLD, 1);
      }
    }
    std::this_thread::sleep_for(tick);
  }
}

void PeerMonitor::beat_all(Clock::time_point now) {
  if (now < next_beat_) return;
  next_beat_ = now + std::chrono::duration_cast<Clock::duration>(
                         std::chrono::duration<double>(options_.interval_s));
  for (int p = 0; p < size_; ++p) {
    if (p == rank_) continue;
    int flag = 1;
    if (send_reqs_[p] != MPI_REQUEST_NULL &&
        MPI_Test(&send_reqs_[p], &flag, MPI_STATUS_IGNORE) != MPI_SUCCESS) {
      declare_lost(p, "heartbeat send failed");
      continue;
    }
    // The previous beat is still on its way (a slow or stopped peer): do not pile up more.
    if (!flag) continue;
    if (muted_.load(std::memory_order_relaxed)) continue;
    ++beat_out_[p];
    if (MPI_Isend(&beat_out_[p], 1, MPI_UINT64_T, p, kTagBeat, comm_, &send_reqs_[p]) !=
        MPI_SUCCESS) {
      declare_lost(p, "heartbeat send failed");
    }
  }
}

void PeerMonitor::receive_all(Clock::time_point now) {
  for (int p = 0; p < size_; ++p) {
    // Several beats may be queued after a long pause of this thread; take them all.
    for (int i = 0; i < 64 && recv_reqs_[p] != MPI_REQUEST_NULL; ++i) {
      int flag = 0;
      if (MPI_Test(&recv_reqs_[p], &flag, MPI_STATUS_IGNORE) != MPI_SUCCESS) {
        declare_lost(p, "heartbeat receive failed");
        break;
      }
      if (!flag) break;
      last_seen_ns_[p].store(to_ns(now), std::memory_order_relaxed);
      if (MPI_Irecv(&beat_in_[p], 1, MPI_UINT64_T, p, kTagBeat, comm_, &recv_reqs_[p]) !=
          MPI_SUCCESS) {
        declare_lost(p, "heartbeat receive failed");
        break;
      }
    }
  }
}

void PeerMonitor::check_silence(Clock::time_point now) {
  if (any_lost()) return;
  for (int p = 0; p < size_; ++p) {
    if (p == rank_) continue;
    const double silent = static_cast<double>(to_ns(now) - last_seen_ns_[p].load()) * 1e-9;
    if (silent > options_.timeout_s) {
      declare_lost(p, fmt::format("no heartbeat for {:.1f} s", silent));
      return;
    }
  }
}

void PeerMonitor::declare_lost(int peer, const std::string& reason) {
  std::lock_guard<std::mutex> lock(mutex_);
  if (lost_) return;
  lost_ = LostPeer{peer, reason};
  const std::string message =
      fmt::format("rank {} ({}) lost: {} (seen from rank {})", peer, hosts_[peer], reason, rank_);
  any_lost_.store(true, std::memory_order_release);
  spdlog::default_logger()->error("{}", message);
  schedule_abort_locked(message, rank_ != 0 && peer != 0);
}

void PeerMonitor::abort_after_grace(const std::string& why, bool defer_to_root) {
  std::lock_guard<std::mutex> lock(mutex_);
  schedule_abort_locked(why, defer_to_root);
}

void PeerMonitor::schedule_abort_locked(const std::string& why, bool defer_to_root) {
  if (!abort_reason_.empty()) return;
  abort_reason_ = why;
  abort_deferred_ = defer_to_root;
  const double wait = options_.abort_grace_s + (defer_to_root ? kRootPrecedence : 0.0);
  abort_deadline_ = Clock::now() + std::chrono::duration_cast<Clock::duration>(
                                       std::chrono::duration<double>(wait));
}

double PeerMonitor::deferred_abort_in_s() const {
  std::lock_guard<std::mutex> lock(mutex_);
  if (!abort_deferred_ || options_.abort_grace_s < 0) return 0.0;
  return std::max(0.0, std::chrono::duration<double>(abort_deadline_ - Clock::now()).count());
}

void PeerMonitor::close_quietly() {
  // Failure paths run this too: nothing here throws.
  for (auto& r : recv_reqs_) {
    if (r != MPI_REQUEST_NULL) MPI_Cancel(&r);
  }
  for (auto& r : recv_reqs_) {
    if (r != MPI_REQUEST_NULL) MPI_Wait(&r, MPI_STATUS_IGNORE);
  }
  if (size_ > 1) {
    // Every beat a peer sent precedes its goodbye on the same ordered channel, so once all
    // goodbyes are in, no beat is in flight towards this rank. Bounded: a lost peer never
    // answers.
    try {
      RequestSet bye;
      for (int p = 0; p < size_; ++p) {
        if (p == rank_) continue;
        bye.send(comm_, nullptr, 0, p, kTagBye);
        bye.recv(comm_, nullptr, 0, p, kTagBye);
      }
      const auto deadline =
          Clock::now() + std::chrono::duration_cast<Clock::duration>(
                             std::chrono::duration<double>(std::min(options_.timeout_s, 2.0)));
      Backoff backoff;
      while (!bye.test() && Clock::now() < deadline) backoff.pause();
      if (!bye.done()) spdlog::debug("peer monitor: not every rank said goodbye");
    } catch (const std::exception& e) {
      spdlog::debug("peer monitor: goodbye failed: {}", e.what());
    }
  }
  for (auto& r : send_reqs_) {
    if (r != MPI_REQUEST_NULL) MPI_Request_free(&r);
  }
  if (comm_ != MPI_COMM_NULL) MPI_Comm_free(&comm_);
}

}  // namespace tpnode::mpi
