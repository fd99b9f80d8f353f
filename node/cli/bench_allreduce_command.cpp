// tpnode bench-allreduce: latency of the F32 all-reduce between the GPUs of `mpirun -np N`
// ranks, by message size, through the one-shot IPC kernel and through NCCL, each timed as
// back-to-back launches on the stream and as replays of a captured CUDA graph (which takes
// the launch cost away, as a decode step in a graph would). Rank 0 prints the table; each
// figure is the slowest rank's.
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "node/cli/command.h"
#include "node/common/error.h"
#if defined(TPNODE_HAVE_NCCL) && defined(TPNODE_HAVE_MPI)
#include <cuda_runtime.h>

#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/event_timer.h"
#include "node/backend/cuda/cuda_backend.h"
#include "parallel/mpi/mpi_communicator.h"
#include "parallel/nccl/nccl_communicator.h"
#include "parallel/world.h"
#endif

namespace tpnode::cli {
namespace {

struct AllReduceBenchOptions {
  std::vector<size_t> sizes_kib = {4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192};
  int iters = 200;         // timed launches per size and path
  int graph_ops = 20;      // all-reduces in the captured graph
  int graph_replays = 20;  // timed replays
  double gpu_memory_fraction = 0.2;
};

#if defined(TPNODE_HAVE_NCCL) && defined(TPNODE_HAVE_MPI)

struct Timing {
  double stream_us = 0;  // per all-reduce, launched back to back
  double graph_us = 0;   // per all-reduce, replayed from a graph
};

Timing time_path(NcclCommunicator& comm, float* data, size_t n, AllReducePath path,
                 const AllReduceBenchOptions& o, cudaStream_t stream) {
  cuda::EventTimer timer(stream);
  for (int i = 0; i < 10; ++i) comm.all_reduce_sum(data, n, path);
  comm.barrier();
  Timing t;
  timer.start();
  for (int i = 0; i < o.iters; ++i) comm.all_reduce_sum(data, n, path);
  t.stream_us = timer.stop_ms() * 1e3 / o.iters;

  cudaGraph_t graph = nullptr;
  cudaGraphExec_t exec = nullptr;
  TPNODE_CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
  for (int i = 0; i < o.graph_ops; ++i) comm.all_reduce_sum(data, n, path);
  TPNODE_CUDA_CHECK(cudaStreamEndCapture(stream, &graph));
  TPNODE_CUDA_CHECK(cudaGraphInstantiate(&exec, graph, 0));
  TPNODE_CUDA_CHECK(cudaGraphLaunch(exec, stream));  // warm-up
  TPNODE_CUDA_CHECK(cudaStreamSynchronize(stream));
  comm.barrier();
  timer.start();
  for (int r = 0; r < o.graph_replays; ++r) TPNODE_CUDA_CHECK(cudaGraphLaunch(exec, stream));
  t.graph_us = timer.stop_ms() * 1e3 / (o.graph_replays * o.graph_ops);
  cudaGraphExecDestroy(exec);
  cudaGraphDestroy(graph);
  return t;
}

// The slowest rank's figure.
double slowest(Communicator& comm, double v) {
  std::vector<double> all(static_cast<size_t>(comm.size()));
  comm.all_gather(&v, sizeof(v), all.data());
  return *std::max_element(all.begin(), all.end());
}

int run_allreduce_bench(const AllReduceBenchOptions& o) {
  static int argc = 1;
  static char arg0[] = "tpnode";
  static char* argv_storage[] = {arg0, nullptr};
  static char** argv = argv_storage;
  std::unique_ptr<World> world = World::init(argc, argv, WorldOptions{.collective_timeout_s = 30});
  const Topology& topo = world->topology();
  TPNODE_CHECK(topo.size >= 2, "bench-allreduce needs 2 or more ranks: run it under mpirun -np 2");
  TPNODE_CHECK(cuda_device_count() >= topo.local_size,
               "{} ranks on this host but {} GPU(s) visible", topo.local_size, cuda_device_count());
  const bool root = topo.rank == 0;
  if (!root) spdlog::set_level(spdlog::level::warn);
  auto& host = dynamic_cast<mpi::MpiCommunicator&>(world->comm());

  CudaBackendOptions bo;
  bo.device = topo.local_rank;
  bo.gpu_memory_fraction = o.gpu_memory_fraction;
  std::unique_ptr<Backend> backend = make_cuda_backend(bo);
  const size_t max_bytes = *std::max_element(o.sizes_kib.begin(), o.sizes_kib.end()) << 10;
  NcclCommunicatorOptions co;
  co.device = bo.device;
  co.stream = cuda_backend_stream(*backend);
  co.one_shot_capacity_bytes = max_bytes;
  auto comm = std::make_unique<NcclCommunicator>(host, co);
  auto stream = static_cast<cudaStream_t>(co.stream);
  auto* data = static_cast<float*>(backend->alloc(max_bytes));
  TPNODE_CUDA_CHECK(cudaMemsetAsync(data, 0, max_bytes, stream));

  if (root) {
    cudaDeviceProp prop{};
    TPNODE_CUDA_CHECK(cudaGetDeviceProperties(&prop, bo.device));
    std::printf("all-reduce of F32, %d ranks on %s; one-shot %s; microseconds per all-reduce "
                "(slowest rank), stream = %d launches back to back, graph = replays of %d "
                "captured\n",
                topo.size, prop.name, comm->one_shot_available() ? "available" : "unavailable",
                o.iters, o.graph_ops);
    std::printf("%10s %12s %12s %12s %12s %14s\n", "bytes", "oneshot", "oneshot-g", "nccl",
                "nccl-g", "busbw-best GB/s");
  }
  for (size_t kib : o.sizes_kib) {
    const size_t bytes = kib << 10, n = bytes / sizeof(float);
    Timing one{}, nccl{};
    if (comm->one_shot_available()) one = time_path(*comm, data, n, AllReducePath::kOneShot, o, stream);
    nccl = time_path(*comm, data, n, AllReducePath::kNccl, o, stream);
    for (double* v : {&one.stream_us, &one.graph_us, &nccl.stream_us, &nccl.graph_us}) {
      *v = slowest(host, *v);
    }
    double best = nccl.graph_us;
    if (one.graph_us > 0) best = std::min(best, one.graph_us);
    const double busbw = 2.0 * (topo.size - 1) / topo.size * static_cast<double>(bytes) / (best * 1e-6) / 1e9;
    if (root) {
      std::printf("%10zu %12.2f %12.2f %12.2f %12.2f %14.1f\n", bytes, one.stream_us, one.graph_us,
                  nccl.stream_us, nccl.graph_us, busbw);
      std::fflush(stdout);
    }
  }
  comm.reset();
  backend.reset();
  return 0;
}

#else

int run_allreduce_bench(const AllReduceBenchOptions&) {
  TPNODE_THROW(ErrorKind::kUnsupported,
               "bench-allreduce: this tpnode was built without NCCL or MPI (TPNODE_NCCL, TPNODE_MPI)");
}

#endif

const RegisterCommand kRegister{Command{
    "bench-allreduce", "GPU all-reduce latency by size, one-shot vs NCCL (under mpirun -np N)",
    [](CLI::App& sub) -> std::function<int()> {
      auto o = std::make_shared<AllReduceBenchOptions>();
      sub.add_option("--sizes-kib", o->sizes_kib, "message sizes in KiB")->delimiter(',');
      sub.add_option("--iters", o->iters, "timed launches per size and path")->check(CLI::Range(1, 100000));
      sub.add_option("--graph-ops", o->graph_ops, "all-reduces captured in the graph")
          ->check(CLI::Range(1, 10000));
      sub.add_option("--graph-replays", o->graph_replays, "timed graph replays")
          ->check(CLI::Range(1, 10000));
      return [o] { return run_allreduce_bench(*o); };
    }}};

}  // namespace
}  // namespace tpnode::cli
