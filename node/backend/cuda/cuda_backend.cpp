#include "node/backend/cuda/cuda_backend.h"

#include <cuda_bf16.h>
#include <cuda_profiler_api.h>
#include <cuda_runtime.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "kernels/cuda/allreduce.h"
#include "kernels/cuda/attention.h"
#include "kernels/cuda/decode_attention_mma.h"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/dequant.h"
#include "kernels/cuda/elementwise.h"
#include "kernels/cuda/gemm_dq.h"
#include "kernels/cuda/gemm_kq.h"
#include "kernels/cuda/event_timer.h"
#include "kernels/cuda/gemm_lt.h"
#include "kernels/cuda/gemv.h"
#include "kernels/cuda/gemv_float.h"
#include "kernels/cuda/gemv_stream.h"
#include "kernels/cuda/pdl.h"
#include "kernels/cuda/quant_layout.h"
#include "kernels/cuda/sampling.h"
#include "kernels/cuda/synth.h"
#include "kernels/cpu/rope.h"
#include "node/backend/cuda/device_memory.h"
#include "node/backend/cuda/sample_queue.h"
#include "node/backend/cuda/step_upload.h"

namespace tpnode {
namespace {

namespace kc = ::tpnode::cuda;

// Sequences with at least this many new tokens run on the tensor-core prefill kernel; the
// others (decode tokens, short chunks) on the decode kernel.
constexpr int64_t kPrefillMinTokens = 16;
constexpr size_t kGemmWorkspaceBytes = size_t{32} << 20;
// Quantized weights without a BF16 copy are dequantized for the GEMM in row chunks of this.
constexpr size_t kDequantChunkBytes = size_t{256} << 20;

float half_bits_to_float(uint16_t h) {
  const uint32_t sign = (h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1F, mant = h & 0x3FF;
  uint32_t bits;
  if (exp == 0) {
    if (mant == 0) {
      bits = sign;
    } else {  // subnormal: normalise
      exp = 127 - 15 + 1;
      while ((mant & 0x400) == 0) {
        mant <<= 1;
        --exp;
      }
      bits = sign | (exp << 23) | ((mant & 0x3FF) << 13);
    }
  } else if (exp == 31) {
    bits = sign | 0x7F800000u | (mant << 13);
  } else {
    bits = sign | ((exp + 127 - 15) << 23) | (mant << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

float bf16_bits_to_float(uint16_t b) {
  const uint32_t bits = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

class CudaBackend final : public Backend {
 public:
  explicit CudaBackend(const CudaBackendOptions& options);
  ~CudaBackend() override;

  std::string_view name() const override { return "cuda"; }
  void* alloc(size_t bytes) override { return mem_->alloc(bytes, "backend buffer"); }
  void copy_to_device(void* dst, const void* src, size_t bytes) override;
  void copy_to_host(void* dst, const void* src, size_t bytes) override;
  void sync() override { TPNODE_CUDA_CHECK(cudaStreamSynchronize(stream_)); }

  Weight upload_weight(const HostMatrix& m) override;
  float* upload_vector(TensorType type, const void* data, int64_t n) override;
  Weight synth_weight(TensorType type, int64_t rows, int64_t cols, uint64_t seed) override;
  float* synth_vector(int64_t n, float value) override;

  size_t kv_element_bytes() const override { return 2; }  // BF16 or F16
  void init_kv_cache(const KvCacheShape& shape) override;
  void begin_step(const BatchMeta& batch) override;
  std::optional<uint64_t> memory_available() const override {
    return mem_->budget() > mem_->used() ? mem_->budget() - mem_->used() : 0;
  }

  void embed(const Weight& table, float* x) override;
  void rmsnorm(const float* x, const float* w, float* y, int64_t rows, int64_t n,
               float eps) override;
  void matmul(const Weight& w, const float* x, float* y, int64_t m) override;
  void matmul_reduced(const Weight& w, const float* x, float* y, int64_t m,
                      const void* reduce) override;
  void matmul_shared(std::span<const MatmulOut> outs, const float* x, int64_t m) override;
  void norm_matmul_shared(const NormIn& in, std::span<const MatmulOut> outs, int64_t m) override;
  bool folds_reduce(int64_t m, int64_t n) const override;
  void add_rmsnorm(const NormIn& in, int64_t rows) override;
  void run_rmsnorm(kc::RmsNormParams p, const kc::OneShotParams* reduce = nullptr,
                   bool pushed = false);
  kc::QuantActs quantized(const float* x, int64_t m, int64_t k, int group = 32);
  void add_bias(float* y, const float* b, int64_t m, int64_t n) override;
  void rope(float* q, float* k, const RopeParams& p) override;
  void attention(const float* q, const float* k, const float* v, float* out,
                 const AttentionParams& p) override;
  void swiglu(const float* gate, const float* up, float* out, int64_t n) override;
  void add(const float* x, const float* y, float* out, int64_t n) override;
  void gather_rows(const float* x, float* out, int64_t row_len) override;

  bool decode_graphs() const override { return true; }
  bool graph_replay(const GraphKey& key) override;
  void graph_capture_begin(const GraphKey& key) override;
  void graph_capture_end() override;

  bool can_sample() const override { return true; }
  bool can_chain() const override { return true; }
  void sample_async(const float* logits, int64_t n_vocab, const std::vector<SampleRow>& rows) override;
  void take_sampled(int32_t* tokens, size_t n) override;
  void sample_tokens(const float* logits, int64_t n_vocab, const std::vector<SampleRow>& rows,
                     int32_t* tokens) override;
  void argmax_rows(const float* logits, int64_t n_vocab, const std::vector<int32_t>& rows,
                   float* best, int32_t* ids) override;

  CudaDeviceInfo info() const;
  cudaStream_t stream() const { return stream_; }
  double measure_copy_bandwidth(uint64_t bytes);
  double measure_gemm_flops(int64_t dim);

 private:
  // Which activation buffer the 8-bit copy in act_* holds (n elements from x).
  struct ActCache {
    const void* x = nullptr;
    int64_t n = 0;
    bool dq_layout = false;  // BF16 copies: gemm_dq's layout (gemm_dq_acts), which depends
    int64_t cols = 0;        // on the row length as well as on n
    int group = 32;          // 8-bit copies: values per activation scale (QuantActs::group)
    bool operator==(const ActCache&) const = default;
  };
  struct Scratches {
    explicit Scratches(kc::DeviceMemory& m)
        : act_q(m, "8-bit activations"), act_d(m, "activation scales"),
          act_s(m, "activation sums"), gemm_x(m, "GEMM BF16 activations"),
          gemm_xq(m, "GEMM 8-bit activations"),
          gemm_w(m, "GEMM BF16 weight staging"), attn_out(m, "attention split outputs"),
          attn_lse(m, "attention split LSE") {}
    kc::Scratch act_q, act_d, act_s, gemm_x, gemm_xq, gemm_w, attn_out, attn_lse;
  };
  struct Step {
    int64_t n_tokens = 0, n_seqs = 0, n_logits = 0, n_decode = 0, n_tiles = 0;
    int32_t max_blocks = 0;
    const int32_t* tokens = nullptr;
    const int32_t* positions = nullptr;
    const int32_t* token_seq = nullptr;
    const int32_t* block_tables = nullptr;
    const int32_t* logit_rows = nullptr;
    const int32_t* decode_tokens = nullptr;
    const int32_t* tiles = nullptr;
  };

  void wrote(const void* p, size_t bytes);
  kc::QuantActs act_buffers(int64_t n);
  Weight finish_weight(TensorType type, int64_t rows, int64_t cols, void* data);
  kc::DeviceMatrix view(const Weight& w) const;
  // The GEMV group (GemvGroupParams or GemvFloatGroupParams) of matrices sharing x: their
  // views and outputs one after the other, and their rows in all.
  template <typename Group>
  Group group_of(std::span<const MatmulOut> outs) const {
    Group g{};
    g.n = static_cast<int>(outs.size());
    for (size_t i = 0; i < outs.size(); ++i) {
      g.outs[i] = {view(*outs[i].w), outs[i].y};
      g.total_rows += outs[i].w->rows;
    }
    return g;
  }
  // The outputs of matmuls over m rows are about to be written.
  void wrote_outs(std::span<const MatmulOut> outs, int64_t m) {
    for (const MatmulOut& o : outs) wrote(o.y, m * o.w->rows * sizeof(float));
  }
  kc::PagedKv layer_kv(int64_t layer) const;
  kc::DeviceBatch device_batch() const;
  void gemm(const Weight& w, const float* x, float* y, int64_t m);
  bool use_gemm_dq(const Weight& w, const kc::DeviceMatrix& dm, int64_t m) const;
  bool use_kquant_mma(const Weight& w, int64_t m) const;
  bool use_gemm_kq_batch(int64_t m) const;
  // Whether weights of this type take gemm_kq at batch m (use_gemm_kq but the view's checks).
  bool gemm_kq_type(TensorType t, int64_t m) const {
    return t == TensorType::kQ4_K && use_gemm_kq_batch(m);
  }
  bool use_gemm_kq(const kc::DeviceMatrix& dm, int64_t m) const;
  kc::GemmKqTuning kq_tuning() const;
  bool kq_group(std::span<const MatmulOut> outs, const float* x, int64_t m);
  const uint8_t* kq_acts(const float* x, int64_t m, int64_t k);
  // Batch 1 on the int8 GEMV (or gemv_stream); with a push, also to the peers (GemvLlPush).
  void gemv1(std::span<const MatmulOut> outs, const float* x, const kc::GemvLlPush& push = {});
  void gemv1_by_type(std::span<const MatmulOut> outs, const float* x);
  const __nv_bfloat16* bf16_acts(const float* x, int64_t m, int64_t k, bool dq_layout = false);
  __nv_bfloat16* fused_bf16_out(int64_t m, int64_t k);
  const float* rope_freqs(const RopeParams& p);

  CudaBackendOptions opt_;
  cudaDeviceProp prop_{};
  cudaStream_t stream_ = nullptr;
  // The second stream (side_stream): fork_side() makes it wait for what stream_ holds, an
  // OnSide scope sends the ops inside it there, join_side() makes stream_ wait for it.
  cudaStream_t side_ = nullptr;
  cudaEvent_t fork_event_ = nullptr;
  cudaEvent_t join_event_ = nullptr;
  kc::GemmDqWorkspace side_ws_;  // dq_ws_ for the side stream, which may run beside gemm_kq
  void fork_side();
  void join_side();
  class OnSide;
  uint64_t total_bytes_ = 0;
  std::unique_ptr<kc::DeviceMemory> mem_;  // first in, last out: frees every buffer
  std::unique_ptr<Scratches> scratch_;
  std::unique_ptr<kc::StepUploader> uploader_;
  std::unique_ptr<kc::SampleQueue> draws_;  // sample_tokens / sample_async
  std::unique_ptr<kc::GemmLt> gemm_;
  uint64_t bf16_copy_bytes_ = 0;
  int64_t max_cols_ = 0;
  ActCache act_;
  ActCache bf16_act_;  // which x the BF16 copy in scratch_->gemm_x holds
  ActCache kq_act_;    // which x the 8-bit records in scratch_->gemm_xq hold (gemm_kq_acts)
  bool gemm_kq_ = false;  // gemm_kq runs on this device and is on
  // (type, cols) of the quantized weights loaded: the ops before a matmul write their output
  // in the layout its kernel reads where a weight of that width may take it.
  std::vector<std::pair<TensorType, int64_t>> loaded_;
  template <typename Pred>
  bool loaded(int64_t cols, Pred pred) const {
    return std::any_of(loaded_.begin(), loaded_.end(),
                       [&](const auto& e) { return e.second == cols && pred(e.first); });
  }
  // The output a batch-1 GEMV last sent to the peers itself (matmul_reduced), for the folded
  // norm that reduces it next; null after that norm.
  const float* pushed_ = nullptr;
  // Quantized matmuls of up to this many rows run as GEMVs (int8 tensor cores), not GEMMs.
  int64_t quant_gemv_max_ = kc::kGemvMaxBatch;
  kc::GemmDqWorkspace dq_ws_;  // k-split partial sums and counters of gemm_dq

  KvCacheShape kv_shape_;
  void* k_cache_ = nullptr;
  void* v_cache_ = nullptr;
  uint32_t* attn_counters_ = nullptr;  // [kDecodeMaxCounters], zero between launches
  size_t kv_layer_bytes_ = 0;

  Step step_;
  // RoPE frequency tables on the device, one per distinct parameter set (usually one).
  struct RopeFreqs {
    RopeParams key;
    float* dev;
  };
  std::vector<RopeFreqs> rope_freqs_;

  // Decode graphs. A shape runs op by op the first time it is seen (sizing every scratch
  // buffer it needs), is captured the second time, and replays after that. A scratch buffer
  // that moves invalidates every graph (they point at the old one).
  struct DecodeGraph {
    GraphKey key;
    cudaGraphExec_t exec = nullptr;
  };
  void drop_graphs();
  std::vector<DecodeGraph> graphs_;
  std::vector<GraphKey> sized_keys_;
  uint64_t graphs_moves_ = 0;  // mem_->scratch_moves() when graphs_ was last valid
  bool capturing_ = false;
  GraphKey capture_key_;

  // Device sampling: the rows' parameters and the sampled ids, sized for the largest batch.
  kc::SampleRowParams* sample_params_ = nullptr;
  int32_t* sampled_ = nullptr;
  float* sampled_best_ = nullptr;  // the greedy rows' logits at their ids (argmax_rows)
  size_t sample_capacity_ = 0;
  // Runs the sampling kernel over `rows`; their ids (and with `best`, their logits at those
  // ids, greedy rows only) come back to host memory.
  void run_sampling(const float* logits, int64_t n_vocab, const std::vector<SampleRow>& rows,
                    int32_t* tokens, float* best);
};

CudaBackend::CudaBackend(const CudaBackendOptions& options) : opt_(options) {
  const int count = cuda_device_count();
  TPNODE_CHECK_KIND(options.device >= 0 && options.device < count, ErrorKind::kRuntime,
                    "CUDA device {} requested but {} device(s) are usable", options.device, count);
  TPNODE_CHECK(options.gpu_memory_fraction > 0.0 && options.gpu_memory_fraction <= 1.0,
               "gpu_memory_fraction {} outside (0, 1]", options.gpu_memory_fraction);
  TPNODE_CUDA_CHECK(cudaSetDevice(options.device));
  TPNODE_CUDA_CHECK(cudaGetDeviceProperties(&prop_, options.device));
  TPNODE_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
  if (options.side_stream) {
    TPNODE_CUDA_CHECK(cudaStreamCreateWithFlags(&side_, cudaStreamNonBlocking));
    TPNODE_CUDA_CHECK(cudaEventCreateWithFlags(&fork_event_, cudaEventDisableTiming));
    TPNODE_CUDA_CHECK(cudaEventCreateWithFlags(&join_event_, cudaEventDisableTiming));
  }
  kc::set_pdl_enabled(options.pdl && prop_.major >= 9);
  TPNODE_CHECK(options.quant_gemv_max_batch >= 1 && options.quant_gemv_max_batch <= kc::kGemvMmaMaxBatch,
               "quant_gemv_max_batch {} outside 1..{}", options.quant_gemv_max_batch,
               kc::kGemvMmaMaxBatch);
  quant_gemv_max_ = options.quant_gemv_max_batch;
  TPNODE_CHECK(options.kquant_mma_max_batch >= 0 &&
                   options.kquant_mma_max_batch <= kc::kGemvMmaMaxBatch,
               "kquant_mma_max_batch {} outside 0..{}", options.kquant_mma_max_batch,
               kc::kGemvMmaMaxBatch);
  TPNODE_CHECK(options.dq_gemm_max_batch >= 0 && options.dq_gemm_max_batch <= kc::kGemmDqMaxBatch,
               "dq_gemm_max_batch {} outside 0..{}", options.dq_gemm_max_batch,
               kc::kGemmDqMaxBatch);
  size_t free_bytes = 0, total_bytes = 0;
  TPNODE_CUDA_CHECK(cudaMemGetInfo(&free_bytes, &total_bytes));
  total_bytes_ = total_bytes;
  const uint64_t budget = std::min<uint64_t>(
      free_bytes, static_cast<uint64_t>(options.gpu_memory_fraction * static_cast<double>(total_bytes)));
  mem_ = std::make_unique<kc::DeviceMemory>(budget);
  scratch_ = std::make_unique<Scratches>(*mem_);
  uploader_ = std::make_unique<kc::StepUploader>(*mem_, stream_);
  uploader_->reserve(static_cast<size_t>(options.max_batch_tokens) * 16 + 65536);
  // A step draws for at most one row per sequence, and has at most max_batch_tokens of them.
  draws_ = std::make_unique<kc::SampleQueue>(
      *mem_, stream_, static_cast<size_t>(std::max<int64_t>(options.max_batch_tokens, 1)));
  gemm_ = std::make_unique<kc::GemmLt>(mem_->alloc(kGemmWorkspaceBytes, "cuBLASLt workspace"),
                                       kGemmWorkspaceBytes, options.gemm_autotune_max_rows);
  if (options.gemv_stream && prop_.major >= 9) kc::gemv_stream_init();  // outside any capture
  TPNODE_CHECK(options.gemm_kq_max_batch >= 0 && options.gemm_kq_max_batch <= kc::kGemmKqMaxBatch,
               "gemm_kq_max_batch {} outside 0..{}", options.gemm_kq_max_batch,
               kc::kGemmKqMaxBatch);
  kc::gemm_kq_check_tuning(kq_tuning());
  TPNODE_CHECK(options.decode_mma_min_batch >= 0, "decode_mma_min_batch {} is negative",
               options.decode_mma_min_batch);
  TPNODE_CHECK(options.decode_mma_warps == 0 || options.decode_mma_warps == 2 ||
                   options.decode_mma_warps == 4 || options.decode_mma_warps == 12,
               "decode_mma_warps {} is not 0, 2, 4 or 12", options.decode_mma_warps);
  if (options.decode_mma_min_batch > 0 && prop_.major >= 8) {
    kc::decode_attention_mma_init();  // shared-memory limits, outside any graph capture
  }
  if (options.gemm_kq_max_batch > 0) {
    kc::gemm_kq_init();  // shared-memory limit and the build probe, outside any graph capture
    gemm_kq_ = kc::gemm_kq_available();
  }
  if (options.dq_gemm_max_batch > quant_gemv_max_ || gemm_kq_) {
    kc::gemm_dq_init();  // shared-memory limits, set once outside any graph capture
    kc::GemmDqWorkspaceSize ws = kc::gemm_dq_workspace_size();
    if (gemm_kq_) {
      const kc::GemmDqWorkspaceSize kq = kc::gemm_kq_workspace_size();
      ws = {std::max(ws.partial_floats, kq.partial_floats), std::max(ws.n_counters, kq.n_counters)};
    }
    for (kc::GemmDqWorkspace* w : {&dq_ws_, &side_ws_}) {
      if (w == &side_ws_ && side_ == nullptr) break;
      w->partial_floats = ws.partial_floats;
      w->n_counters = ws.n_counters;
      w->partials = static_cast<float*>(mem_->alloc(
          static_cast<size_t>(ws.partial_floats) * sizeof(float), "gemm_dq partial sums"));
      w->counters = static_cast<unsigned*>(
          mem_->alloc(static_cast<size_t>(ws.n_counters) * sizeof(unsigned), "gemm_dq counters"));
      TPNODE_CUDA_CHECK(cudaMemsetAsync(
          w->counters, 0, static_cast<size_t>(ws.n_counters) * sizeof(unsigned), stream_));
    }
  }
  spdlog::info("cuda: {} ({} SMs, {:.1f} GiB), budget {:.1f} GiB", prop_.name,
               prop_.multiProcessorCount, total_bytes / 1073741824.0, budget / 1073741824.0);
}

CudaBackend::~CudaBackend() {
  if (capturing_) {
    cudaGraph_t g = nullptr;
    cudaStreamEndCapture(stream_, &g);
    if (g) cudaGraphDestroy(g);
  }
  if (stream_) cudaStreamSynchronize(stream_);
  for (DecodeGraph& g : graphs_) cudaGraphExecDestroy(g.exec);
  gemm_.reset();
  draws_.reset();
  uploader_.reset();
  scratch_.reset();
  mem_.reset();
  if (side_) cudaStreamDestroy(side_);
  if (fork_event_) cudaEventDestroy(fork_event_);
  if (join_event_) cudaEventDestroy(join_event_);
  if (stream_) cudaStreamDestroy(stream_);
}

void CudaBackend::fork_side() {
  TPNODE_CUDA_CHECK(cudaEventRecord(fork_event_, stream_));
  TPNODE_CUDA_CHECK(cudaStreamWaitEvent(side_, fork_event_, 0));
}

void CudaBackend::join_side() {
  TPNODE_CUDA_CHECK(cudaEventRecord(join_event_, side_));
  TPNODE_CUDA_CHECK(cudaStreamWaitEvent(stream_, join_event_, 0));
}

// Within its scope the backend's ops go to the side stream with the side's gemm_dq workspace
// (the main stream may be running gemm_kq on its own). The scratch buffers they use otherwise
// (8-bit and BF16 copies of x) are not the ones gemm_kq reads, and the caches that name them
// stay right: the join orders every later reader after the side's writes.
class CudaBackend::OnSide {
 public:
  explicit OnSide(CudaBackend& b) : b_(b) { swap(); }
  ~OnSide() { swap(); }
  OnSide(const OnSide&) = delete;
  OnSide& operator=(const OnSide&) = delete;

 private:
  void swap() {
    std::swap(b_.stream_, b_.side_);
    std::swap(b_.dq_ws_, b_.side_ws_);
  }
  CudaBackend& b_;
};

void CudaBackend::wrote(const void* p, size_t bytes) {
  const auto* b = static_cast<const uint8_t*>(p);
  // What the peers hold of a pushed output is stale once anything writes it again.
  if (pushed_ != nullptr && b <= reinterpret_cast<const uint8_t*>(pushed_) &&
      reinterpret_cast<const uint8_t*>(pushed_) < b + bytes) {
    pushed_ = nullptr;
  }
  for (ActCache* c : {&act_, &bf16_act_, &kq_act_}) {
    if (c->x == nullptr) continue;
    const auto* a = static_cast<const uint8_t*>(c->x);
    const size_t a_len = static_cast<size_t>(c->n) * sizeof(float);
    if (b < a + a_len && a < b + bytes) *c = {};
  }
}

kc::QuantActs CudaBackend::act_buffers(int64_t n) {
  // Sized for the largest decode batch at once, so the buffers rarely move.
  const int64_t want = std::max<int64_t>(n, quant_gemv_max_ * std::max<int64_t>(max_cols_, 32));
  kc::QuantActs a;
  const uint64_t moves = mem_->scratch_moves();  // a regrown buffer lost its contents
  a.q = scratch_->act_q.as<int8_t>(want);
  a.d = scratch_->act_d.as<float>(want / 32 + 1);
  a.s = scratch_->act_s.as<float>(want / 32 + 1);
  if (moves != mem_->scratch_moves()) act_ = {};
  return a;
}

void CudaBackend::copy_to_device(void* dst, const void* src, size_t bytes) {
  wrote(dst, bytes);
  TPNODE_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, stream_));
}

void CudaBackend::copy_to_host(void* dst, const void* src, size_t bytes) {
  TPNODE_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, stream_));
  TPNODE_CUDA_CHECK(cudaStreamSynchronize(stream_));
}

kc::DeviceMatrix CudaBackend::view(const Weight& w) const {
  return kc::device_matrix(w.type, w.rows, w.cols, w.data);
}

Weight CudaBackend::finish_weight(TensorType type, int64_t rows, int64_t cols, void* data) {
  if (kc::is_quantized(type) &&
      std::find(loaded_.begin(), loaded_.end(), std::pair{type, cols}) == loaded_.end()) {
    loaded_.emplace_back(type, cols);
  }
  Weight w;
  w.type = type;
  w.rows = rows;
  w.cols = cols;
  w.data = data;
  w.row_stride = view(w).q_row_bytes;
  max_cols_ = std::max(max_cols_, cols);
  const uint64_t copy_bytes = static_cast<uint64_t>(rows) * cols * 2;
  const bool want_copy = type != TensorType::kBF16 && opt_.bf16_copy_fraction > 0.0 &&
                         bf16_copy_bytes_ + copy_bytes <=
                             opt_.bf16_copy_fraction * static_cast<double>(mem_->budget()) &&
                         mem_->fits(copy_bytes);
  if (want_copy) {
    auto* copy = static_cast<__nv_bfloat16*>(mem_->alloc(copy_bytes, "BF16 weight copy"));
    kc::dequant_to_bf16({.w = view(w), .row0 = 0, .rows = rows, .out = copy}, stream_);
    bf16_copy_bytes_ += copy_bytes;
    w.aux = copy;
  }
  return w;
}

Weight CudaBackend::upload_weight(const HostMatrix& m) {
  TPNODE_CHECK(m.data != nullptr && m.rows > 0 && m.cols > 0, "upload_weight: empty matrix");
  const size_t bytes = kc::split_matrix_bytes(m.type, m.rows, m.cols);
  std::vector<uint8_t> host(bytes);
  kc::repack_to_split(m.type, m.data, m.row_stride, m.rows, m.cols, host.data());
  void* dev = mem_->alloc(bytes, "weights");
  TPNODE_CUDA_CHECK(cudaMemcpyAsync(dev, host.data(), bytes, cudaMemcpyHostToDevice, stream_));
  TPNODE_CUDA_CHECK(cudaStreamSynchronize(stream_));  // `host` dies here
  return finish_weight(m.type, m.rows, m.cols, dev);
}

float* CudaBackend::upload_vector(TensorType type, const void* data, int64_t n) {
  std::vector<float> v(static_cast<size_t>(n));
  const auto* u16 = static_cast<const uint16_t*>(data);
  switch (type) {
    case TensorType::kF32: std::memcpy(v.data(), data, n * sizeof(float)); break;
    case TensorType::kF16:
      for (int64_t i = 0; i < n; ++i) v[i] = half_bits_to_float(u16[i]);
      break;
    case TensorType::kBF16:
      for (int64_t i = 0; i < n; ++i) v[i] = bf16_bits_to_float(u16[i]);
      break;
    default:
      TPNODE_THROW(ErrorKind::kUnsupported, "upload_vector: type {} not a float type",
                   kc::weight_type_label(type));
  }
  auto* dev = static_cast<float*>(mem_->alloc(n * sizeof(float), "vector"));
  TPNODE_CUDA_CHECK(cudaMemcpyAsync(dev, v.data(), n * sizeof(float), cudaMemcpyHostToDevice, stream_));
  TPNODE_CUDA_CHECK(cudaStreamSynchronize(stream_));
  return dev;
}

Weight CudaBackend::synth_weight(TensorType type, int64_t rows, int64_t cols, uint64_t seed) {
  const size_t bytes = kc::split_matrix_bytes(type, rows, cols);
  auto* dev = static_cast<uint8_t*>(mem_->alloc(bytes, "synthetic weights"));
  kc::synth_matrix({.type = type, .rows = rows, .cols = cols, .seed = seed, .out = dev}, stream_);
  return finish_weight(type, rows, cols, dev);
}

float* CudaBackend::synth_vector(int64_t n, float value) {
  auto* dev = static_cast<float*>(mem_->alloc(n * sizeof(float), "vector"));
  kc::fill({.out = dev, .n = n, .value = value}, stream_);
  return dev;
}

void CudaBackend::init_kv_cache(const KvCacheShape& shape) {
  TPNODE_CHECK(k_cache_ == nullptr, "init_kv_cache called twice");
  TPNODE_CHECK(shape.n_layer > 0 && shape.n_blocks > 0 && shape.block_size > 0 &&
                   shape.n_head_kv > 0 && shape.head_dim > 0,
               "init_kv_cache: empty shape");
  TPNODE_CHECK(shape.head_dim % 8 == 0, "CUDA KV cache needs head_dim % 8 == 0 (got {})",
               shape.head_dim);
  kv_shape_ = shape;
  kv_layer_bytes_ = static_cast<size_t>(shape.n_blocks) * shape.n_head_kv * shape.block_size *
                    shape.head_dim * 2;
  k_cache_ = mem_->alloc(kv_layer_bytes_ * shape.n_layer, "KV cache (K)");
  v_cache_ = mem_->alloc(kv_layer_bytes_ * shape.n_layer, "KV cache (V)");
  // Split decode attention counts finished splits here; zero now, and every launch leaves them
  // zero (the last split resets its counter), so graphs can replay them.
  const size_t counter_bytes = kc::kDecodeMaxCounters * sizeof(uint32_t);
  attn_counters_ = static_cast<uint32_t*>(mem_->alloc(counter_bytes, "attention split counters"));
  TPNODE_CUDA_CHECK(cudaMemsetAsync(attn_counters_, 0, counter_bytes, stream_));
  TPNODE_CUDA_CHECK(cudaStreamSynchronize(stream_));
}

kc::PagedKv CudaBackend::layer_kv(int64_t layer) const {
  kc::PagedKv kv;
  kv.k = static_cast<uint8_t*>(k_cache_) + layer * kv_layer_bytes_;
  kv.v = static_cast<uint8_t*>(v_cache_) + layer * kv_layer_bytes_;
  kv.block_size = kv_shape_.block_size;
  kv.n_head_kv = kv_shape_.n_head_kv;
  kv.head_dim = kv_shape_.head_dim;
  kv.dtype = opt_.kv_dtype == KvCacheDtype::kBF16 ? kc::KvDtype::kBF16 : kc::KvDtype::kF16;
  return kv;
}

kc::DeviceBatch CudaBackend::device_batch() const {
  return {.positions = step_.positions,
          .token_seq = step_.token_seq,
          .block_tables = step_.block_tables,
          .max_blocks = step_.max_blocks,
          .n_tokens = step_.n_tokens};
}

void CudaBackend::begin_step(const BatchMeta& b) {
  pushed_ = nullptr;
  if (capturing_) {
    // The last capture was left open by an exception: close and discard it.
    capturing_ = false;
    cudaGraph_t g = nullptr;
    cudaStreamEndCapture(stream_, &g);
    if (g) cudaGraphDestroy(g);
    cudaGetLastError();
  }
  const int64_t n = b.n_tokens(), ns = b.n_seqs();
  TPNODE_CHECK(b.positions.size() == static_cast<size_t>(n) &&
                   b.token_seq.size() == static_cast<size_t>(n),
               "begin_step: positions/token_seq sizes {} / {} for {} tokens", b.positions.size(),
               b.token_seq.size(), n);
  TPNODE_CHECK(b.seq_start.size() == static_cast<size_t>(ns + 1) &&
                   b.block_tables.size() == static_cast<size_t>(ns) * b.max_blocks,
               "begin_step: seq_start/block_tables sizes do not match {} sequences", ns);
  // Every slot a token writes or reads must be a real block: the kernels trust the tables.
  for (int64_t t = 0; t < n; ++t) {
    const int32_t s = b.token_seq[t], pos = b.positions[t];
    TPNODE_CHECK(s >= 0 && s < ns && pos >= 0, "begin_step: token {} has seq {} pos {}", t, s, pos);
    if (k_cache_ == nullptr) continue;
    const int64_t last_block = pos / kv_shape_.block_size;
    TPNODE_CHECK(last_block < b.max_blocks, "begin_step: token {} at pos {} past its block table",
                 t, pos);
    for (int64_t j = 0; j <= last_block; ++j) {
      const int32_t blk = b.block_tables[static_cast<size_t>(s) * b.max_blocks + j];
      TPNODE_CHECK(blk >= 0 && blk < kv_shape_.n_blocks,
                   "begin_step: seq {} block {} is {} (cache has {})", s, j, blk,
                   kv_shape_.n_blocks);
    }
  }
  for (int32_t r : b.logit_rows) {
    TPNODE_CHECK(r >= 0 && r < n, "begin_step: logit row {} of {} tokens", r, n);
  }

  std::vector<int32_t> decode;
  std::vector<int32_t> tiles;
  const bool tc = k_cache_ != nullptr && kc::prefill_attention_supports(kv_shape_.head_dim);
  for (int64_t s = 0; s < ns; ++s) {
    const int32_t first = b.seq_start[s], count = b.seq_start[s + 1] - first;
    if (tc && count >= kPrefillMinTokens) {
      for (int32_t i = 0; i < count; i += kc::kPrefillTile) {
        tiles.push_back(first + i);
        tiles.push_back(std::min<int32_t>(kc::kPrefillTile, count - i));
      }
    } else {
      for (int32_t i = 0; i < count; ++i) {
        decode.push_back(first + i);
      }
    }
  }

  // One buffer: tokens, positions, token_seq, block tables, logit rows, decode list, tiles.
  std::vector<int32_t> words;
  words.reserve(3 * n + b.block_tables.size() + b.logit_rows.size() + decode.size() + tiles.size());
  auto put = [&words](const std::vector<int32_t>& v) {
    const size_t off = words.size();
    words.insert(words.end(), v.begin(), v.end());
    while (words.size() % 4) words.push_back(0);  // 16-byte aligned sections
    return off;
  };
  const size_t o_tok = put(b.tokens), o_pos = put(b.positions), o_seq = put(b.token_seq);
  const size_t o_bt = put(b.block_tables), o_log = put(b.logit_rows);
  const size_t o_dec = put(decode), o_tiles = put(tiles);
  const int32_t* dev = uploader_->upload(words);

  step_ = Step{};
  step_.n_tokens = n;
  step_.n_seqs = ns;
  step_.n_logits = static_cast<int64_t>(b.logit_rows.size());
  step_.n_decode = static_cast<int64_t>(decode.size());
  step_.n_tiles = static_cast<int64_t>(tiles.size() / 2);
  step_.max_blocks = b.max_blocks;
  step_.tokens = dev + o_tok;
  step_.positions = dev + o_pos;
  step_.token_seq = dev + o_seq;
  step_.block_tables = dev + o_bt;
  step_.logit_rows = dev + o_log;
  step_.decode_tokens = dev + o_dec;
  step_.tiles = dev + o_tiles;
  act_ = {};
  bf16_act_ = {};
  kq_act_ = {};
}

void CudaBackend::embed(const Weight& table, float* x) {
  kc::gather_weight_rows({.table = view(table),
                          .ids = step_.tokens,
                          .chained = draws_->device_ids(),
                          .n = step_.n_tokens,
                          .out = x},
                         stream_);
  wrote(x, step_.n_tokens * table.cols * sizeof(float));
}

void CudaBackend::rmsnorm(const float* x, const float* w, float* y, int64_t rows, int64_t n,
                          float eps) {
  run_rmsnorm({.x = x, .w = w, .y = y, .rows = rows, .n = n, .eps = eps, .quant = {}});
}

// With `reduce`, p.r holds this rank's partial sums and the all-reduce of them runs first,
// inside the norm's launch (folds_reduce).
void CudaBackend::run_rmsnorm(kc::RmsNormParams p, const kc::OneShotParams* reduce,
                              bool pushed) {
  wrote(p.y, p.rows * p.n * sizeof(float));
  // Small batches feed a GEMV next: write the 8-bit copy on the way; large ones a BF16 GEMM.
  const bool fuse = p.n % 32 == 0 && p.rows <= quant_gemv_max_;
  if (fuse) p.quant = act_buffers(p.rows * p.n);
  if (p.n % 4 == 0 && reduce == nullptr) p.y_bf16 = fused_bf16_out(p.rows, p.n);
  // Batches that take gemm_kq next: its records too, instead of a gemm_kq_acts launch.
  const bool kq = opt_.norm_kq_records && reduce == nullptr && p.n % 256 == 0 &&
                  p.n <= kc::kRmsNormMaxKqCols &&
                  loaded(p.n, [&](TensorType t) { return gemm_kq_type(t, p.rows); });
  if (kq) p.kq = scratch_->gemm_xq.as<uint8_t>(kc::gemm_kq_acts_bytes(p.rows, p.n));
  if (reduce != nullptr) {
    kc::one_shot_all_reduce_rmsnorm({.reduce = *reduce, .norm = p, .pushed = pushed}, stream_);
  } else {
    kc::rmsnorm(p, stream_);
  }
  if (fuse) act_ = {p.y, p.rows * p.n};
  if (p.y_bf16 != nullptr) bf16_act_ = {p.y, p.rows * p.n, false, p.n};
  if (kq) kq_act_ = {.x = p.y, .n = p.rows * p.n, .cols = p.n};
}

// Where an op whose output [m, k] feeds a cuBLASLt GEMM writes its BF16 copy (the buffer that
// bf16_acts reads), or null for batches whose matmuls are GEMVs or gemm_dq (its own layout).
// Weights without a BF16 copy use gemm_dq up to dq_gemm_max_batch; for them the copy is
// wasted and bf16_acts converts again.
__nv_bfloat16* CudaBackend::fused_bf16_out(int64_t m, int64_t k) {
  if (m <= quant_gemv_max_ || m <= opt_.dq_gemm_over_copies_max_batch) return nullptr;
  return scratch_->gemm_x.as<__nv_bfloat16>(m * k);
}

bool CudaBackend::folds_reduce(int64_t m, int64_t n) const {
  return opt_.fold_all_reduce && kc::one_shot_rmsnorm_supports(m, n);
}

// x quantized to 8 bits for a quantized GEMV, reusing the copy an RMSNorm or SwiGLU wrote.
kc::QuantActs CudaBackend::quantized(const float* x, int64_t m, int64_t k, int group) {
  kc::QuantActs q = act_buffers(m * k);  // may move the buffers, which drops the cache
  q.group = group;
  const ActCache want{.x = x, .n = m * k, .group = group};
  if (act_ != want) {
    kc::quantize_acts({.x = x, .m = m, .k = k, .out = q}, stream_);
    act_ = want;
  }
  return q;
}

void CudaBackend::matmul(const Weight& w, const float* x, float* y, int64_t m) {
  const kc::DeviceMatrix dm = view(w);
  const int64_t gemv_max = kc::is_quantized(w.type) ? quant_gemv_max_ : kc::kFloatGemvBestBatch;
  if (m == 1 && kc::is_quantized(w.type)) {
    const MatmulOut one{&w, y};
    gemv1(std::span<const MatmulOut>(&one, 1), x);
  } else if (use_gemm_kq(dm, m)) {
    wrote(y, m * w.rows * sizeof(float));
    const kc::GemmKqParams p{
        .w = dm, .x = kq_acts(x, m, w.cols), .y = y, .m = m, .ldy = 0, .ws = dq_ws_};
    kc::gemm_kq(p, kc::gemm_kq_plan(p, kq_tuning()), stream_);
  } else if (use_kquant_mma(w, m)) {
    wrote(y, m * w.rows * sizeof(float));
    const kc::GemvParams p{.w = dm, .x = x, .xq = quantized(x, m, w.cols, 256), .y = y, .m = m};
    kc::GemvMmaPlan plan = kc::gemv_mma_plan(p);
    if (opt_.mma_row_tiles > 0) plan.row_tiles_per_warp = opt_.mma_row_tiles;
    if (opt_.mma_k_splits > 0) plan.k_splits = opt_.mma_k_splits;
    kc::gemv_mma(p, plan, stream_);
  } else if (m <= gemv_max && kc::gemv_supports(dm)) {
    kc::GemvParams p{.w = dm, .x = x, .xq = {}, .y = y, .m = m};
    if (kc::is_quantized(w.type)) p.xq = quantized(x, m, w.cols);
    wrote(y, m * w.rows * sizeof(float));
    kc::gemv(p, stream_);
  } else if (use_gemm_dq(w, dm, m)) {
    wrote(y, m * w.rows * sizeof(float));
    kc::gemm_dq({.w = dm,
                 .x = bf16_acts(x, m, w.cols, /*dq_layout=*/true),
                 .y = y,
                 .m = m,
                 .ldy = 0,
                 .ws = dq_ws_},
                stream_);
  } else {
    wrote(y, m * w.rows * sizeof(float));
    gemm(w, x, y, m);
  }
}

// Batch 1 on the int8 GEMV: each output also goes to the peers as the LL word that the folded
// norm's all-reduce waits for (GemvLlPush), so that norm sends nothing itself.
void CudaBackend::matmul_reduced(const Weight& w, const float* x, float* y, int64_t m,
                                 const void* reduce) {
  const auto* plan = static_cast<const kc::OneShotParams*>(reduce);
  const bool push = opt_.gemv_push && plan != nullptr && m == 1 && kc::is_quantized(w.type) &&
                    !opt_.gemv_stream && plan->data == y && plan->n == w.rows &&
                    folds_reduce(1, w.rows);
  if (!push) {
    matmul(w, x, y, m);
    return;
  }
  const MatmulOut one{&w, y};
  gemv1(std::span<const MatmulOut>(&one, 1), x, kc::one_shot_norm_push(*plan));
  pushed_ = y;
}

// Decode: q/k/v (gate/up) in one GEMV launch when they share a type and width: a quantized
// type at batch 1, a float type up to kFloatGemvBestBatch.
void CudaBackend::matmul_shared(std::span<const MatmulOut> outs, const float* x, int64_t m) {
  bool same = !outs.empty() && outs.size() <= static_cast<size_t>(kc::kMaxGemvGroup);
  bool all_quant = same;
  for (const MatmulOut& o : outs) {
    same = same && o.w->type == outs[0].w->type && o.w->cols == outs[0].w->cols;
    all_quant = all_quant && kc::is_quantized(o.w->type) && o.w->cols == outs[0].w->cols;
  }
  if (m == 1 && all_quant && !same) {
    gemv1_by_type(outs, x);
    return;
  }
  const bool quant = same && kc::is_quantized(outs[0].w->type);
  bool floats = same && !quant && m <= kc::kFloatGemvBestBatch;
  for (const MatmulOut& o : outs) floats = floats && kc::gemv_float_supports(view(*o.w));
  if (quant && m == 1) {
    gemv1(outs, x);
  } else if (kq_group(outs, x, m)) {
  } else if (floats) {
    auto p = group_of<kc::GemvFloatGroupParams>(outs);
    p.cols = outs[0].w->cols;
    p.x = x;
    p.m = m;
    wrote_outs(outs, m);
    kc::gemv_float_group(p, stream_);
  } else {
    Backend::matmul_shared(outs, x, m);
  }
}

// Batch 1 with the option: the norm runs inside the q/k/v (gate/up) GEMV when the group's
// kernel has that variant (gemv_norm_group_supports) and a residual add writes another buffer
// than it reads; the norm's float output y is not written.
void CudaBackend::norm_matmul_shared(const NormIn& in, std::span<const MatmulOut> outs,
                                     int64_t m) {
  if (in.reduce != nullptr) {
    TPNODE_CHECK(in.r != nullptr && in.x_out != nullptr && folds_reduce(m, in.n),
                 "norm_matmul_shared: an all-reduce to fold without a residual or past the limits");
    const auto* plan = static_cast<const kc::OneShotParams*>(in.reduce);
    TPNODE_CHECK(plan->data == in.r && plan->n == m * in.n,
                 "norm_matmul_shared: the all-reduce plan is for another buffer");
    wrote(in.x_out, m * in.n * sizeof(float));
    const bool pushed = pushed_ == in.r && m == 1;
    pushed_ = nullptr;
    run_rmsnorm({.x = in.x, .w = in.w, .y = in.y, .rows = m, .n = in.n, .eps = in.eps, .quant = {},
                 .r = in.r, .x_out = in.x_out},
                plan, pushed);
    matmul_shared(outs, in.y, m);
    return;
  }
  bool fuse = opt_.fuse_norm_gemv && m == 1 && (in.r == nullptr || in.x_out != in.x) &&
              !outs.empty() && outs.size() <= static_cast<size_t>(kc::kMaxGemvGroup);
  kc::GemvGroupParams p;
  if (fuse) {
    p = group_of<kc::GemvGroupParams>(outs);
    p.cols = in.n;
    fuse = kc::gemv_norm_group_supports(p);
  }
  if (!fuse) {
    Backend::norm_matmul_shared(in, outs, m);
    return;
  }
  wrote_outs(outs, 1);
  if (in.r != nullptr) wrote(in.x_out, in.n * sizeof(float));
  act_ = {};  // y's 8-bit copy was not written
  kc::gemv_norm_group(p, {.x = in.x, .r = in.r, .x_out = in.x_out, .w = in.w, .eps = in.eps},
                      stream_);
}

// Batch-1 quantized GEMVs of matrices of one type and width that share x, in one launch.
void CudaBackend::gemv1(std::span<const MatmulOut> outs, const float* x,
                        const kc::GemvLlPush& push) {
  const int64_t k = outs[0].w->cols;
  auto p = group_of<kc::GemvGroupParams>(outs);
  p.cols = k;
  p.xq = quantized(x, 1, k);
  p.push = push;
  wrote_outs(outs, 1);
  if (push.peers == 0 && opt_.gemv_stream && kc::gemv_stream_supports(p)) {
    kc::gemv_stream(p, stream_);
  } else {
    kc::gemv_group(p, stream_);
  }
}

// Quantized matrices of several types sharing x at batch 1 (q/k/v of a Q4_K_M model whose v
// is Q6_K): one gemv1 launch per type, in the order each type first appears. (On the side
// stream they gained nothing: each GEMV already starts during the one before it, PDL.)
void CudaBackend::gemv1_by_type(std::span<const MatmulOut> outs, const float* x) {
  MatmulOut group[kc::kMaxGemvGroup];
  bool done[kc::kMaxGemvGroup] = {};
  for (size_t i = 0; i < outs.size(); ++i) {
    if (done[i]) continue;
    size_t n = 0;
    for (size_t j = i; j < outs.size(); ++j) {
      if (!done[j] && outs[j].w->type == outs[i].w->type) {
        group[n++] = outs[j];
        done[j] = true;
      }
    }
    gemv1(std::span<const MatmulOut>(group, n), x);
  }
}

void CudaBackend::add_rmsnorm(const NormIn& in, int64_t rows) {
  TPNODE_CHECK(in.r != nullptr && in.x_out != nullptr, "add_rmsnorm: no residual or no x_out");
  wrote(in.x_out, rows * in.n * sizeof(float));
  run_rmsnorm({.x = in.x, .w = in.w, .y = in.y, .rows = rows, .n = in.n, .eps = in.eps,
               .quant = {}, .r = in.r, .x_out = in.x_out});
}

bool CudaBackend::use_kquant_mma(const Weight& w, int64_t m) const {
  return kc::gemv_mma_block_type(w.type) && m >= 2 && m <= opt_.kquant_mma_max_batch;
}

// The Q4_K matrices among outs in one gemm_kq launch when they take gemm_kq at this batch
// and share a width, the others one by one; false (nothing run) when fewer than two do.
bool CudaBackend::kq_group(std::span<const MatmulOut> outs, const float* x, int64_t m) {
  kc::GemmKqGroupParams g;
  bool grouped[kc::kGemmKqMaxGroup] = {};
  for (size_t i = 0; i < outs.size() && outs.size() <= static_cast<size_t>(kc::kGemmKqMaxGroup);
       ++i) {
    const kc::DeviceMatrix dm = view(*outs[i].w);
    if (use_gemm_kq(dm, m) && (g.n == 0 || dm.cols == g.outs[0].w.cols)) {
      g.outs[g.n++] = {.w = dm, .y = outs[i].y, .ldy = 0};
      grouped[i] = true;
    }
  }
  if (g.n < 2) return false;
  wrote_outs(outs, m);
  // The others first, on the side stream where there is one, so they run beside gemm_kq.
  const bool side = side_ != nullptr && g.n < static_cast<int>(outs.size());
  if (side) {
    fork_side();
    OnSide on(*this);
    for (size_t i = 0; i < outs.size(); ++i) {
      if (!grouped[i]) matmul(*outs[i].w, x, outs[i].y, m);
    }
  }
  g.x = kq_acts(x, m, g.outs[0].w.cols);
  g.m = m;
  g.ws = dq_ws_;
  kc::gemm_kq_group(g, kc::gemm_kq_plan(g, kq_tuning()), stream_);
  if (side) {
    join_side();
  } else {
    for (size_t i = 0; i < outs.size(); ++i) {
      if (!grouped[i]) matmul(*outs[i].w, x, outs[i].y, m);
    }
  }
  return true;
}

kc::GemmKqTuning CudaBackend::kq_tuning() const {
  return {.max_tile_tokens = opt_.gemm_kq_tile_tokens,
          .ctas_per_sm = opt_.gemm_kq_ctas_per_sm,
          .stream_k = opt_.gemm_kq_stream_k};
}

bool CudaBackend::use_gemm_kq_batch(int64_t m) const {
  return gemm_kq_ && m >= std::max<int64_t>(2, opt_.gemm_kq_min_batch) &&
         m <= opt_.gemm_kq_max_batch;
}

bool CudaBackend::use_gemm_kq(const kc::DeviceMatrix& dm, int64_t m) const {
  return gemm_kq_type(dm.type, m) && kc::gemm_kq_supports(dm);
}

// x [m, k] in gemm_kq's 8-bit records, reusing the copy made for the previous matmul of the
// same x (q, k and v; gate and up).
const uint8_t* CudaBackend::kq_acts(const float* x, int64_t m, int64_t k) {
  const uint64_t moves = mem_->scratch_moves();  // a regrown buffer lost its contents
  auto* xq = scratch_->gemm_xq.as<uint8_t>(kc::gemm_kq_acts_bytes(m, k));
  const ActCache want{.x = x, .n = m * k, .cols = k};
  if (moves != mem_->scratch_moves() || kq_act_ != want) {
    kc::gemm_kq_acts({.x = x, .y = xq, .m = m, .cols = k}, stream_);
    kq_act_ = want;
  }
  return xq;
}

bool CudaBackend::use_gemm_dq(const Weight& w, const kc::DeviceMatrix& dm, int64_t m) const {
  return (w.aux == nullptr || m <= opt_.dq_gemm_over_copies_max_batch) && m > quant_gemv_max_ &&
         m <= opt_.dq_gemm_max_batch && kc::gemm_dq_supports(dm);
}


// x [m, k] converted to BF16 for a GEMM (row-major, or gemm_dq's layout), reusing the copy
// made for the previous matmul of the same x (q, k and v; gate and up).
const __nv_bfloat16* CudaBackend::bf16_acts(const float* x, int64_t m, int64_t k, bool dq_layout) {
  const uint64_t moves = mem_->scratch_moves();  // a regrown buffer lost its contents
  const int64_t n = m * k;
  auto* xb = scratch_->gemm_x.as<__nv_bfloat16>(dq_layout ? kc::gemm_dq_acts_elems(m, k) : n);
  const ActCache want{.x = x, .n = n, .dq_layout = dq_layout, .cols = k};
  if (moves != mem_->scratch_moves() || bf16_act_ != want) {
    if (dq_layout) {
      kc::gemm_dq_acts({.x = x, .y = xb, .m = m, .cols = k}, stream_);
    } else {
      kc::f32_to_bf16({.x = x, .y = xb, .n = n}, stream_);
    }
    bf16_act_ = want;
  }
  return xb;
}

void CudaBackend::gemm(const Weight& w, const float* x, float* y, int64_t m) {
  const int64_t n = w.rows, k = w.cols;
  const __nv_bfloat16* xb = bf16_acts(x, m, k);
  const __nv_bfloat16* wb = nullptr;
  if (w.type == TensorType::kBF16) wb = static_cast<const __nv_bfloat16*>(w.data);
  if (w.aux != nullptr) wb = static_cast<const __nv_bfloat16*>(w.aux);
  if (wb != nullptr) {
    gemm_->run({.w = wb, .x = xb, .y = y, .m = m, .n = n, .k = k, .ldy = n}, stream_);
    return;
  }
  // Row chunks (multiples of 128 rows keep y's column offsets aligned) through a staging buffer.
  int64_t chunk = static_cast<int64_t>(kDequantChunkBytes / (static_cast<size_t>(k) * 2));
  chunk = std::max<int64_t>(128, chunk / 128 * 128);
  chunk = std::min(chunk, n);
  auto* stage = scratch_->gemm_w.as<__nv_bfloat16>(chunk * k);
  for (int64_t r0 = 0; r0 < n; r0 += chunk) {
    const int64_t rows = std::min(chunk, n - r0);
    kc::dequant_to_bf16({.w = view(w), .row0 = r0, .rows = rows, .out = stage}, stream_);
    gemm_->run({.w = stage, .x = xb, .y = y + r0, .m = m, .n = rows, .k = k, .ldy = n}, stream_);
  }
}

void CudaBackend::add_bias(float* y, const float* b, int64_t m, int64_t n) {
  wrote(y, m * n * sizeof(float));
  kc::add_bias({.y = y, .b = b, .m = m, .n = n}, stream_);
}

void CudaBackend::rope(float* q, float* k, const RopeParams& p) {
  wrote(q, step_.n_tokens * p.n_head * p.head_dim * sizeof(float));
  wrote(k, step_.n_tokens * p.n_head_kv * p.head_dim * sizeof(float));
  kc::rope({.q = q,
            .k = k,
            .positions = step_.positions,
            .n_tokens = step_.n_tokens,
            .n_head = p.n_head,
            .n_head_kv = p.n_head_kv,
            .head_dim = p.head_dim,
            .style = p.style,
            .inv_freq = rope_freqs(p)},
           stream_);
}

// The same host table as the CPU backend (transformers' float32 recipe), uploaded once.
const float* CudaBackend::rope_freqs(const RopeParams& p) {
  auto same = [&p](const RopeParams& k) {
    return k.head_dim == p.head_dim && k.theta == p.theta && k.scaling.kind == p.scaling.kind &&
           k.scaling.factor == p.scaling.factor &&
           k.scaling.low_freq_factor == p.scaling.low_freq_factor &&
           k.scaling.high_freq_factor == p.scaling.high_freq_factor &&
           k.scaling.original_context == p.scaling.original_context &&
           k.scaling.freq_factors == p.scaling.freq_factors;
  };
  for (const RopeFreqs& f : rope_freqs_) {
    if (same(f.key)) return f.dev;
  }
  const std::vector<float> host = cpu::rope_inv_freq(p.head_dim, p.theta, p.scaling);
  auto* dev = static_cast<float*>(mem_->alloc(host.size() * sizeof(float), "RoPE table"));
  TPNODE_CUDA_CHECK(cudaMemcpyAsync(dev, host.data(), host.size() * sizeof(float),
                                    cudaMemcpyHostToDevice, stream_));
  TPNODE_CUDA_CHECK(cudaStreamSynchronize(stream_));  // `host` dies here
  rope_freqs_.push_back({p, dev});
  return dev;
}

void CudaBackend::attention(const float* q, const float* k, const float* v, float* out,
                            const AttentionParams& p) {
  TPNODE_CHECK(k_cache_ != nullptr, "attention before init_kv_cache");
  TPNODE_CHECK(p.layer >= 0 && p.layer < kv_shape_.n_layer && p.n_head_kv == kv_shape_.n_head_kv &&
                   p.head_dim == kv_shape_.head_dim && p.n_head % p.n_head_kv == 0,
               "attention: layer {} with {} heads / {} KV heads of dim {} does not match the "
               "KV cache ({} layers, {} KV heads of dim {})",
               p.layer, p.n_head, p.n_head_kv, p.head_dim, kv_shape_.n_layer, kv_shape_.n_head_kv,
               kv_shape_.head_dim);
  TPNODE_CHECK(
      p.rope == nullptr || (p.rope->n_head == p.n_head && p.rope->n_head_kv == p.n_head_kv &&
                            p.rope->head_dim == p.head_dim),
      "attention: RoPE over {} heads / {} KV heads of dim {} for attention over {} / {} of dim {}",
      p.rope ? p.rope->n_head : 0, p.rope ? p.rope->n_head_kv : 0, p.rope ? p.rope->head_dim : 0,
      p.n_head, p.n_head_kv, p.head_dim);
  const int64_t n_out = step_.n_tokens * p.n_head * p.head_dim;
  wrote(out, n_out * sizeof(float));
  const kc::PagedKv kv = layer_kv(p.layer);
  const kc::DeviceBatch batch = device_batch();
  // When every sequence brings exactly one token (decode steps, all graph steps), the decode
  // kernel stores K and V itself: no launch reads a token's slot but that token's own CTAs.
  // It then also rotates q and the new keys as it reads them; other steps rotate first.
  const bool all_decode = step_.n_decode == step_.n_tokens;
  const bool fused_store = all_decode && step_.n_tiles == 0 && step_.n_tokens == step_.n_seqs;
  const bool fused_rope = p.rope != nullptr && fused_store && kc::decode_rope_supports(p.head_dim);
  // q and k are writable when rope is set (AttentionParams::rope).
  if (p.rope != nullptr && !fused_rope) rope(const_cast<float*>(q), const_cast<float*>(k), *p.rope);
  if (!fused_store) kc::kv_store({.kv = kv, .batch = batch, .k = k, .v = v}, stream_);
  // Decode-sized outputs feed the attn_output GEMV next: the kernel writes their 8-bit copy.
  const bool quant =
      all_decode && step_.n_decode > 0 && step_.n_tokens <= quant_gemv_max_ && p.head_dim % 32 == 0;
  if (step_.n_decode > 0) {
    kc::DecodeAttentionParams d{.kv = kv,
                                .batch = batch,
                                .q = q,
                                .out = out,
                                .tokens = all_decode ? nullptr : step_.decode_tokens,
                                .n = step_.n_decode,
                                .n_head = p.n_head,
                                .scale = p.scale};
    if (fused_store) {
      d.k_new = k;
      d.v_new = v;
    }
    if (fused_rope) d.rope = {.inv_freq = rope_freqs(*p.rope), .style = p.rope->style};
    if (quant) d.quant = act_buffers(n_out);
    d.mma = opt_.decode_mma_min_batch > 0 && step_.n_decode >= opt_.decode_mma_min_batch &&
            prop_.major >= 8 && kc::decode_mma_supports(p.n_head, p.n_head_kv, p.head_dim);
    const kc::DecodeSplit split = kc::plan_decode_split(
        {.n = step_.n_decode,
         .n_head = p.n_head,
         .n_head_kv = p.n_head_kv,
         .head_dim = p.head_dim,
         .max_keys = static_cast<int64_t>(step_.max_blocks) * kv_shape_.block_size,
         .n_sms = prop_.multiProcessorCount,
         .max_splits = opt_.decode_max_splits,
         .clusters = opt_.decode_clusters && prop_.major >= 9,
         .heads_per_cta = opt_.decode_heads_per_cta,
         .mma = d.mma,
         .mma_warps = opt_.decode_mma_warps,
         .mma_deep = opt_.decode_mma_deep,
         .mma_whole = kc::decode_mma_whole_fits(p.head_dim, prop_.sharedMemPerBlockOptin)});
    d.heads_per_cta = opt_.decode_heads_per_cta;
    // Batches whose attn_output takes gemm_kq: its records too, instead of a gemm_kq_acts launch.
    const int64_t width = p.n_head * p.head_dim;
    const bool kq =
        opt_.attention_kq_records && all_decode && width % 256 == 0 &&
        kc::decode_kq_records_supports(
            p.n_head, p.n_head_kv, p.head_dim,
            kc::decode_heads_per_cta(p.n_head / p.n_head_kv, opt_.decode_heads_per_cta,
                                     step_.n_decode, p.n_head_kv, d.mma),
            split.cluster) &&
        loaded(width, [&](TensorType t) { return gemm_kq_type(t, step_.n_decode); });
    if (kq) d.kq = scratch_->gemm_xq.as<uint8_t>(kc::gemm_kq_acts_bytes(step_.n_decode, width));
    d.n_splits = split.n_splits;
    d.split_len = split.split_len;
    d.cluster = split.cluster;
    d.mma_warps = split.mma_warps;
    d.mma_deep = split.mma_deep;
    if (split.n_splits > 1 && !split.cluster) {
      d.part_out = scratch_->attn_out.as<float>(split.part_out_floats);
      d.counters = attn_counters_;
      d.part_lse = scratch_->attn_lse.as<float>(split.part_lse_floats);
    }
    kc::decode_attention(d, stream_);
    if (quant) act_ = {out, n_out};
    if (kq) kq_act_ = {.x = out, .n = n_out, .cols = width};
  }
  if (step_.n_tiles > 0) {
    kc::prefill_attention({.kv = kv,
                           .batch = batch,
                           .q = q,
                           .out = out,
                           .tiles = step_.tiles,
                           .n_tiles = step_.n_tiles,
                           .n_head = p.n_head,
                           .scale = p.scale},
                          stream_);
  }
}

void CudaBackend::swiglu(const float* gate, const float* up, float* out, int64_t n) {
  wrote(out, n * sizeof(float));
  kc::SwigluParams p{.gate = gate, .up = up, .out = out, .n = n, .quant = {}};
  // Decode-sized inputs feed a GEMV next (n = m * n_ff, m <= quant_gemv_max_batch), larger
  // ones a BF16 GEMM. The copy takes the layout that the next matmul's kernel reads where a
  // weight of this width takes it: 256-value groups for the K-quant MMA GEMVs (batches 2 to
  // kquant_mma_max_batch of the types gemm_kq leaves to them), gemm_dq's BF16 layout above the
  // GEMVs, plain BF16 for cuBLASLt.
  const int64_t m = step_.n_tokens, k = m > 0 && n % m == 0 ? n / m : 0;
  const bool k256 = k > 0 && k % 256 == 0;
  const bool group256 = k256 && m >= 2 && m <= opt_.kquant_mma_max_batch &&
                        loaded(k, [&](TensorType t) {
                          return kc::gemv_mma_block_type(t) && !gemm_kq_type(t, m);
                        });
  bool fuse = n % 32 == 0 && n <= quant_gemv_max_ * std::max<int64_t>(max_cols_, 32);
  // gemm_kq's records for the Q4_K weights of this width that take it at this batch. The
  // records' kernel writes the 8-bit copy in groups of 256 only: where another weight of this
  // width would read groups of 32, gemm_kq_acts makes the records instead; where none reads
  // the copy at all, it is not written.
  bool kq = opt_.swiglu_kq_records && k256 &&
            loaded(k, [&](TensorType t) { return gemm_kq_type(t, m); });
  if (kq && fuse && !group256) {
    const bool copy_read = loaded(k, [&](TensorType t) { return !gemm_kq_type(t, m); });
    if (copy_read) {
      kq = false;
    } else {
      fuse = false;
    }
  }
  if (fuse) {
    p.quant = act_buffers(n);
    if (group256) p.quant.group = 256;
  }
  if (kq) {
    p.kq = scratch_->gemm_xq.as<uint8_t>(kc::gemm_kq_acts_bytes(m, k));
    p.cols = k;
  }
  const bool dq = k256 && m > quant_gemv_max_ && m <= opt_.dq_gemm_over_copies_max_batch &&
                  m <= opt_.dq_gemm_max_batch &&
                  loaded(k, [&](TensorType t) { return !gemm_kq_type(t, m); });
  if (dq) {
    p.out_dq = scratch_->gemm_x.as<__nv_bfloat16>(kc::gemm_dq_acts_elems(m, k));
    p.cols = k;
  }
  if (k > 0) p.out_bf16 = fused_bf16_out(m, k);
  kc::swiglu(p, stream_);
  if (fuse) act_ = {.x = out, .n = n, .group = p.quant.group};
  if (p.out_bf16 != nullptr) bf16_act_ = {out, n, false, k};
  if (dq) bf16_act_ = {.x = out, .n = n, .dq_layout = true, .cols = k};
  if (kq) kq_act_ = {.x = out, .n = n, .cols = k};
}

void CudaBackend::add(const float* x, const float* y, float* out, int64_t n) {
  wrote(out, n * sizeof(float));
  kc::add({.x = x, .y = y, .out = out, .n = n}, stream_);
}

void CudaBackend::gather_rows(const float* x, float* out, int64_t row_len) {
  wrote(out, step_.n_logits * row_len * sizeof(float));
  kc::gather_act_rows({.x = x, .rows = step_.logit_rows, .n = step_.n_logits, .row_len = row_len,
                       .out = out},
                      stream_);
}

void CudaBackend::drop_graphs() {
  for (DecodeGraph& g : graphs_) TPNODE_CUDA_CHECK(cudaGraphExecDestroy(g.exec));
  graphs_.clear();
}

bool CudaBackend::graph_replay(const GraphKey& key) {
  if (!opt_.use_cuda_graphs) return false;
  if (mem_->scratch_moves() != graphs_moves_) {
    drop_graphs();
    graphs_moves_ = mem_->scratch_moves();
  }
  for (const DecodeGraph& g : graphs_) {
    if (g.key == key) {
      TPNODE_CUDA_CHECK(cudaGraphLaunch(g.exec, stream_));
      return true;
    }
  }
  return false;
}

void CudaBackend::graph_capture_begin(const GraphKey& key) {
  if (!opt_.use_cuda_graphs) return;
  if (std::find(sized_keys_.begin(), sized_keys_.end(), key) == sized_keys_.end()) {
    sized_keys_.push_back(key);  // this step runs op by op and sizes the scratch buffers
    return;
  }
  graphs_moves_ = mem_->scratch_moves();
  TPNODE_CUDA_CHECK(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeThreadLocal));
  capturing_ = true;
  capture_key_ = key;
}

void CudaBackend::graph_capture_end() {
  if (!capturing_) return;
  capturing_ = false;
  cudaGraph_t graph = nullptr;
  TPNODE_CUDA_CHECK(cudaStreamEndCapture(stream_, &graph));
  TPNODE_CHECK_KIND(mem_->scratch_moves() == graphs_moves_, ErrorKind::kRuntime,
                    "a scratch buffer moved while capturing the decode graph for {} sequences",
                    capture_key_.n_seqs);
  cudaGraphExec_t exec = nullptr;
  const cudaError_t err = cudaGraphInstantiate(&exec, graph, 0);
  cudaGraphDestroy(graph);
  TPNODE_CUDA_CHECK(err);
  graphs_.push_back({capture_key_, exec});
  TPNODE_CUDA_CHECK(cudaGraphLaunch(exec, stream_));
}

void CudaBackend::sample_tokens(const float* logits, int64_t n_vocab,
                                const std::vector<SampleRow>& rows, int32_t* tokens) {
  TPNODE_CHECK(draws_->outstanding() == 0,
               "sample_tokens: asynchronous draws are outstanding (take them first)");
  if (rows.empty()) return;
  if (rows.size() > draws_->max_rows()) {
    // More rows than a step of this backend carries (direct calls): buffers of their own.
    run_sampling(logits, n_vocab, rows, tokens, nullptr);
    return;
  }
  draws_->push(logits, n_vocab, rows);
  draws_->take(tokens, rows.size());
}

void CudaBackend::sample_async(const float* logits, int64_t n_vocab,
                               const std::vector<SampleRow>& rows) {
  draws_->push(logits, n_vocab, rows);
}

void CudaBackend::take_sampled(int32_t* tokens, size_t n) { draws_->take(tokens, n); }

void CudaBackend::argmax_rows(const float* logits, int64_t n_vocab,
                              const std::vector<int32_t>& rows, float* best, int32_t* ids) {
  std::vector<SampleRow> greedy(rows.size());
  for (size_t i = 0; i < rows.size(); ++i) greedy[i] = {.logit_row = rows[i], .temperature = 0.0f};
  run_sampling(logits, n_vocab, greedy, ids, best);
}

void CudaBackend::run_sampling(const float* logits, int64_t n_vocab,
                               const std::vector<SampleRow>& rows, int32_t* tokens, float* best) {
  if (rows.empty()) return;
  if (rows.size() > sample_capacity_) {
    if (sample_params_ != nullptr) {
      mem_->free(sample_params_);
      mem_->free(sampled_);
      mem_->free(sampled_best_);
    }
    sample_capacity_ = std::max<size_t>(rows.size(), 64);
    sample_params_ = static_cast<kc::SampleRowParams*>(
        mem_->alloc(sample_capacity_ * sizeof(kc::SampleRowParams), "sampling parameters"));
    sampled_ = static_cast<int32_t*>(mem_->alloc(sample_capacity_ * sizeof(int32_t), "sampled tokens"));
    sampled_best_ = static_cast<float*>(mem_->alloc(sample_capacity_ * sizeof(float), "greedy logits"));
  }
  std::vector<kc::SampleRowParams> host(rows.size());
  std::transform(rows.begin(), rows.end(), host.begin(), kc::device_row);
  // From pageable memory: the copy has left `host` when cudaMemcpyAsync returns.
  TPNODE_CUDA_CHECK(cudaMemcpyAsync(sample_params_, host.data(),
                                    host.size() * sizeof(kc::SampleRowParams),
                                    cudaMemcpyHostToDevice, stream_));
  kc::sample_tokens({.logits = logits,
                     .n_vocab = n_vocab,
                     .rows = sample_params_,
                     .n_rows = static_cast<int32_t>(rows.size()),
                     .tokens = sampled_,
                     .best = best != nullptr ? sampled_best_ : nullptr},
                    stream_);
  TPNODE_CUDA_CHECK(cudaMemcpyAsync(tokens, sampled_, rows.size() * sizeof(int32_t),
                                    cudaMemcpyDeviceToHost, stream_));
  if (best != nullptr) {
    TPNODE_CUDA_CHECK(cudaMemcpyAsync(best, sampled_best_, rows.size() * sizeof(float),
                                      cudaMemcpyDeviceToHost, stream_));
  }
  TPNODE_CUDA_CHECK(cudaStreamSynchronize(stream_));
}

CudaDeviceInfo CudaBackend::info() const {
  return {.name = prop_.name,
          .sm_count = prop_.multiProcessorCount,
          .total_bytes = total_bytes_,
          .budget_bytes = mem_->budget(),
          .used_bytes = mem_->used()};
}

double CudaBackend::measure_copy_bandwidth(uint64_t bytes) {
  void* a = mem_->alloc(bytes, "bandwidth probe");
  void* b = mem_->alloc(bytes, "bandwidth probe");
  TPNODE_CUDA_CHECK(cudaMemsetAsync(a, 1, bytes, stream_));
  constexpr int kIters = 20;
  for (int i = 0; i < 3; ++i) {
    TPNODE_CUDA_CHECK(cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice, stream_));
  }
  kc::EventTimer timer(stream_);
  timer.start();
  for (int i = 0; i < kIters; ++i) {
    TPNODE_CUDA_CHECK(cudaMemcpyAsync(i % 2 ? a : b, i % 2 ? b : a, bytes,
                                      cudaMemcpyDeviceToDevice, stream_));
  }
  const double ms = timer.stop_ms();
  mem_->free(a);
  mem_->free(b);
  return 2.0 * static_cast<double>(bytes) * kIters / (ms * 1e-3);
}

double CudaBackend::measure_gemm_flops(int64_t dim) {
  auto* a = static_cast<uint8_t*>(mem_->alloc(dim * dim * 2, "GEMM probe"));
  auto* b = static_cast<uint8_t*>(mem_->alloc(dim * dim * 2, "GEMM probe"));
  auto* c = static_cast<float*>(mem_->alloc(dim * dim * 4, "GEMM probe"));
  kc::synth_matrix({.type = TensorType::kBF16, .rows = dim, .cols = dim, .seed = 11, .out = a}, stream_);
  kc::synth_matrix({.type = TensorType::kBF16, .rows = dim, .cols = dim, .seed = 12, .out = b}, stream_);
  const kc::GemmArgs args{.w = reinterpret_cast<const __nv_bfloat16*>(a),
                          .x = reinterpret_cast<const __nv_bfloat16*>(b),
                          .y = c, .m = dim, .n = dim, .k = dim, .ldy = dim};
  for (int i = 0; i < 3; ++i) gemm_->run(args, stream_);
  constexpr int kIters = 10;
  kc::EventTimer timer(stream_);
  timer.start();
  for (int i = 0; i < kIters; ++i) gemm_->run(args, stream_);
  const double ms = timer.stop_ms();
  mem_->free(a);
  mem_->free(b);
  mem_->free(c);
  return 2.0 * static_cast<double>(dim) * dim * dim * kIters / (ms * 1e-3);
}

}  // namespace

int cuda_device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return n;
}

std::unique_ptr<Backend> make_cuda_backend(const CudaBackendOptions& options) {
  return std::make_unique<CudaBackend>(options);
}

CudaDeviceInfo cuda_device_info(const Backend& backend) {
  return dynamic_cast<const CudaBackend&>(backend).info();
}

void* cuda_backend_stream(Backend& backend) {
  return dynamic_cast<CudaBackend&>(backend).stream();
}

double cuda_measure_copy_bandwidth(Backend& backend, uint64_t bytes) {
  return dynamic_cast<CudaBackend&>(backend).measure_copy_bandwidth(bytes);
}

void cuda_profiler_capture(bool on) {
  if (on) {
    TPNODE_CUDA_CHECK(cudaProfilerStart());
  } else {
    TPNODE_CUDA_CHECK(cudaProfilerStop());
  }
}

double cuda_measure_bf16_gemm_flops(Backend& backend, int64_t dim) {
  return dynamic_cast<CudaBackend&>(backend).measure_gemm_flops(dim);
}

}  // namespace tpnode
