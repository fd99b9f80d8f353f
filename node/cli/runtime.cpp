#include "node/cli/runtime.h"

#include <spdlog/spdlog.h>

#include <cstdio>
#include <filesystem>
#include <functional>

#include <unistd.h>

#include "node/backend/cpu/cpu_backend.h"
#include "node/common/error.h"
#include "parallel/distributed_executor.h"
#include "parallel/rank_log.h"
#include "parallel/world.h"
#ifdef TPNODE_HAVE_CUDA
#include "node/backend/cuda/cuda_backend.h"
#endif
#if defined(TPNODE_HAVE_NCCL) && defined(TPNODE_HAVE_MPI)
#include "parallel/mpi/mpi_communicator.h"
#include "parallel/nccl/nccl_communicator.h"
#endif

namespace tpnode::cli {

void add_runtime_options(CLI::App& app, RuntimeOptions& o) {
  app.add_option("-m,--model", o.model, "GGUF file or safetensors model folder")->required();
  app.add_option("--backend", o.backend, "auto, cpu or cuda")
      ->check(CLI::IsMember({"auto", "cpu", "cuda"}));
  app.add_option("-t,--threads", o.threads, "CPU backend threads (0 = all cores)");
  app.add_option("--device", o.device, "CUDA device (-1 = the rank's local rank)");
  app.add_option("--gpu-memory-fraction", o.gpu_memory_fraction,
                 "fraction of free GPU memory to use")
      ->check(CLI::Range(0.05, 1.0));
  app.add_option("-c,--ctx", o.engine.max_context,
                 "maximum tokens per sequence (0 = model's, capped at 4096)");
  app.add_option("--kv-tokens", o.engine.kv_tokens,
                 "KV cache capacity in tokens (0 = auto: on a GPU what --gpu-memory-fraction "
                 "leaves after the weights, at most --max-seqs full contexts; on the CPU four "
                 "contexts)");
  app.add_option("--kv-bytes", o.engine.kv_bytes, "KV cache capacity per rank in bytes");
  app.add_option("--kv-block-size", o.engine.kv_block_size, "tokens per KV block")
      ->check(CLI::Range(1, 1024));
  app.add_option("--max-batch-tokens", o.engine.max_batch_tokens, "most tokens per step")
      ->check(CLI::Range(1, 1 << 20));
  app.add_option("--max-seqs", o.engine.max_seqs,
                 "most sequences per step (default: 256 on a GPU, 16 on the CPU)")
      ->check(CLI::Range(1, 4096));
  app.add_option("--collective-timeout", o.collective_timeout_s,
                 "seconds before a silent rank is declared lost");
  app.add_option("--log-dir", o.log_dir, "folder for the logs of ranks other than 0");
  app.add_flag("!--no-progress", o.progress, "no loading progress display");
  app.add_flag("--kv-f16", o.kv_f16,
               "CPU backend: keep the KV cache in F16 (half the memory; default F32, faster)");
  app.add_flag("--exact-matmul", o.exact_matmul,
               "CPU backend: dequantize weights instead of rounding activations to 8 bits "
               "(slower; for exact comparisons)");
  app.add_flag("!--no-gemm-autotune", o.gemm_autotune,
               "CUDA backend: cuBLASLt GEMMs of up to 128 rows (decode batches, short prefill "
               "chunks) take the heuristic's first algorithm, not the fastest one timed at first "
               "use, whose pick (and with it the outputs' last bits) can differ from one start "
               "to the next (~1% slower decode at batches 48-64 on an H200)");
}

Runtime::~Runtime() {
  // The engine and executor use the world's communicator: tear them down first.
  executor.reset();
  engine.reset();
  device_comm.reset();  // uses the backend's stream
  backend.reset();
}

int Runtime::rank() const { return world->topology().rank; }
int Runtime::size() const { return world->topology().size; }

int Runtime::run_worker() { return run_worker_loop(*engine, world->comm()); }

namespace {

bool cuda_usable() {
#ifdef TPNODE_HAVE_CUDA
  return cuda_device_count() > 0;
#else
  return false;
#endif
}

std::unique_ptr<Backend> make_backend(const RuntimeOptions& o, const Topology& topo) {
  std::string kind = o.backend;
  if (kind == "auto") kind = cuda_usable() ? "cuda" : "cpu";
  if (kind == "cuda") {
#ifdef TPNODE_HAVE_CUDA
    TPNODE_CHECK(cuda_usable(), "--backend cuda: no CUDA device is visible");
    CudaBackendOptions co;
    co.device = o.device >= 0 ? o.device : topo.local_rank;
    co.gpu_memory_fraction = o.gpu_memory_fraction;
    co.max_batch_tokens = o.engine.max_batch_tokens;
    if (!o.gemm_autotune) co.gemm_autotune_max_rows = 0;
    return make_cuda_backend(co);
#else
    TPNODE_THROW(ErrorKind::kUnsupported, "--backend cuda: this tpnode was built without CUDA");
#endif
  }
  CpuBackendOptions co;
  co.n_threads = o.threads;
  co.kv_type = o.kv_f16 ? TensorType::kF16 : TensorType::kF32;
  co.exact_matmul = o.exact_matmul;
  return make_cpu_backend(co);
}

// --- GPU tensor parallelism (NCCL) ---------------------------------------------------------
// The engine's collective on the CUDA backend over several ranks: NCCL (and the one-shot
// all-reduce) on the backend's stream, host collectives through the world's MPI communicator.
std::unique_ptr<Collective> make_device_collective(const RuntimeOptions& o, World& world,
                                                   Backend& backend) {
#if defined(TPNODE_HAVE_NCCL) && defined(TPNODE_HAVE_MPI)
  auto* host = dynamic_cast<mpi::MpiCommunicator*>(&world.comm());
  TPNODE_CHECK_KIND(host != nullptr, ErrorKind::kUnsupported,
                    "tensor parallelism on the {} backend needs ranks started by mpirun",
                    backend.name());
  NcclCommunicatorOptions no;
  no.device = o.device >= 0 ? o.device : world.topology().local_rank;
  no.stream = cuda_backend_stream(backend);
  no.timeout_s = o.collective_timeout_s;
  return std::make_unique<NcclCommunicator>(*host, no);
#else
  TPNODE_THROW(ErrorKind::kUnsupported,
               "tensor parallelism over {} ranks needs the NCCL communicator for the {} "
               "backend, which this build lacks; use --backend cpu",
               world.topology().size, backend.name());
#endif
}
// --- end of GPU tensor parallelism -----------------------------------------------------------

// Resident memory of this process in MB (Linux), for the per-rank memory report.
double resident_mb() {
  std::FILE* f = std::fopen("/proc/self/statm", "r");
  if (!f) return 0;
  long pages = 0, resident = 0;
  const int got = std::fscanf(f, "%ld %ld", &pages, &resident);
  std::fclose(f);
  return got == 2 ? static_cast<double>(resident) * static_cast<double>(sysconf(_SC_PAGESIZE)) / 1e6 : 0;
}

// One line that rewrites itself on a terminal; occasional lines otherwise.
class LoadProgress {
 public:
  explicit LoadProgress(bool tty) : tty_(tty) {}
  void operator()(uint64_t done, uint64_t total) {
    const int pct = total ? static_cast<int>(100 * done / total) : 100;
    if (pct == last_ && done != total) return;
    if (!tty_ && pct / 10 == last_ / 10 && done != total) return;
    last_ = pct;
    std::fprintf(stderr, "%sloading weights %3d%% (%.1f / %.1f MB)%s", tty_ ? "\r" : "", pct,
                 static_cast<double>(done) / 1e6, static_cast<double>(total) / 1e6,
                 tty_ && done != total ? "" : "\n");
    std::fflush(stderr);
  }

 private:
  bool tty_;
  int last_ = -1;
};

}  // namespace

std::unique_ptr<Runtime> make_runtime(const RuntimeOptions& o) {
  auto rt = std::make_unique<Runtime>();
  static int argc = 1;
  static char arg0[] = "tpnode";
  static char* argv_storage[] = {arg0, nullptr};
  static char** argv = argv_storage;
  WorldOptions wo;
  wo.collective_timeout_s = o.collective_timeout_s;
  rt->world = World::init(argc, argv, wo);
  const Topology& topo = rt->world->topology();
  RankLogOptions lo;
  lo.dir = o.log_dir;
  setup_rank_logging(topo, lo);
  spdlog::info("rank {}/{} on {} (local rank {})", topo.rank, topo.size, topo.hostname,
               topo.local_rank);

  rt->model = ModelFile::open(o.model);
  rt->tokenizer = Tokenizer::create(rt->model->tokenizer());
  rt->backend = make_backend(o, topo);
  spdlog::info("backend {}; model {} ({} layers, hidden {}, {} heads / {} KV heads)",
               rt->backend->name(), rt->model->hparams().name, rt->model->hparams().n_layer,
               rt->model->hparams().n_embd, rt->model->hparams().n_head,
               rt->model->hparams().n_head_kv);
  if (topo.size > 1 && rt->backend->name() != "cpu") {
    rt->device_comm = make_device_collective(o, *rt->world, *rt->backend);  // GPU TP
  }
  Collective& collective = rt->device_comm ? *rt->device_comm : rt->world->comm();
  rt->weights = std::make_unique<FileWeightSource>(*rt->model);
  EngineOptions eo = o.engine;
  LoadProgress progress(isatty(fileno(stderr)) != 0);
  if (o.progress && topo.rank == 0) eo.progress = std::ref(progress);
  rt->engine = std::make_unique<Engine>(rt->model->hparams(), *rt->weights, *rt->backend,
                                        collective, eo);
  // The shard now lives in backend memory; the mapped file's pages can go.
  rt->model->release_pages();
  spdlog::info("engine ready: {:.1f} MB of weights on this rank, KV cache {} blocks x {} "
               "tokens, resident memory {:.1f} MB",
               static_cast<double>(rt->engine->weight_bytes()) / 1e6, rt->engine->kv_blocks(),
               rt->engine->options().kv_block_size, resident_mb());
  if (topo.size > 1) {
    rt->executor = std::make_unique<DistributedExecutor>(*rt->engine, rt->world->comm());
  } else {
    rt->executor = std::make_unique<LocalExecutor>(*rt->engine);
  }
  return rt;
}

}  // namespace tpnode::cli
