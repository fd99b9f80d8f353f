// What every model-running command needs, built once from typed options: the rank's world
// (MPI under mpirun, a single rank otherwise), the model file, tokenizer, backend, engine and
// the executor that drives all ranks.
#pragma once

#include <CLI/CLI.hpp>

#include <memory>
#include <string>

#include "node/engine/backend.h"
#include "node/engine/engine.h"
#include "node/engine/step_executor.h"
#include "node/engine/weight_source.h"
#include "node/model/model_file.h"
#include "node/model/tokenizer.h"

namespace tpnode {
class World;
}

namespace tpnode::cli {

struct RuntimeOptions {
  std::string model;
  std::string backend = "auto";      // auto | cpu | cuda
  int threads = 0;                   // CPU backend threads; 0 = all cores
  int device = -1;                   // CUDA device; -1 = the rank's local rank
  double gpu_memory_fraction = 0.9;  // of the device's free memory at start-up
  double collective_timeout_s = 5.0;  // a stopped rank then ends the job within ~7 s
  std::string log_dir = "logs";      // per-rank logs of ranks other than 0
  bool progress = true;              // loading progress on rank 0's stderr
  bool kv_f16 = false;               // CPU backend: F16 KV cache (half the memory, slower)
  bool exact_matmul = false;         // CPU backend: F32 activations for quantized weights
  // CUDA backend: cuBLASLt's algorithm per GEMM shape is the heuristic's first rather than the
  // fastest of its first candidates timed at first use, whose pick can change from one start
  // to the next (and with it the outputs' last bits).
  bool gemm_autotune = true;
  EngineOptions engine;
};

// Adds -m/--model, --backend, --threads, --ctx, --kv-tokens, --max-batch-tokens, ... to app.
void add_runtime_options(CLI::App& app, RuntimeOptions& o);

struct Runtime {
  std::unique_ptr<World> world;
  std::unique_ptr<ModelFile> model;
  std::unique_ptr<Tokenizer> tokenizer;
  std::unique_ptr<Backend> backend;
  // The engine's collective when it is not the world's (NCCL for tensor parallelism on GPUs).
  std::unique_ptr<Collective> device_comm;
  std::unique_ptr<WeightSource> weights;
  std::unique_ptr<Engine> engine;
  std::unique_ptr<StepExecutor> executor;

  ~Runtime();
  int rank() const;
  int size() const;
  bool is_root() const { return rank() == 0; }
  // Ranks other than 0: run the plans rank 0 broadcasts until it says stop. Exit code.
  int run_worker();
};

// Throws tpnode::Error on a bad model file, a tp size that cannot split the model, or a
// backend that cannot start. Opens MPI when the process was started by mpirun.
std::unique_ptr<Runtime> make_runtime(const RuntimeOptions& options);

}  // namespace tpnode::cli
