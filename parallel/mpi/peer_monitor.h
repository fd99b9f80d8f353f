// Heartbeats between every pair of ranks, on a thread of their own and a communicator of
// their own, so that "alive but busy or idle" (beats arrive) is told apart from "gone" (killed,
// stopped, partitioned: beats stop). A peer silent for longer than the timeout is declared
// lost: waits in MpiCommunicator see it and throw; and if the process is still running
// `abort_grace_s` later (e.g. rank 0 idle with no collective to fail), the monitor aborts the
// job itself, so that no rank is ever left waiting forever. Other failures of the group
// (abort_after_grace) end the job the same way.
//
// Rank 0 answers clients, so it should be the one to end the job: a worker that sees another
// worker lost (which rank 0 sees at about the same moment) waits kRootPrecedence longer.
#pragma once

#include <mpi.h>

#include <atomic>
#include <chrono>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

namespace tpnode::mpi {

struct PeerMonitorOptions {
  double timeout_s = 5.0;      // silence that declares a peer lost
  double interval_s = 0.5;     // between beats to each peer
  double abort_grace_s = 1.0;  // < 0: never abort (tests)
};

struct LostPeer {
  int rank = -1;
  std::string reason;  // "no heartbeat for 5.2 s", or the MPI error that cut it off
};

class PeerMonitor {
 public:
  // Collective over `parent` (duplicates it). hosts[r] names rank r in messages.
  PeerMonitor(MPI_Comm parent, std::vector<std::string> hosts, const PeerMonitorOptions& options);
  // Collective (bounded by the timeout, at most 2 s): the ranks agree that no beat is in
  // flight before the communicator is freed, so none can reach a later communicator that
  // reuses its id.
  ~PeerMonitor();
  PeerMonitor(const PeerMonitor&) = delete;
  PeerMonitor& operator=(const PeerMonitor&) = delete;

  bool any_lost() const { return any_lost_.load(std::memory_order_acquire); }
  std::optional<LostPeer> lost() const;
  // Seconds since the last beat from `peer` (0 for this rank).
  double silence_s(int peer) const;
  // The group is broken for another reason (a collective timed out, a rank failed mid-step):
  // abort the job after the grace period (plus kRootPrecedence when `defer_to_root`) unless
  // the process ends first.
  void abort_after_grace(const std::string& why, bool defer_to_root);
  // Seconds until this monitor aborts the job, when it has deferred to rank 0; else 0.
  double deferred_abort_in_s() const;

  static constexpr double kRootPrecedence = 2.0;
  // Stops sending beats, so that peers see this rank as stopped (SIGSTOP) while its own
  // code keeps running. Tests only.
  void mute_for_testing();

 private:
  using Clock = std::chrono::steady_clock;
  void loop();
  void beat_all(Clock::time_point now);
  void receive_all(Clock::time_point now);
  void check_silence(Clock::time_point now);
  void declare_lost(int peer, const std::string& reason);
  void schedule_abort_locked(const std::string& why, bool defer_to_root);
  void close_quietly();

  PeerMonitorOptions options_;
  MPI_Comm comm_ = MPI_COMM_NULL;
  int rank_ = 0, size_ = 1;
  std::vector<std::string> hosts_;
  std::vector<MPI_Request> send_reqs_, recv_reqs_;
  std::vector<uint64_t> beat_out_;
  std::vector<uint64_t> beat_in_;
  std::unique_ptr<std::atomic<int64_t>[]> last_seen_ns_;
  Clock::time_point next_beat_;

  std::atomic<bool> stop_{false};
  std::atomic<bool> any_lost_{false};
  std::atomic<bool> muted_{false};
  mutable std::mutex mutex_;
  std::optional<LostPeer> lost_;
  std::string abort_reason_;  // set by the first loss or failure
  Clock::time_point abort_deadline_;
  bool abort_deferred_ = false;
  std::thread thread_;
};

}  // namespace tpnode::mpi
