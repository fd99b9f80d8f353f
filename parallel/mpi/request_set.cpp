#include "parallel/mpi/request_set.h"

#include <algorithm>
#include <climits>
#include <thread>

#include "parallel/mpi/mpi_check.h"

namespace tpnode::mpi {
namespace {

// Larger messages are split; each piece's count must fit an int.
constexpr size_t kMaxPiece = size_t{1} << 30;

}  // namespace

RequestSet::~RequestSet() {
  if (open_ > 0) abandon();
}

void RequestSet::send(MPI_Comm comm, const void* data, size_t bytes, int peer, int tag) {
  const char* p = static_cast<const char*>(data);
  do {
    const size_t piece = std::min(bytes, kMaxPiece);
    MPI_Request r = MPI_REQUEST_NULL;
    TPNODE_MPI_CHECK(MPI_Isend(p, static_cast<int>(piece), MPI_BYTE, peer, tag, comm, &r));
    reqs_.push_back(r);
    ops_.push_back({peer, true});
    ++open_;
    p += piece;
    bytes -= piece;
  } while (bytes > 0);
}

void RequestSet::recv(MPI_Comm comm, void* data, size_t bytes, int peer, int tag) {
  char* p = static_cast<char*>(data);
  do {
    const size_t piece = std::min(bytes, kMaxPiece);
    MPI_Request r = MPI_REQUEST_NULL;
    TPNODE_MPI_CHECK(MPI_Irecv(p, static_cast<int>(piece), MPI_BYTE, peer, tag, comm, &r));
    reqs_.push_back(r);
    ops_.push_back({peer, false});
    ++open_;
    p += piece;
    bytes -= piece;
  } while (bytes > 0);
}

bool RequestSet::test() {
  if (open_ == 0) return true;
  indices_.resize(reqs_.size());
  int n_done = 0;
  TPNODE_MPI_CHECK(MPI_Testsome(static_cast<int>(reqs_.size()), reqs_.data(), &n_done,
                                indices_.data(), MPI_STATUSES_IGNORE));
  // MPI_UNDEFINED: no active request left.
  if (n_done == MPI_UNDEFINED) {
    open_ = 0;
  } else {
    open_ -= static_cast<size_t>(n_done);
  }
  return open_ == 0;
}

std::vector<int> RequestSet::pending_peers() const {
  std::vector<int> peers;
  for (size_t i = 0; i < reqs_.size(); ++i) {
    if (reqs_[i] != MPI_REQUEST_NULL) peers.push_back(ops_[i].peer);
  }
  std::sort(peers.begin(), peers.end());
  peers.erase(std::unique(peers.begin(), peers.end()), peers.end());
  return peers;
}

void RequestSet::abandon() {
  // No checks here: this runs on failure paths and in destructors.
  for (size_t i = 0; i < reqs_.size(); ++i) {
    if (reqs_[i] == MPI_REQUEST_NULL) continue;
    if (ops_[i].is_send) {
      MPI_Request_free(&reqs_[i]);
    } else {
      // A cancelled receive that was never matched completes at once.
      MPI_Cancel(&reqs_[i]);
    }
  }
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(200);
  for (size_t i = 0; i < reqs_.size(); ++i) {
    while (reqs_[i] != MPI_REQUEST_NULL) {
      int flag = 0;
      if (MPI_Test(&reqs_[i], &flag, MPI_STATUS_IGNORE) != MPI_SUCCESS) break;
      if (flag) break;
      if (std::chrono::steady_clock::now() > deadline) {
        MPI_Request_free(&reqs_[i]);
        break;
      }
      std::this_thread::yield();
    }
    reqs_[i] = MPI_REQUEST_NULL;
  }
  open_ = 0;
}

void Backoff::pause() {
  const auto waited = Clock::now() - start_;
  if (waited < std::chrono::microseconds(50)) return;  // spin: the caller polls again
  // Yield (no sleep) for the first 100 ms: a large message through shared memory progresses
  // only inside MPI_Test calls, so sleeping between them stretches its transfer many times.
  if (waited < std::chrono::milliseconds(100)) {
    std::this_thread::yield();
    return;
  }
  std::this_thread::sleep_for(sleep_);
  sleep_ = std::min<std::chrono::microseconds>(sleep_ * 2, std::chrono::milliseconds(1));
}

}  // namespace tpnode::mpi
