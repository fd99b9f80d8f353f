#include <fmt/format.h>

#include "tests/nccl/nccl_fixture.h"

namespace tpnode::test {
namespace {

struct Shared {
  std::unique_ptr<Backend> backend;
  std::unique_ptr<NcclCommunicator> comm;
};
Shared* g_shared = nullptr;

}  // namespace

std::string gpu_ranks_unavailable() {
  const Topology& t = world().topology();
  if (t.size < 2) return "needs 2 or more ranks: run under `mpirun -np 2`";
  const int gpus = cuda_device_count();
  if (gpus < t.local_size) {
    return fmt::format("{} ranks on this host but {} GPU(s) visible: needs one GPU per rank",
                       t.local_size, gpus);
  }
  return {};
}

NcclCommunicatorOptions default_comm_options(Backend& backend) {
  NcclCommunicatorOptions o;
  o.device = world().topology().local_rank;
  o.stream = cuda_backend_stream(backend);
  o.one_shot_max_bytes = size_t{512} << 10;
  o.one_shot_capacity_bytes = size_t{8} << 20;  // the tests force the one-shot up to 8 MB
  o.timeout_s = 20;
  return o;
}

void GpuRanks::SetUp() {
  const std::string why = gpu_ranks_unavailable();
  if (!why.empty()) GTEST_SKIP() << why;
  if (g_shared == nullptr) {
    g_shared = new Shared;
    CudaBackendOptions bo;
    bo.device = world().topology().local_rank;
    bo.gpu_memory_fraction = 0.3;
    g_shared->backend = make_cuda_backend(bo);
    g_shared->comm = std::make_unique<NcclCommunicator>(host_comm(),
                                                        default_comm_options(*g_shared->backend));
  }
}

Backend& GpuRanks::backend() { return *g_shared->backend; }
NcclCommunicator& GpuRanks::comm() { return *g_shared->comm; }

float* GpuRanks::upload(const std::vector<float>& host, size_t shift) {
  auto* dev = static_cast<float*>(backend().alloc((host.size() + shift) * sizeof(float)));
  backend().copy_to_device(dev + shift, host.data(), host.size() * sizeof(float));
  return dev + shift;
}

std::vector<float> GpuRanks::download(const float* dev, size_t n) {
  std::vector<float> out(n);
  backend().copy_to_host(out.data(), dev, n * sizeof(float));
  return out;
}

void release_gpu_ranks() {
  if (g_shared == nullptr) return;
  g_shared->comm.reset();
  g_shared->backend.reset();
  delete g_shared;
  g_shared = nullptr;
}

}  // namespace tpnode::test
