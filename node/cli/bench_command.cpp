// tpnode bench: decode and prefill throughput of one rank on a built-in model shape with
// synthetic weights (made on the device) or on a model file, against the rooflines measured
// at start: device copy bandwidth (weights read per decode step) and a BF16 GEMM (prefill).
#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <map>
#include <memory>
#include <optional>
#include <sstream>

#include <unistd.h>

#include "node/engine/single_rank_collective.h"
#include "node/engine/synthetic_mix.h"
#include "node/backend/cpu/cpu_backend.h"
#include "node/cli/command.h"
#include "node/common/error.h"
#include "node/engine/engine.h"
#include "node/engine/weight_source.h"
#include "node/model/model_file.h"
#include "parallel/world.h"
#ifdef TPNODE_HAVE_CUDA
#include "node/backend/cuda/cuda_backend.h"
#endif
#if defined(TPNODE_HAVE_NCCL) && defined(TPNODE_HAVE_MPI)
#include "parallel/mpi/mpi_communicator.h"
#include "parallel/nccl/nccl_communicator.h"
#endif

namespace tpnode::cli {
namespace {

struct BenchOptions {
  std::string shape = "llama3-8b";
  std::string type = "q4_k_m";
  std::string model;                  // -m: a file instead of a shape
  std::string backend = "auto";       // auto | cpu | cuda
  int device = 0;
  double gpu_memory_fraction = 0.92;
  std::vector<int> batches = {1, 8, 32, 64};
  std::vector<int> prefills = {512, 2048};
  int context = 128;                  // tokens in each sequence's KV before decode is timed
  int decode_steps = 32;
  int reps = 3;                       // timed prefill repetitions
  bool bf16_copies = true;            // CUDA: keep BF16 copies of quantized weights for GEMMs
  bool pdl = true;                    // CUDA: programmatic dependent launch between kernels
  bool side_stream = true;            // CUDA: a group's other-type matrices on a second stream
  bool graphs = true;                 // CUDA: replay decode steps from CUDA graphs
  bool device_sampling = false;       // decode steps sample on the device (when it can)
  bool greedy_tokens = false;         // decode steps return argmax tokens, not logits
  // Steps with device draws queue the next step before reading a step's tokens, whose
  // input token the device takes from the draw (Engine::submit with kChainedToken).
  bool overlap = true;
  int quant_gemv_max_batch = 8;       // CUDA: largest quantized matmul batch on int8 GEMVs
  int kquant_mma_max_batch = 8;       // CUDA: largest K-quant one on block-summed int8 MMAs
  int mma_row_tiles = 0;              // CUDA: those matmuls' forced work split (0: planner's)
  int mma_k_splits = 0;
  int dq_gemm_max_batch = 128;        // CUDA: largest one on the dequantizing GEMM (0: off)
  int gemm_kq_max_batch = 64;         // CUDA: largest Q4_K batch on int8 warpgroup MMAs
  int gemm_kq_tile_tokens = 64;       // CUDA: gemm_kq's largest token tile (32 or 64)
  int gemm_kq_ctas_per_sm = 2;        // CUDA: gemm_kq CTAs per SM for 32-token tiles
  bool gemm_kq_stream_k = true;       // CUDA: gemm_kq's stream-K where tiles make partial waves
  int gemm_kq_min_batch = 2;          // CUDA: smallest batch on gemm_kq
  bool norm_kq_records = true;        // CUDA: RMSNorms write gemm_kq's activation records
  bool attention_kq_records = true;   // CUDA: decode attention writes them for attn_output
  bool swiglu_kq_records = true;      // CUDA: SwiGLU writes them for ffn_down
  int dq_gemm_over_copies = 32;       // CUDA: batches up to this skip the BF16 copies
  bool gemm_autotune = true;          // CUDA: time cuBLASLt's candidates per decode shape
  bool gemv_stream = false;           // CUDA: batch-1 GEMVs stream weights through shared memory
  int decode_max_splits = 0;          // CUDA: cap on decode attention's key splits (0: planner)
  bool decode_clusters = true;        // CUDA: decode attention's splits may merge in a cluster
  int decode_heads_per_cta = 0;       // CUDA: query heads per decode attention CTA (0: auto)
  int64_t decode_mma_min_batch = 1;   // CUDA: decode attention on tensor cores from this batch
  int decode_mma_warps = 0;           // CUDA: warps per tensor-core attention CTA (0: by grid)
  bool decode_mma_deep = true;        // CUDA: narrow attention CTAs with three-tile rings
  bool fuse_norm_gemv = false;        // CUDA: batch-1 RMSNorm inside the gate/up GEMV
  bool fold_all_reduce = true;        // CUDA TP: the one-shot all-reduce inside the next RMSNorm
  bool gemv_push = true;              // CUDA TP: batch-1 o/down GEMVs push their outputs
  bool profile_decode = false;        // CUDA: a profiler records only the timed decode steps
};

using Clock = std::chrono::steady_clock;

// --profile-decode: what `ncu --profile-from-start off` records (the timed decode steps).
void profile_capture(const BenchOptions& o, const std::string& kind, bool on) {
  if (!o.profile_decode || kind != "cuda") return;
#ifdef TPNODE_HAVE_CUDA
  cuda_profiler_capture(on);
#else
  (void)on;
#endif
}

double seconds_since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

HParams shape_hparams(const std::string& shape) {
  HParams hp;
  hp.arch = "llama";
  hp.name = shape;
  hp.rope_style = RopeStyle::kNeox;
  if (shape == "smollm2-135m") {
    hp.n_layer = 30; hp.n_embd = 576; hp.n_head = 9; hp.n_head_kv = 3; hp.head_dim = 64;
    hp.n_ff = 1536; hp.n_vocab = 49152; hp.n_ctx_train = 8192; hp.rope_theta = 100000.0f;
    hp.tied_embeddings = true;
  } else if (shape == "llama3-8b" || shape == "llama3-70b") {
    const bool big = shape == "llama3-70b";
    hp.n_layer = big ? 80 : 32; hp.n_embd = big ? 8192 : 4096; hp.n_head = big ? 64 : 32;
    hp.n_head_kv = 8; hp.head_dim = 128; hp.n_ff = big ? 28672 : 14336; hp.n_vocab = 128256;
    hp.n_ctx_train = 131072; hp.rope_theta = 500000.0f;
    hp.rope_scaling = {RopeScaling::Kind::kLlama3, 8.0f, 1.0f, 4.0f, 8192, {}};
  } else if (shape == "qwen2-7b") {
    hp.arch = "qwen2";
    hp.n_layer = 28; hp.n_embd = 3584; hp.n_head = 28; hp.n_head_kv = 4; hp.head_dim = 128;
    hp.n_ff = 18944; hp.n_vocab = 152064; hp.n_ctx_train = 32768; hp.rope_theta = 1000000.0f;
    hp.rms_eps = 1e-6f; hp.attn_bias = true;
  } else {
    TPNODE_THROW(ErrorKind::kInvalidInput,
                 "--shape {}: expected smollm2-135m, llama3-8b, llama3-70b or qwen2-7b", shape);
  }
  return hp;
}

// One status line, rewritten in place on a terminal.
class Status {
 public:
  explicit Status(bool quiet = false) : tty_(isatty(fileno(stderr)) != 0), quiet_(quiet) {}
  template <typename... A>
  void show(fmt::format_string<A...> f, A&&... a) {
    if (quiet_) return;
    const std::string s = fmt::format(f, std::forward<A>(a)...);
    std::fprintf(stderr, tty_ ? "\r\033[K[bench] %s" : "[bench] %s\n", s.c_str());
    std::fflush(stderr);
  }
  void done() {
    if (tty_ && !quiet_) std::fprintf(stderr, "\n");
  }

 private:
  bool tty_;
  bool quiet_;  // ranks other than 0 under mpirun
};

struct Rooflines {
  double copy_bw = 0.0;     // bytes/s, read + write
  double gemm_flops = 0.0;  // BF16 FLOP/s
  std::string gemm_source;
};

struct Row {
  std::string what;
  double tok_s = 0, ms = 0, frac = 0;
  std::string frac_of;
};

// Under mpirun: every rank runs the same steps on its shard of the synthetic model, joined by
// the NCCL communicator; rank 0 prints. Each rank takes the GPU of its local rank.
struct TensorParallel {
  std::unique_ptr<World> world;
  std::unique_ptr<Communicator> comm;  // the engine's collective when there are several ranks
  int rank = 0, size = 1, device = 0;
};

TensorParallel join_ranks(const BenchOptions& o) {
  TensorParallel tp;
  tp.device = o.device;
  if (!started_by_mpi_launcher()) return tp;
  static int argc = 1;
  static char arg0[] = "tpnode";
  static char* argv_storage[] = {arg0, nullptr};
  static char** argv = argv_storage;
  tp.world = World::init(argc, argv, WorldOptions{.collective_timeout_s = 60});
  tp.rank = tp.world->topology().rank;
  tp.size = tp.world->topology().size;
  tp.device = tp.world->topology().local_rank;
  if (tp.rank != 0) spdlog::set_level(spdlog::level::warn);
  return tp;
}

void make_tp_comm(TensorParallel& tp, Backend& backend) {
  if (tp.size == 1) return;
#if defined(TPNODE_HAVE_NCCL) && defined(TPNODE_HAVE_MPI)
  TPNODE_CHECK(backend.name() == "cuda", "bench over {} ranks needs --backend cuda", tp.size);
  NcclCommunicatorOptions co;
  co.device = tp.device;
  co.stream = cuda_backend_stream(backend);
  tp.comm = std::make_unique<NcclCommunicator>(
      dynamic_cast<mpi::MpiCommunicator&>(tp.world->comm()), co);
#else
  TPNODE_THROW(ErrorKind::kUnsupported, "bench over {} ranks needs a build with NCCL", tp.size);
#endif
}

int run_bench(const BenchOptions& o) {
  TensorParallel tp = join_ranks(o);
  const bool root = tp.rank == 0;
  Status status(!root);
  std::string kind = o.backend;
#ifdef TPNODE_HAVE_CUDA
  if (kind == "auto") kind = cuda_device_count() > 0 ? "cuda" : "cpu";
#else
  if (kind == "auto") kind = "cpu";
  TPNODE_CHECK(kind == "cpu", "--backend cuda: this tpnode was built without CUDA");
#endif
  std::unique_ptr<Backend> backend;
  Rooflines roof;
#ifdef TPNODE_HAVE_CUDA
  if (kind == "cuda") {
    CudaBackendOptions co;
    co.device = tp.device;
    co.gpu_memory_fraction = o.gpu_memory_fraction;
    co.max_batch_tokens =
        std::max({*std::max_element(o.prefills.begin(), o.prefills.end()), o.context, 64});
    co.bf16_copy_fraction = o.bf16_copies ? 0.5 : 0.0;
    co.pdl = o.pdl;
    co.side_stream = o.side_stream;
    co.use_cuda_graphs = o.graphs;
    co.quant_gemv_max_batch = o.quant_gemv_max_batch;
    co.dq_gemm_max_batch = o.dq_gemm_max_batch;
    co.kquant_mma_max_batch = o.kquant_mma_max_batch;
    co.mma_row_tiles = o.mma_row_tiles;
    co.mma_k_splits = o.mma_k_splits;
    co.dq_gemm_over_copies_max_batch = o.dq_gemm_over_copies;
    co.gemm_kq_max_batch = o.gemm_kq_max_batch;
    co.gemm_kq_tile_tokens = o.gemm_kq_tile_tokens;
    co.gemm_kq_ctas_per_sm = o.gemm_kq_ctas_per_sm;
    co.gemm_kq_stream_k = o.gemm_kq_stream_k;
    co.gemm_kq_min_batch = o.gemm_kq_min_batch;
    co.norm_kq_records = o.norm_kq_records;
    co.attention_kq_records = o.attention_kq_records;
    co.swiglu_kq_records = o.swiglu_kq_records;
    if (!o.gemm_autotune) co.gemm_autotune_max_rows = 0;
    co.gemv_stream = o.gemv_stream;
    co.decode_max_splits = o.decode_max_splits;
    co.decode_clusters = o.decode_clusters;
    co.decode_heads_per_cta = o.decode_heads_per_cta;
    co.decode_mma_min_batch = o.decode_mma_min_batch;
    co.decode_mma_warps = o.decode_mma_warps;
    co.decode_mma_deep = o.decode_mma_deep;
    co.fuse_norm_gemv = o.fuse_norm_gemv;
    co.fold_all_reduce = o.fold_all_reduce;
    co.gemv_push = o.gemv_push;
    backend = make_cuda_backend(co);
    status.show("measuring device copy bandwidth and BF16 GEMM rate");
    roof.copy_bw = cuda_measure_copy_bandwidth(*backend, uint64_t{2} << 30);
    roof.gemm_flops = cuda_measure_bf16_gemm_flops(*backend, 8192);
    roof.gemm_source = "cuBLASLt 8192^3 BF16 GEMM measured at start";
    status.done();
    const CudaDeviceInfo info = cuda_device_info(*backend);
    if (root) std::printf("device: %s, %d SMs, %.1f GiB (budget %.1f GiB)\n", info.name.c_str(),
                info.sm_count, info.total_bytes / 1073741824.0, info.budget_bytes / 1073741824.0);
    if (root) std::printf("rooflines: copy %.0f GB/s (read+write), BF16 GEMM %.0f TFLOP/s (%s)\n",
                roof.copy_bw / 1e9, roof.gemm_flops / 1e12, roof.gemm_source.c_str());
  }
#endif
  if (!backend) backend = make_cpu_backend({});
  make_tp_comm(tp, *backend);

  std::unique_ptr<ModelFile> file;
  std::unique_ptr<WeightSource> source;
  HParams hp;
  std::string label;
  if (!o.model.empty()) {
    file = ModelFile::open(o.model);
    hp = file->hparams();
    source = std::make_unique<FileWeightSource>(*file);
    label = o.model;
  } else {
    hp = shape_hparams(o.shape);
    SyntheticMix bt = synthetic_mix(o.type, hp);
    source = std::make_unique<SyntheticWeightSource>(hp, bt.matrix, 1, std::move(bt.overrides));
    label = fmt::format("{} {} (synthetic weights)", o.shape, o.type);
  }
  if (tp.size > 1) label += fmt::format(", tensor parallel over {} GPUs", tp.size);

  const int max_batch = *std::max_element(o.batches.begin(), o.batches.end());
  const int max_prefill = *std::max_element(o.prefills.begin(), o.prefills.end());
  EngineOptions eo;
  eo.max_context = std::max(max_prefill, o.context + o.decode_steps + 8);
  // The KV of each decode sequence is filled with `context` tokens in one step.
  eo.max_batch_tokens = std::max({max_prefill, max_batch, o.context});
  eo.max_seqs = std::max(max_batch, 1);
  const int64_t per_seq_blocks = (eo.max_context + eo.kv_block_size - 1) / eo.kv_block_size;
  eo.kv_tokens = std::max<int64_t>(max_batch, 1) * per_seq_blocks * eo.kv_block_size;
  int last_pct = -1;
  eo.progress = [&status, &last_pct](uint64_t done, uint64_t total) {
    const int pct = total ? static_cast<int>(100 * done / total) : 100;
    if (pct == last_pct) return;
    last_pct = pct;
    status.show("loading weights {:3d}% ({:.1f} / {:.1f} GB)", pct, done / 1e9, total / 1e9);
  };
  SingleRankCollective one;
  Collective& collective = tp.comm ? static_cast<Collective&>(*tp.comm) : one;
  const auto t_load = Clock::now();
  Engine engine(hp, *source, *backend, collective, eo);
  backend->sync();
  status.done();
  const uint64_t embd_bytes =
      source->bytes("token_embd.weight", {0, hp.n_vocab, 0, hp.n_embd});
  const uint64_t step_weight_bytes = engine.weight_bytes() - embd_bytes;
  if (root) std::printf("model: %s; %.2f GB of weights read per step (per GPU); loaded in %.1f s on %s\n",
              label.c_str(), step_weight_bytes / 1e9, seconds_since(t_load),
              std::string(backend->name()).c_str());

  // Block tables: sequence s owns blocks [s * per_seq_blocks, (s + 1) * per_seq_blocks).
  // The first blocks of sequence s's range, enough for `tokens` tokens: a sequence holds what
  // it will use, as under the server, so that the block-table width (which decode attention
  // plans its key splits from) follows the sequence, not the longest prefill of the run.
  auto blocks_of = [&](int s, int64_t tokens) {
    const int64_t n = std::clamp<int64_t>((tokens + eo.kv_block_size - 1) / eo.kv_block_size, 1,
                                          per_seq_blocks);
    std::vector<int32_t> b(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) b[i] = static_cast<int32_t>(s * per_seq_blocks + i);
    return b;
  };
  auto prompt = [&](int n, int salt) {
    std::vector<int32_t> t(static_cast<size_t>(n));
    for (int i = 0; i < n; ++i) t[i] = static_cast<int32_t>((i * 7919 + salt * 104729) % hp.n_vocab);
    return t;
  };
  // FLOPs of one token through the matrices (LM head once per sequence, counted apart).
  const double layer_params = static_cast<double>(hp.n_layer) *
      (hp.n_embd * (hp.n_head + 2 * hp.n_head_kv) * hp.head_dim + hp.n_head * hp.head_dim * hp.n_embd +
       3.0 * hp.n_embd * hp.n_ff);

  std::vector<Row> rows;
  for (int p : o.prefills) {
    StepPlan plan;
    plan.seqs = {SeqStep{.seq_id = 1, .n_past = 0, .tokens = prompt(p, 1), .blocks = blocks_of(0, p),
                         .want_logits = true}};
    status.show("prefill {} tokens: warm-up", p);
    engine.step(plan);
    double best = 1e30, total = 0;
    for (int r = 0; r < o.reps; ++r) {
      status.show("prefill {} tokens: run {}/{}", p, r + 1, o.reps);
      const auto t0 = Clock::now();
      engine.step(plan);
      const double s = seconds_since(t0);
      best = std::min(best, s);
      total += s;
    }
    status.done();
    const double attn_flops = 4.0 * hp.n_layer * hp.n_head * hp.head_dim * (p * (p + 1) / 2.0);
    const double flops = 2.0 * layer_params * p + attn_flops + 2.0 * hp.n_vocab * hp.n_embd;
    Row row{fmt::format("prefill {}", p), p / best, best * 1e3, 0, ""};
    if (roof.gemm_flops > 0) {
      row.frac = flops / best / roof.gemm_flops;
      row.frac_of = "BF16 GEMM peak";
    }
    rows.push_back(row);
  }

  // Each decode sequence's blocks cover its context, the two warm-up steps and the timed ones.
  const int64_t decode_span = static_cast<int64_t>(o.context) + 2 + o.decode_steps;
  for (int b : o.batches) {
    // Fill each sequence's KV with `context` tokens, several sequences per step.
    StepPlan plan;
    const int per_step = std::max(1, static_cast<int>(eo.max_batch_tokens / std::max(o.context, 1)));
    for (int s0 = 0; s0 < b; s0 += per_step) {
      plan.seqs.clear();
      for (int s = s0; s < std::min(b, s0 + per_step); ++s) {
        plan.seqs.push_back({.seq_id = static_cast<uint64_t>(s + 1), .n_past = 0,
                             .tokens = prompt(o.context, s + 2), .blocks = blocks_of(s, decode_span),
                             .want_logits = false});
      }
      status.show("decode batch {}: filling KV ({}/{} sequences)", b, s0, b);
      engine.step(plan);
    }
    plan.seqs.clear();
    for (int s = 0; s < b; ++s) {
      plan.seqs.push_back({.seq_id = static_cast<uint64_t>(s + 1), .n_past = o.context,
                           .tokens = {static_cast<int32_t>(s % hp.n_vocab)}, .blocks = blocks_of(s, decode_span),
                           .want_logits = true});
      if (o.device_sampling) {
        // generate's defaults: the filters run, not just an argmax.
        plan.seqs.back().sampling = {.enabled = true, .temperature = 0.8f, .top_k = 40,
                                     .top_p = 0.95f, .min_p = 0.05f,
                                     .seed = static_cast<uint64_t>(s)};
      } else if (o.greedy_tokens) {
        // One GPU: the argmax on the device; tensor parallel: the distributed argmax.
        plan.seqs.back().sampling = {.enabled = true, .temperature = 0.0f};
      }
    }
    for (int w = 0; w < 2; ++w) {
      engine.step(plan);
      for (auto& sq : plan.seqs) ++sq.n_past;
    }
    const bool overlap = o.overlap && engine.chains() && (o.device_sampling || o.greedy_tokens);
    StepPlan chained = plan;
    for (auto& sq : chained.seqs) sq.tokens = {kChainedToken};
    profile_capture(o, kind, true);
    const auto t0 = Clock::now();
    if (overlap) {
      // One step always queued ahead: step i + 1 goes in before step i's tokens come out.
      engine.submit(plan);
      for (int i = 1; i < o.decode_steps; ++i) {
        if (i % 4 == 0) status.show("decode batch {}: step {}/{}", b, i, o.decode_steps);
        for (size_t k = 0; k < plan.seqs.size(); ++k) chained.seqs[k].n_past = plan.seqs[k].n_past + i;
        engine.submit(chained);
        engine.collect();
      }
      engine.collect();
      for (auto& sq : plan.seqs) sq.n_past += o.decode_steps;
    } else {
      for (int i = 0; i < o.decode_steps; ++i) {
        if (i % 4 == 0) status.show("decode batch {}: step {}/{}", b, i, o.decode_steps);
        engine.step(plan);
        for (auto& sq : plan.seqs) ++sq.n_past;
      }
    }
    const double per_step_s = seconds_since(t0) / o.decode_steps;
    profile_capture(o, kind, false);
    status.done();
    Row row{fmt::format("decode batch {}{}", b,
                        o.device_sampling ? " +sampling" : o.greedy_tokens ? " +greedy" : ""),
            b / per_step_s, per_step_s * 1e3, 0, ""};
    if (roof.copy_bw > 0) {
      // The copy rate counts bytes read plus written: the HBM's total rate, which a
      // read-only GEMV step can reach with reads alone.
      row.frac = static_cast<double>(step_weight_bytes) / per_step_s / roof.copy_bw;
      row.frac_of = "HBM roofline (weights / copy read rate)";
    }
    rows.push_back(row);
  }

  tp.comm.reset();  // before the backend whose stream it uses; every rank is here
  if (!root) return 0;
  std::printf("\n%-18s %12s %10s %8s  %s\n", "phase", "tok/s", "ms/step", "frac", "of");
  for (const Row& r : rows) {
    std::printf("%-18s %12.1f %10.3f %7.1f%%  %s\n", r.what.c_str(), r.tok_s, r.ms, 100 * r.frac,
                r.frac_of.c_str());
  }
  return 0;
}

const RegisterCommand kRegister{Command{
    "bench", "decode/prefill throughput against the measured rooflines",
    [](CLI::App& sub) -> std::function<int()> {
      auto o = std::make_shared<BenchOptions>();
      sub.add_option("--shape", o->shape, "smollm2-135m, llama3-8b, llama3-70b or qwen2-7b");
      sub.add_option("--type", o->type,
                     "q4_k_m (llama.cpp's mix: Q4_K, Q6_K output and, in the first and last "
                     "eighth of the layers and every third between, Q6_K attn_v and ffn_down; Q5_K "
                     "attn_v in the other layers of llama3-70b), "
                     "q4_k_m-flat (Q6_K ffn_down in every layer) or one weight type for every "
                     "matrix: f32, f16, bf16, q8_0, q4_0, q4_1, q5_0, q5_1, q4_k, q5_k, q6_k "
                     "(synthetic weights)");
      sub.add_option("-m,--model", o->model, "a model file instead of a shape");
      sub.add_option("--backend", o->backend, "auto, cpu or cuda")
          ->check(CLI::IsMember({"auto", "cpu", "cuda"}));
      sub.add_option("--device", o->device, "CUDA device");
      sub.add_option("--gpu-memory-fraction", o->gpu_memory_fraction, "of the device's memory")
          ->check(CLI::Range(0.05, 1.0));
      sub.add_option("--batches", o->batches, "decode batch sizes")->delimiter(',');
      sub.add_option("--prefill", o->prefills, "prefill lengths")->delimiter(',');
      sub.add_option("--context", o->context, "KV tokens per sequence before timed decode");
      sub.add_option("--decode-steps", o->decode_steps, "timed decode steps per batch size");
      sub.add_option("--reps", o->reps, "timed prefill repetitions (best is reported)");
      sub.add_flag("!--no-side-stream", o->side_stream,
                   "a shared group's matrices that its grouped kernel does not take (a Q6_K "
                   "attn_v beside Q4_K q and k) run after that kernel, not beside it on a "
                   "second stream");
      sub.add_flag("--pdl,!--no-pdl", o->pdl,
                   "programmatic dependent launch between decode kernels (default on; "
                   "compute capability >= 9.0)");
      sub.add_option("--quant-gemv-max-batch", o->quant_gemv_max_batch,
                     "largest decode batch whose quantized matmuls run on int8 GEMVs (1..64)");
      sub.add_option("--kquant-mma-max-batch", o->kquant_mma_max_batch,
                     "largest decode batch whose Q4_K/Q5_K/Q6_K matmuls run on int8 tensor cores "
                     "with activations in 256-value groups (0 or 1: off)")
          ->check(CLI::Range(0, 64));
      sub.add_option("--mma-row-tiles", o->mma_row_tiles,
                     "K-quant int8-MMA batches: 16-row tiles per warp, forced (0: the planner's)")
          ->check(CLI::Range(0, 2));
      sub.add_option("--mma-k-splits", o->mma_k_splits,
                     "K-quant int8-MMA batches: k splits over a cluster, forced (0: the planner's)")
          ->check(CLI::IsMember({0, 1, 2, 4, 8}));
      sub.add_option("--decode-heads-per-cta", o->decode_heads_per_cta,
                     "query heads per decode attention CTA (0: the kernel's pick by grid size)")
          ->check(CLI::IsMember({0, 1, 2, 4, 8}));
      sub.add_option("--decode-mma-min-batch", o->decode_mma_min_batch,
                     "smallest decode batch whose attention runs on tensor cores (0: never)")
          ->check(CLI::NonNegativeNumber);
      sub.add_option("--decode-mma-warps", o->decode_mma_warps,
                     "warps per tensor-core decode attention CTA (0: twelve for grids of a few "
                     "tokens, two where four would take more than one wave, else four)")
          ->check(CLI::IsMember({0, 2, 4, 12}));
      sub.add_flag("!--no-decode-mma-deep", o->decode_mma_deep,
                   "narrow tensor-core attention CTAs keep two-tile rings (by default three "
                   "where four CTAs per SM hold the grid)");
      sub.add_option("--gemm-kq-max-batch", o->gemm_kq_max_batch,
                     "largest decode batch whose Q4_K matmuls run on int8 warpgroup MMAs from the "
                     "quantized blocks (0: off; sm_90a)")
          ->check(CLI::Range(0, 128));
      sub.add_option("--gemm-kq-tile-tokens", o->gemm_kq_tile_tokens,
                     "gemm_kq: most tokens per CTA (32 or 64)")
          ->check(CLI::IsMember({32, 64}));
      sub.add_option("--gemm-kq-ctas-per-sm", o->gemm_kq_ctas_per_sm,
                     "gemm_kq: CTAs per SM for 32-token tiles (1 or 2)")
          ->check(CLI::IsMember({1, 2}));
      sub.add_flag("!--no-gemm-kq-stream-k", o->gemm_kq_stream_k,
                   "gemm_kq: one CTA per tile and k split also where the tiles make partial "
                   "waves (no stream-K)");
      sub.add_flag("!--no-norm-kq-records", o->norm_kq_records,
                   "gemm_kq's activation records by a launch of their own, not by the RMSNorm "
                   "before it");
      sub.add_flag("!--no-swiglu-kq-records", o->swiglu_kq_records,
                   "ffn_down's gemm_kq records by a launch of their own, not by the SwiGLU "
                   "before it");
      sub.add_flag("!--no-attention-kq-records", o->attention_kq_records,
                   "attn_output's gemm_kq records by a launch of their own, not by decode "
                   "attention");
      sub.add_option("--gemm-kq-min-batch", o->gemm_kq_min_batch,
                     "smallest decode batch whose Q4_K matmuls run on gemm_kq (2..128)")
          ->check(CLI::Range(2, 128));
      sub.add_option("--dq-gemm-over-copies", o->dq_gemm_over_copies,
                     "decode batches up to this size dequantize inside the tensor-core GEMM even "
                     "where a BF16 copy of the weights exists (0: never)")
          ->check(CLI::Range(0, 128));
      sub.add_flag("!--no-gemm-autotune", o->gemm_autotune,
                   "decode-sized cuBLASLt GEMMs use the heuristic's first algorithm per shape "
                   "instead of the fastest of its first candidates");
      sub.add_option("--dq-gemm-max-batch", o->dq_gemm_max_batch,
                     "largest decode batch whose quantized matmuls dequantize inside a "
                     "tensor-core GEMM when they have no BF16 copy (0..128; 0: off)");
      sub.add_flag("--gemv-stream", o->gemv_stream,
                   "batch-1 GEMVs stream the weights through shared memory (TMA bulk copies) "
                   "instead of loading them into registers");
      sub.add_option("--decode-max-splits", o->decode_max_splits,
                     "cap on decode attention's key splits (0: as many as fill the GPU)")
          ->check(CLI::Range(0, 128));
      sub.add_flag("--fuse-norm-gemv", o->fuse_norm_gemv,
                   "batch 1: the RMSNorm before gate/up runs inside their GEMV instead of as its "
                   "own launch");
      sub.add_flag("--profile-decode", o->profile_decode,
                   "CUDA: start and stop the profiler around the timed decode steps (for "
                   "ncu/nsys with profiling from the start off)");
      sub.add_flag("!--no-fold-all-reduce", o->fold_all_reduce,
                   "tensor parallel: the all-reduce after a row-parallel matmul runs as its own "
                   "launch instead of inside the residual add + RMSNorm after it");
      sub.add_flag("!--no-gemv-push", o->gemv_push,
                   "tensor parallel, batch 1: the folded all-reduce sends the o/down GEMV's "
                   "outputs to the peers itself instead of the GEMV sending each as it is made");
      sub.add_flag("!--decode-global-merge", o->decode_clusters,
                   "decode attention's key splits always merge through global memory, never "
                   "inside a thread-block cluster");
      sub.add_flag("!--no-graphs", o->graphs, "run decode steps op by op instead of CUDA graphs");
      sub.add_flag("!--no-overlap", o->overlap,
                   "with device draws, wait for each step's tokens before queueing the next "
                   "(by default the next step is queued first and takes its token on the device)");
      sub.add_flag("--greedy-tokens", o->greedy_tokens,
                   "decode steps return argmax tokens instead of logits (device or distributed argmax)");
      sub.add_flag("--device-sampling", o->device_sampling,
                   "decode steps sample their tokens on the device (T 0.8, top-k 40, top-p "
                   "0.95, min-p 0.05) instead of copying the logits to the host");
      sub.add_flag("!--no-bf16-copies", o->bf16_copies,
                   "CUDA: dequantize quantized weights for each GEMM instead of keeping BF16 copies");
      return [o] { return run_bench(*o); };
    }}};

}  // namespace
}  // namespace tpnode::cli
