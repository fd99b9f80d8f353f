#include "parallel/mpi/mpi_communicator.h"

#include <spdlog/spdlog.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>

#include "node/common/error.h"
#include "parallel/mpi/mpi_check.h"
#include "parallel/mpi/request_set.h"
#include "parallel/stop_signal.h"

namespace tpnode::mpi {
namespace {

// One tag per kind of message. Messages between two ranks on one communicator and tag
// arrive in order, so successive collectives of the same kind cannot be confused.
constexpr int kTagReduceScatter = 10;
constexpr int kTagReduceGather = 11;
constexpr int kTagGatherHost = 12;
constexpr int kTagBroadcast = 13;
constexpr int kTagAllGather = 14;
constexpr int kTagBarrier = 15;
constexpr int kTagClosing = 16;

constexpr int kHostNameBytes = 256;

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

std::string this_host() {
  char name[kHostNameBytes] = {};
  if (gethostname(name, sizeof(name) - 1) != 0) return "unknown-host";
  return name;
}

}  // namespace

MpiCommunicator::MpiCommunicator(MPI_Comm parent, const MpiCommunicatorOptions& options)
    : options_(options) {
  TPNODE_CHECK(options.timeout_s > 0, "collective timeout must be positive (got {} s)",
               options.timeout_s);
  TPNODE_MPI_CHECK(MPI_Comm_dup(parent, &comm_));
  TPNODE_MPI_CHECK(MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN));
  TPNODE_MPI_CHECK(MPI_Comm_rank(comm_, &rank_));
  TPNODE_MPI_CHECK(MPI_Comm_size(comm_, &size_));

  // Start-up exchange, before any peer can have failed: a blocking collective is fine here.
  std::vector<char> names(static_cast<size_t>(size_) * kHostNameBytes, '\0');
  std::string mine = this_host().substr(0, kHostNameBytes - 1);
  std::vector<char> my_name(kHostNameBytes, '\0');
  std::memcpy(my_name.data(), mine.data(), mine.size());
  TPNODE_MPI_CHECK(MPI_Allgather(my_name.data(), kHostNameBytes, MPI_CHAR, names.data(),
                                 kHostNameBytes, MPI_CHAR, comm_));
  for (int r = 0; r < size_; ++r) hosts_.emplace_back(names.data() + r * kHostNameBytes);

  PeerMonitorOptions mo;
  mo.timeout_s = options.timeout_s;
  mo.interval_s = options.heartbeat_interval_s > 0 ? options.heartbeat_interval_s
                                                   : std::min(0.5, options.timeout_s / 10);
  mo.abort_grace_s = options.abort_grace_s;
  monitor_ = std::make_unique<PeerMonitor>(comm_, hosts_, mo);
}

MpiCommunicator::~MpiCommunicator() {
  // The monitor's goodbye also flushes this communicator's in-flight messages (same ordered
  // channels), so freeing it cannot leave messages for a later one that reuses its id.
  monitor_.reset();
  if (comm_ != MPI_COMM_NULL) MPI_Comm_free(&comm_);
}

void MpiCommunicator::check_usable() const {
  // The first failure's story, unchanged: it names the lost rank.
  if (!failure_.empty()) throw Error(ErrorKind::kRuntime, failure_);
}

std::string MpiCommunicator::lost_message(const std::vector<int>& peers,
                                          const std::string& reason) const {
  std::string who;
  for (size_t i = 0; i < peers.size(); ++i) {
    if (i > 0) who += i + 1 == peers.size() ? " and " : ", ";
    who += fmt::format("rank {} ({})", peers[i], hosts_[peers[i]]);
  }
  return fmt::format("{} lost: {} (seen from rank {})", who, reason, rank_);
}

void MpiCommunicator::fail(RequestSet& requests, const std::string& message) {
  const std::vector<int> peers = requests.pending_peers();
  const bool root_blamed = std::find(peers.begin(), peers.end(), 0) != peers.end();
  requests.abandon();
  if (failure_.empty()) failure_ = message;
  monitor_->abort_after_grace(message, rank_ != 0 && !root_blamed);
  spdlog::error("{}", message);
  throw Error(ErrorKind::kRuntime, message);
}

void MpiCommunicator::wait(RequestSet& requests, const char* op, Patience patience) {
  const auto start = Clock::now();
  Backoff backoff;
  while (!requests.test()) {
    if (monitor_->any_lost()) {
      const auto lost = monitor_->lost();
      fail(requests, lost_message({lost->rank}, fmt::format("{}, during {}", lost->reason, op)));
    }
    if (stop_requested()) {
      // A requested stop, not a fault: no error log.
      requests.abandon();
      const std::string message =
          fmt::format("rank {}: {} interrupted by signal {}", rank_, op, stop_signal());
      if (failure_.empty()) failure_ = message;
      throw Error(ErrorKind::kRuntime, message);
    }
    if (patience == Patience::kStep && seconds_since(start) > options_.timeout_s) {
      const std::vector<int> peers = requests.pending_peers();
      const double silent = monitor_->silence_s(peers.front());
      const std::string reason =
          silent > options_.timeout_s / 2
              ? fmt::format("no heartbeat for {:.1f} s, absent from {} for {:.1f} s", silent, op,
                            seconds_since(start))
              : fmt::format("alive (heartbeat {:.1f} s ago) but absent from {} for {:.1f} s",
                            silent, op, seconds_since(start));
      fail(requests, lost_message(peers, reason));
    }
    backoff.pause();
  }
}

void MpiCommunicator::all_reduce_sum(float* data, size_t n) {
  check_usable();
  if (size_ == 1 || n == 0) return;
  // Rank r owns chunk [lo(r), lo(r + 1)).
  const auto lo = [&](int r) { return n * static_cast<size_t>(r) / static_cast<size_t>(size_); };
  const auto slot = [&](int p) { return static_cast<size_t>(p < rank_ ? p : p - 1); };
  const size_t a = lo(rank_), m = lo(rank_ + 1) - a;
  scratch_.resize(static_cast<size_t>(size_ - 1) * m);

  RequestSet scatter;
  for (int p = 0; p < size_; ++p) {
    if (p == rank_) continue;
    if (m > 0)
      scatter.recv(comm_, scratch_.data() + slot(p) * m, m * sizeof(float), p, kTagReduceScatter);
    const size_t len = lo(p + 1) - lo(p);
    if (len > 0) scatter.send(comm_, data + lo(p), len * sizeof(float), p, kTagReduceScatter);
  }
  wait(scatter, "all_reduce_sum", Patience::kStep);

  if (m > 0) {
    const auto contribution = [&](int r) -> const float* {
      return r == rank_ ? data + a : scratch_.data() + slot(r) * m;
    };
    acc_.assign(contribution(0), contribution(0) + m);
    for (int r = 1; r < size_; ++r) {
      const float* c = contribution(r);
      for (size_t i = 0; i < m; ++i) acc_[i] += c[i];
    }
    std::memcpy(data + a, acc_.data(), m * sizeof(float));
  }

  RequestSet gather;
  for (int p = 0; p < size_; ++p) {
    if (p == rank_) continue;
    const size_t len = lo(p + 1) - lo(p);
    if (len > 0) gather.recv(comm_, data + lo(p), len * sizeof(float), p, kTagReduceGather);
    if (m > 0) gather.send(comm_, data + a, m * sizeof(float), p, kTagReduceGather);
  }
  wait(gather, "all_reduce_sum", Patience::kStep);
}

void MpiCommunicator::gather_host(const float* send, size_t n, float* recv,
                                  const std::vector<size_t>& counts) {
  check_usable();
  TPNODE_CHECK(static_cast<int>(counts.size()) == size_, "gather_host: {} counts for {} ranks",
               counts.size(), size_);
  TPNODE_CHECK(counts[rank_] == n, "gather_host: rank {} sends {} floats but counts say {}", rank_,
               n, counts[rank_]);
  RequestSet requests;
  if (rank_ == 0) {
    TPNODE_CHECK(recv != nullptr || n == 0, "gather_host: rank 0 needs a receive buffer");
    size_t off = 0;
    for (int p = 0; p < size_; ++p) {
      const size_t bytes = counts[p] * sizeof(float);
      if (p == 0) {
        if (bytes > 0 && recv != send) std::memmove(recv, send, bytes);
      } else if (bytes > 0) {
        requests.recv(comm_, recv + off, bytes, p, kTagGatherHost);
      }
      off += counts[p];
    }
  } else if (n > 0) {
    requests.send(comm_, send, n * sizeof(float), 0, kTagGatherHost);
  }
  wait(requests, "gather_host", Patience::kStep);
}

void MpiCommunicator::broadcast_impl(void* data, size_t bytes, int root, const char* op,
                                     Patience patience) {
  check_usable();
  TPNODE_CHECK(root >= 0 && root < size_, "{}: root {} out of range for {} ranks", op, root, size_);
  if (size_ == 1) return;
  RequestSet requests;
  if (rank_ == root) {
    for (int p = 0; p < size_; ++p) {
      if (p != root) requests.send(comm_, data, bytes, p, kTagBroadcast);
    }
    // Receivers are waiting for this; the root itself never waits long.
    wait(requests, op, Patience::kStep);
  } else {
    requests.recv(comm_, data, bytes, root, kTagBroadcast);
    wait(requests, op, patience);
  }
}

void MpiCommunicator::broadcast(void* data, size_t bytes, int root) {
  broadcast_impl(data, bytes, root, "broadcast", Patience::kStep);
}

void MpiCommunicator::broadcast_idle(void* data, size_t bytes, int root) {
  broadcast_impl(data, bytes, root, "broadcast_idle", Patience::kIdle);
}

void MpiCommunicator::all_gather(const void* send, size_t bytes_each, void* recv) {
  check_usable();
  char* out = static_cast<char*>(recv);
  if (bytes_each > 0) std::memmove(out + rank_ * bytes_each, send, bytes_each);
  if (size_ == 1) return;
  RequestSet requests;
  for (int p = 0; p < size_; ++p) {
    if (p == rank_) continue;
    requests.recv(comm_, out + p * bytes_each, bytes_each, p, kTagAllGather);
    requests.send(comm_, out + rank_ * bytes_each, bytes_each, p, kTagAllGather);
  }
  wait(requests, "all_gather", Patience::kStep);
}

void MpiCommunicator::barrier_impl(const char* op, Patience patience) {
  check_usable();
  if (size_ == 1) return;
  RequestSet requests;
  for (int p = 0; p < size_; ++p) {
    if (p == rank_) continue;
    requests.send(comm_, nullptr, 0, p, kTagBarrier);
    requests.recv(comm_, nullptr, 0, p, kTagBarrier);
  }
  wait(requests, op, patience);
}

bool MpiCommunicator::closing_barrier(bool bounded) {
  if (!failure_.empty()) return false;
  if (size_ == 1) return true;
  RequestSet requests;
  for (int p = 0; p < size_; ++p) {
    if (p == rank_) continue;
    requests.send(comm_, nullptr, 0, p, kTagClosing);
    requests.recv(comm_, nullptr, 0, p, kTagClosing);
  }
  const auto start = Clock::now();
  Backoff backoff;
  while (!requests.test()) {
    if (monitor_->any_lost() || stop_requested() ||
        (bounded && seconds_since(start) > options_.timeout_s)) {
      requests.abandon();
      return false;
    }
    backoff.pause();
  }
  return true;
}

void MpiCommunicator::barrier() { barrier_impl("barrier", Patience::kStep); }

void MpiCommunicator::barrier_idle() { barrier_impl("barrier_idle", Patience::kIdle); }

void MpiCommunicator::mark_failed(const std::string& why) {
  if (failure_.empty()) failure_ = why;
  monitor_->abort_after_grace(why, /*defer_to_root=*/false);
}

}  // namespace tpnode::mpi
