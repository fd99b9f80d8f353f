#include "parallel/nccl/one_shot_group.h"

#include <spdlog/spdlog.h>
#include <unistd.h>

#include <cstring>
#include <vector>

#include "kernels/cuda/cuda_check.h"
#include "node/common/error.h"

namespace tpnode {

namespace {

// What a rank tells the others about its GPU.
struct GpuPlace {
  char host[64] = {};
  char bus_id[32] = {};  // PCI bus id: names the same GPU in every process of the host
};

}  // namespace

bool OneShotGroup::peers_reachable(Communicator& host, int device) {
  const int size = host.size(), rank = host.rank();
  GpuPlace me;
  gethostname(me.host, sizeof(me.host) - 1);
  TPNODE_CUDA_CHECK(cudaDeviceGetPCIBusId(me.bus_id, sizeof(me.bus_id), device));
  std::vector<GpuPlace> all(static_cast<size_t>(size));
  host.all_gather(&me, sizeof(GpuPlace), all.data());

  bool ok = size >= 2 && size <= cuda::kAllReduceMaxRanks;
  for (int r = 0; r < size && ok; ++r) {
    if (r == rank) continue;
    if (std::strncmp(all[r].host, me.host, sizeof(me.host)) != 0) {
      ok = false;
      break;
    }
    int peer = -1;
    if (cudaDeviceGetByPCIBusId(&peer, all[r].bus_id) != cudaSuccess) {
      cudaGetLastError();  // not sticky: clear it so later launch checks do not see it
      spdlog::info("one-shot all-reduce off: rank {}'s GPU {} is not visible here", r,
                   all[r].bus_id);
      ok = false;
      break;
    }
    int can = 0;
    if (peer == device || cudaDeviceCanAccessPeer(&can, device, peer) != cudaSuccess || !can) {
      cudaGetLastError();
      spdlog::info("one-shot all-reduce off: no peer access from GPU {} to rank {}'s GPU {}",
                   device, r, peer);
      ok = false;
    }
  }
  const uint8_t mine = ok ? 1 : 0;
  std::vector<uint8_t> votes(static_cast<size_t>(size));
  host.all_gather(&mine, 1, votes.data());
  for (uint8_t v : votes) ok = ok && v != 0;
  return ok;
}

OneShotGroup::OneShotGroup(Communicator& host, int device, size_t capacity_bytes,
                           double timeout_s)
    : rank_(host.rank()), size_(host.size()), device_(device) {
  TPNODE_CHECK(size_ >= 2 && size_ <= cuda::kAllReduceMaxRanks,
               "one-shot all-reduce: {} ranks outside 2..{}", size_, cuda::kAllReduceMaxRanks);
  TPNODE_CHECK(timeout_s > 0, "one-shot all-reduce: timeout {} s must be positive", timeout_s);
  timeout_ns_ = static_cast<uint64_t>(timeout_s * 1e9);
  layout_.size = size_;
  layout_.capacity = std::max<int64_t>(4, static_cast<int64_t>((capacity_bytes / sizeof(float) + 3) / 4 * 4));

  std::vector<int64_t> capacities(static_cast<size_t>(size_));
  host.all_gather(&layout_.capacity, sizeof(int64_t), capacities.data());
  for (int r = 0; r < size_; ++r) {
    TPNODE_CHECK(capacities[r] == layout_.capacity,
                 "one-shot all-reduce: rank {} has slots of {} floats, rank {} of {}", r,
                 capacities[r], rank_, layout_.capacity);
  }

  TPNODE_CUDA_CHECK(cudaSetDevice(device_));
  try {
    map_buffers(host);
  } catch (...) {
    release();
    throw;
  }
  spdlog::info("one-shot all-reduce: {} ranks, slots of {} KiB, {:.1f} MiB of IPC buffer", size_,
               layout_.capacity * sizeof(float) / 1024, layout_.total_bytes() / 1048576.0);
}

void OneShotGroup::map_buffers(Communicator& host) {
  void* words = nullptr;
  TPNODE_CUDA_CHECK(cudaHostAlloc(&words, 2 * sizeof(int32_t), cudaHostAllocMapped));
  abort_ = static_cast<volatile int32_t*>(words);
  error_ = abort_ + 1;
  *abort_ = 0;
  *error_ = 0;
  void* dev_words = nullptr;
  TPNODE_CUDA_CHECK(cudaHostGetDevicePointer(&dev_words, words, 0));
  abort_dev_ = static_cast<volatile int32_t*>(dev_words);
  error_dev_ = abort_dev_ + 1;

  void* own = nullptr;
  TPNODE_CUDA_CHECK(cudaMalloc(&own, layout_.total_bytes()));
  own_ = static_cast<uint8_t*>(own);
  TPNODE_CUDA_CHECK(cudaMemset(own_, 0, layout_.total_bytes()));
  TPNODE_CUDA_CHECK(cudaDeviceSynchronize());

  cudaIpcMemHandle_t handle{};
  TPNODE_CUDA_CHECK(cudaIpcGetMemHandle(&handle, own_));
  std::vector<cudaIpcMemHandle_t> handles(static_cast<size_t>(size_));
  host.all_gather(&handle, sizeof(handle), handles.data());
  for (int r = 0; r < size_; ++r) {
    if (r == rank_) {
      mapped_[r] = own_;
      continue;
    }
    void* peer = nullptr;
    TPNODE_CUDA_CHECK(cudaIpcOpenMemHandle(&peer, handles[r], cudaIpcMemLazyEnablePeerAccess));
    mapped_[r] = static_cast<uint8_t*>(peer);
  }
  // No rank pushes before every buffer is zeroed and mapped.
  host.barrier();
}

OneShotGroup::~OneShotGroup() { release(); }

void OneShotGroup::release() {
  // Errors are ignored: this runs while unwinding too, and there is no one left to tell.
  for (int r = 0; r < size_; ++r) {
    if (r != rank_ && mapped_[r] != nullptr) cudaIpcCloseMemHandle(mapped_[r]);
  }
  mapped_ = {};
  if (own_ != nullptr) cudaFree(own_);
  own_ = nullptr;
  if (abort_ != nullptr) cudaFreeHost(const_cast<int32_t*>(abort_));
  abort_ = error_ = nullptr;
}

void OneShotGroup::all_reduce(float* data, size_t n, cudaStream_t stream) {
  cuda::one_shot_all_reduce(params(data, n), stream);
}

cuda::OneShotParams OneShotGroup::params(float* data, size_t n) const {
  cuda::OneShotParams p{.data = data,
                        .n = static_cast<int64_t>(n),
                        .rank = rank_,
                        .size = size_,
                        .capacity = layout_.capacity,
                        .buffers = {},
                        .abort = abort_dev_,
                        .error = error_dev_,
                        .timeout_ns = timeout_ns_};
  for (int r = 0; r < size_; ++r) p.buffers[r] = mapped_[r];
  return p;
}

}  // namespace tpnode
