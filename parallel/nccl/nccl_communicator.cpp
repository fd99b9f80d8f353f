#include "parallel/nccl/nccl_communicator.h"

#include <cuda_runtime.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <thread>

#include "kernels/cuda/cuda_check.h"
#include "node/common/error.h"
#include "parallel/mpi/mpi_communicator.h"
#include "parallel/nccl/nccl_check.h"
#include "parallel/nccl/one_shot_group.h"

namespace tpnode {

namespace {

// NCCL sets up its connections lazily, at the first collective of each algorithm, with
// handshakes between the ranks' hosts and proxy threads. Running all-reduces over the size
// range here (the stream drained after each) keeps that set-up out of the engine's steps.
void connect_nccl(ncclComm_t comm, cudaStream_t stream, size_t max_bytes) {
  if (max_bytes < sizeof(float)) return;
  void* buf = nullptr;
  TPNODE_CUDA_CHECK(cudaMalloc(&buf, max_bytes));
  try {
    TPNODE_CUDA_CHECK(cudaMemsetAsync(buf, 0, max_bytes, stream));
    for (size_t bytes = 1024;; bytes *= 4) {
      const size_t n = std::min(bytes, max_bytes) / sizeof(float);
      TPNODE_NCCL_CHECK(ncclAllReduce(buf, buf, n, ncclFloat32, ncclSum, comm, stream));
      TPNODE_CUDA_CHECK(cudaStreamSynchronize(stream));
      if (bytes >= max_bytes) break;
    }
  } catch (...) {
    cudaFree(buf);
    throw;
  }
  TPNODE_CUDA_CHECK(cudaFree(buf));
}

}  // namespace

struct NcclCommunicator::Impl {
  Impl(mpi::MpiCommunicator& h, const NcclCommunicatorOptions& o)
      : host(h), opt(o), stream(static_cast<cudaStream_t>(o.stream)) {}
  ~Impl() {
    if (nccl_done != nullptr) cudaEventDestroy(nccl_done);
  }

  // Records the first failure, stops one-shot kernels from waiting and aborts NCCL, whose
  // kernels then return. Any thread.
  void fail(const std::string& why) {
    std::lock_guard<std::mutex> lock(mu);
    if (failure.empty()) {
      failure = why;
      spdlog::error("rank {}: GPU collectives failed: {}", host.rank(), why);
    }
    failed.store(true, std::memory_order_release);
    if (one_shot) one_shot->raise_abort();
    if (comm != nullptr) {
      ncclCommAbort(comm);
      comm = nullptr;
    }
  }

  std::string failure_text() {
    std::lock_guard<std::mutex> lock(mu);
    return failure;
  }

  // Polls for what would leave a rank blocked on its stream forever.
  void watch() {
    cudaSetDevice(opt.device);
    const auto interval = std::chrono::duration<double>(opt.watchdog_interval_s);
    std::unique_lock<std::mutex> wait_lock(stop_mu);
    while (!stop_cv.wait_for(wait_lock, interval, [this] { return stop; })) {
      if (failed.load(std::memory_order_acquire)) continue;
      if (host.peer_lost()) {
        peer_lost.store(true, std::memory_order_release);
        fail("a peer rank stopped sending heartbeats");
        continue;
      }
      if (one_shot && one_shot->error_code() == cuda::kOneShotTimedOut) {
        fail(fmt::format("one-shot all-reduce: a peer did not arrive within {} s", opt.timeout_s));
        continue;
      }
      const std::string nccl_error = async_error();
      if (!nccl_error.empty()) fail(nccl_error);
    }
  }

  // NCCL's asynchronous error, or empty while there is none.
  std::string async_error() {
    std::lock_guard<std::mutex> lock(mu);
    if (comm == nullptr) return {};
    ncclResult_t state = ncclSuccess;
    const ncclResult_t rc = ncclCommGetAsyncError(comm, &state);
    if (rc != ncclSuccess) state = rc;
    if (state == ncclSuccess || state == ncclInProgress) return {};
    return fmt::format("NCCL: {} ({})", ncclGetErrorString(state), ncclGetLastError(comm));
  }

  mpi::MpiCommunicator& host;
  NcclCommunicatorOptions opt;
  cudaStream_t stream;
  std::unique_ptr<OneShotGroup> one_shot;
  cuda::OneShotParams plan;  // the last device_reduce_plan

  std::mutex mu;  // comm (against abort while a call enqueues on it) and failure
  ncclComm_t comm = nullptr;
  std::string failure;
  std::atomic<bool> failed{false};
  std::atomic<bool> peer_lost{false};

  cudaEvent_t nccl_done = nullptr;  // recorded after an NCCL all-reduce the host waits for

  std::mutex stop_mu;
  std::condition_variable stop_cv;
  bool stop = false;
  std::thread watchdog;
};

NcclCommunicator::NcclCommunicator(mpi::MpiCommunicator& host,
                                   const NcclCommunicatorOptions& options)
    : impl_(std::make_unique<Impl>(host, options)) {
  Impl& m = *impl_;
  TPNODE_CHECK(options.stream != nullptr, "NCCL communicator: no CUDA stream given");
  TPNODE_CHECK(options.timeout_s > 0 && options.watchdog_interval_s > 0,
               "NCCL communicator: timeout and watchdog interval must be positive");
  TPNODE_CUDA_CHECK(cudaSetDevice(options.device));
  TPNODE_CUDA_CHECK(cudaEventCreateWithFlags(&m.nccl_done, cudaEventDisableTiming));

  // The watchdog does not run yet: a peer lost here is caught by the MPI heartbeats, which
  // end the job (NCCL's set-up cannot be interrupted).
  ncclUniqueId id{};
  if (host.rank() == 0) TPNODE_NCCL_CHECK(ncclGetUniqueId(&id));
  host.broadcast(&id, sizeof(id), 0);
  ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
  config.blocking = 1;
  TPNODE_NCCL_CHECK(ncclCommInitRankConfig(&m.comm, host.size(), id, host.rank(), &config));

  try {
    connect_nccl(m.comm, m.stream, options.nccl_warmup_max_bytes);
    if (options.one_shot_max_bytes > 0 && OneShotGroup::peers_reachable(host, options.device)) {
      const size_t capacity = std::max(options.one_shot_capacity_bytes, options.one_shot_max_bytes);
      m.one_shot = std::make_unique<OneShotGroup>(host, options.device, capacity, options.timeout_s);
    }
  } catch (...) {
    ncclCommAbort(m.comm);
    m.comm = nullptr;
    throw;
  }
  spdlog::info("rank {}: NCCL communicator on GPU {} ({} ranks); one-shot all-reduce {}",
               host.rank(), options.device, host.size(),
               m.one_shot ? fmt::format("up to {} KiB", options.one_shot_max_bytes / 1024)
                          : std::string("off"));
  m.watchdog = std::thread([&m] { m.watch(); });
}

NcclCommunicator::~NcclCommunicator() {
  Impl& m = *impl_;
  {
    std::lock_guard<std::mutex> lock(m.stop_mu);
    m.stop = true;
  }
  m.stop_cv.notify_all();
  if (m.watchdog.joinable()) m.watchdog.join();
  bool healthy = !m.failed.load() && !m.host.failed();
  if (healthy) {
    // Every rank's work is done and every rank is here before NCCL and the IPC buffers go.
    healthy = cudaStreamSynchronize(m.stream) == cudaSuccess;
    try {
      if (healthy) m.host.barrier();
    } catch (const std::exception& e) {
      spdlog::warn("rank {}: closing the NCCL communicator: {}", m.host.rank(), e.what());
      healthy = false;
    }
  }
  if (m.comm != nullptr) {
    if (healthy && ncclCommFinalize(m.comm) == ncclSuccess) {
      ncclCommDestroy(m.comm);
    } else {
      ncclCommAbort(m.comm);
    }
    m.comm = nullptr;
  }
  m.one_shot.reset();
}

int NcclCommunicator::rank() const { return impl_->host.rank(); }
int NcclCommunicator::size() const { return impl_->host.size(); }

void NcclCommunicator::check_usable() {
  Impl& m = *impl_;
  if (!m.failed.load(std::memory_order_acquire) && m.one_shot &&
      m.one_shot->error_code() == cuda::kOneShotTimedOut) {
    m.fail(fmt::format("one-shot all-reduce: a peer did not arrive within {} s", m.opt.timeout_s));
  }
  if (m.host.failed() && !m.failed.load()) m.fail(m.host.failure());
  if (!m.failed.load(std::memory_order_acquire)) return;
  std::string why = m.failure_text();
  if (m.peer_lost.load() && !m.host.failed()) {
    // The MPI communicator names the lost rank and its host: a collective there says it.
    try {
      m.host.barrier();
    } catch (const Error& e) {
      why = e.what();
    }
  }
  why += "; GPU collectives aborted";
  m.host.mark_failed(why);
  TPNODE_THROW(ErrorKind::kRuntime, "{}", why);
}

void NcclCommunicator::all_reduce_sum(float* data, size_t n) {
  all_reduce_sum(data, n, AllReducePath::kAuto);
}

void NcclCommunicator::all_reduce_sum(float* data, size_t n, AllReducePath path) {
  check_usable();
  Impl& m = *impl_;
  if (n == 0) return;
  const bool one_shot =
      path == AllReducePath::kOneShot ||
      (path == AllReducePath::kAuto && m.one_shot && n * sizeof(float) <= m.opt.one_shot_max_bytes);
  if (one_shot) {
    TPNODE_CHECK(m.one_shot != nullptr, "one-shot all-reduce: not available between these GPUs");
    TPNODE_CHECK(n <= m.one_shot->capacity_floats(),
                 "one-shot all-reduce: {} floats exceed its slots of {}", n,
                 m.one_shot->capacity_floats());
    m.one_shot->all_reduce(data, n, m.stream);
    return;
  }
  cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
  TPNODE_CUDA_CHECK(cudaStreamIsCapturing(m.stream, &capture));
  {
    std::lock_guard<std::mutex> lock(m.mu);
    if (m.comm == nullptr) TPNODE_THROW(ErrorKind::kRuntime, "{}; GPU collectives aborted", m.failure);
    TPNODE_NCCL_CHECK(ncclAllReduce(data, data, n, ncclFloat32, ncclSum, m.comm, m.stream));
  }
  if (capture == cudaStreamCaptureStatusNone) wait_for_nccl();
}

void NcclCommunicator::wait_for_nccl() {
  Impl& m = *impl_;
  TPNODE_CUDA_CHECK(cudaEventRecord(m.nccl_done, m.stream));
  for (;;) {
    const cudaError_t state = cudaEventQuery(m.nccl_done);
    if (state == cudaSuccess) return;
    if (state != cudaErrorNotReady) TPNODE_CUDA_CHECK(state);
    // The watchdog aborts NCCL on an error or a lost rank, which ends the kernel; say why.
    if (m.failed.load(std::memory_order_acquire)) check_usable();
    std::this_thread::yield();
  }
}

const void* NcclCommunicator::device_reduce_plan(float* data, size_t n) {
  check_usable();
  Impl& m = *impl_;
  if (m.one_shot == nullptr || n == 0 || n * sizeof(float) > m.opt.one_shot_max_bytes ||
      n * sizeof(float) > cuda::kOneShotLlMaxBytes || n > m.one_shot->capacity_floats()) {
    return nullptr;
  }
  m.plan = m.one_shot->params(data, n);
  return &m.plan;
}

bool NcclCommunicator::all_reduce_capturable(size_t n) const {
  const Impl& m = *impl_;
  return m.one_shot != nullptr && n * sizeof(float) <= m.opt.one_shot_max_bytes;
}

bool NcclCommunicator::one_shot_available() const { return impl_->one_shot != nullptr; }

size_t NcclCommunicator::one_shot_capacity_bytes() const {
  return impl_->one_shot ? impl_->one_shot->capacity_floats() * sizeof(float) : 0;
}

void NcclCommunicator::gather_host(const float* send, size_t n, float* recv,
                                   const std::vector<size_t>& counts) {
  check_usable();
  impl_->host.gather_host(send, n, recv, counts);
}

void NcclCommunicator::broadcast(void* data, size_t bytes, int root) {
  check_usable();
  impl_->host.broadcast(data, bytes, root);
}

void NcclCommunicator::all_gather(const void* send, size_t bytes_each, void* recv) {
  check_usable();
  impl_->host.all_gather(send, bytes_each, recv);
}

void NcclCommunicator::barrier() {
  check_usable();
  impl_->host.barrier();
}

void NcclCommunicator::broadcast_idle(void* data, size_t bytes, int root) {
  check_usable();
  impl_->host.broadcast_idle(data, bytes, root);
}

void NcclCommunicator::barrier_idle() {
  check_usable();
  impl_->host.barrier_idle();
}

void NcclCommunicator::mark_failed(const std::string& why) {
  impl_->fail(why);
  impl_->host.mark_failed(why);
}

bool NcclCommunicator::failed() const {
  return impl_->failed.load(std::memory_order_acquire) || impl_->host.failed();
}

std::string NcclCommunicator::failure() const {
  std::string why = impl_->failure_text();
  return why.empty() ? impl_->host.failure() : why;
}

}  // namespace tpnode
