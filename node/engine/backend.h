// The ops one forward step needs. The layer sequence is written once (engine/forward.cpp)
// over this interface; CpuBackend and CudaBackend implement ops, never the sequence.
//
// Memory: pointers passed to ops are backend memory (host for CPU, device for CUDA), taken
// from alloc(). Activations are F32, row-major [rows, features]. Ops are stream-ordered on
// the backend's single stream; only copy_to_host() and sync() wait.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string_view>
#include <vector>

#include "node/common/error.h"
#include "node/model/hparams.h"
#include "node/model/tensor_type.h"

namespace tpnode {

// A weight matrix resident on the backend: y[m, rows] = x[m, cols] · Wᵀ.
struct Weight {
  TensorType type = TensorType::kF32;
  int64_t rows = 0;        // output features
  int64_t cols = 0;        // input features; a multiple of the type's block size
  size_t row_stride = 0;   // bytes between rows
  const void* data = nullptr;  // backend memory
  const void* aux = nullptr;   // backend-private (e.g. a BF16 copy for GEMM); may be null
};

// A host region of a model tensor, to be copied into backend memory by upload_weight().
struct HostMatrix {
  TensorType type = TensorType::kF32;
  const uint8_t* data = nullptr;  // first byte of the first row of the slice
  int64_t rows = 0;
  int64_t cols = 0;
  size_t row_stride = 0;          // bytes between consecutive rows in the source
};

// This step's batch, as the host builds it. Tokens of a sequence are contiguous and ordered.
struct BatchMeta {
  std::vector<int32_t> tokens;        // [n_tokens]; -1 - i: id i of the last draw (can_chain)
  std::vector<int32_t> positions;     // [n_tokens] absolute position in its sequence
  std::vector<int32_t> token_seq;     // [n_tokens] index into the sequences below
  std::vector<int32_t> seq_start;     // [n_seqs + 1] first token of each sequence
  std::vector<int32_t> seq_kv_len;    // [n_seqs] KV length after this step (n_past + new)
  std::vector<int32_t> block_tables;  // [n_seqs * max_blocks] KV block ids, -1 padded
  int32_t max_blocks = 0;             // columns of block_tables
  std::vector<int32_t> logit_rows;    // token indices whose hidden state feeds the LM head

  int32_t n_tokens() const { return static_cast<int32_t>(tokens.size()); }
  int32_t n_seqs() const { return static_cast<int32_t>(seq_kv_len.size()); }
};

// This rank's share of the paged KV cache.
struct KvCacheShape {
  int64_t n_layer = 0;
  int64_t n_blocks = 0;
  int64_t block_size = 16;  // tokens per block
  int64_t n_head_kv = 0;    // KV heads held by this rank
  int64_t head_dim = 0;
};

struct RopeParams {
  int64_t n_head = 0;     // query heads in q (this rank's)
  int64_t n_head_kv = 0;  // kv heads in k (this rank's)
  int64_t head_dim = 0;
  RopeStyle style = RopeStyle::kNeox;
  float theta = 10000.0f;
  RopeScaling scaling;
};

struct AttentionParams {
  int64_t layer = 0;
  int64_t n_head = 0;     // this rank's query heads
  int64_t n_head_kv = 0;  // this rank's KV heads; n_head % n_head_kv == 0
  int64_t head_dim = 0;
  float scale = 1.0f;     // usually 1/sqrt(head_dim)
  // When set, q and k are rotated at the batch positions first (as rope() with these
  // parameters), so that a backend can fold RoPE into its attention. q and k must then be
  // writable, and hold unspecified values afterwards (rotated in place, or unchanged where
  // the rotation happened on the fly): nothing may read them after the call.
  const RopeParams* rope = nullptr;
};

// One row of device sampling (Backend::sample_tokens): the host Sampler's greedy /
// temperature / top-k / top-p / min-p, without penalties.
struct SampleRow {
  int32_t logit_row = 0;     // row of the logits buffer
  float temperature = 0.0f;  // <= 0: greedy (argmax, lowest id on ties)
  int32_t top_k = 0;         // 0: off
  float top_p = 1.0f;        // 1: off
  float min_p = 0.0f;        // 0: off
  uint64_t seed = 0;
  uint64_t draw = 0;         // which draw of this seed (the engine passes the token's position)
};

// The shape a decode-only step is padded to so that one captured graph can replay every
// step of that shape: sequences and block-table columns, each rounded up to a bucket.
struct GraphKey {
  int32_t n_seqs = 0;
  int32_t max_blocks = 0;
  bool operator==(const GraphKey&) const = default;
};
// GraphKey::n_seqs for a decode step of n sequences (before the cap of the engine's limits):
// powers of two up to 32, then multiples of 8 (above 32 a step's time grows with its batch, so
// padding 33 to 64 would cost most of a step more).
int32_t graph_seqs(int32_t n);

class Backend {
 public:
  virtual ~Backend() = default;
  virtual std::string_view name() const = 0;

  // Backend memory that lives as long as the backend. Throws ErrorKind::kOutOfMemory.
  virtual void* alloc(size_t bytes) = 0;
  // Bytes alloc() can still hand out under the backend's memory budget, or nullopt for a
  // backend on host memory without one (the engine then sizes its KV cache by the context).
  virtual std::optional<uint64_t> memory_available() const { return std::nullopt; }
  virtual void copy_to_device(void* dst, const void* src, size_t bytes) = 0;
  // Waits for queued work, then copies.
  virtual void copy_to_host(void* dst, const void* src, size_t bytes) = 0;
  virtual void sync() = 0;

  // Copies a weight slice into backend memory (packed: row_stride = row_bytes(cols)).
  virtual Weight upload_weight(const HostMatrix& m) = 0;
  // Copies an F32 vector (norm weights, biases); other types are converted to F32.
  virtual float* upload_vector(TensorType type, const void* data, int64_t n) = 0;
  // Synthesises a random weight directly in backend memory (benchmarks of shapes that have
  // no file): values of scale ~1/sqrt(cols), quantized blocks with sane scales.
  virtual Weight synth_weight(TensorType type, int64_t rows, int64_t cols, uint64_t seed) = 0;
  // A vector of n copies of `value` (norm weights of a synthetic model).
  virtual float* synth_vector(int64_t n, float value) = 0;

  // Bytes of one K or V element in the KV cache (F32 on the CPU by default, 2 for BF16/F16).
  virtual size_t kv_element_bytes() const { return sizeof(float); }
  virtual void init_kv_cache(const KvCacheShape& shape) = 0;
  // Makes `batch` current for the ops below until the next begin_step.
  virtual void begin_step(const BatchMeta& batch) = 0;

  // x[n_tokens, table.cols] = rows of the table for the batch tokens (dequantized).
  virtual void embed(const Weight& table, float* x) = 0;
  // y[rows, n] = x / rms(x) * w
  virtual void rmsnorm(const float* x, const float* w, float* y, int64_t rows, int64_t n,
                       float eps) = 0;
  // y[m, w.rows] = x[m, w.cols] · Wᵀ
  virtual void matmul(const Weight& w, const float* x, float* y, int64_t m) = 0;
  // outs[i].y[m, outs[i].w->rows] = x[m, cols] · W_iᵀ for matrices that share their input
  // (q, k, v; gate, up): a backend may run them as one launch.
  struct MatmulOut {
    const Weight* w = nullptr;
    float* y = nullptr;
  };
  virtual void matmul_shared(std::span<const MatmulOut> outs, const float* x, int64_t m) {
    for (const MatmulOut& o : outs) matmul(*o.w, x, o.y, m);
  }
  // The RMSNorm in front of a shared matmul: with r, x_out = x + r first and y =
  // rmsnorm(x_out) * w, else y = rmsnorm(x) * w; over rows of n.
  struct NormIn {
    const float* x = nullptr;
    const float* r = nullptr;  // may be null: no residual add
    // Where x + r goes: x itself, or another buffer, which lets a backend fold the norm into
    // the matmuls' kernel (all its CTAs read x while some write x + r, in no order).
    float* x_out = nullptr;
    const float* w = nullptr;
    float* y = nullptr;
    int64_t n = 0;
    float eps = 1e-5f;
    // With r: r holds this rank's partial sums, and the all-reduce of r over the ranks comes
    // first (a Collective::device_reduce_plan; only for backends whose folds_reduce() said
    // yes). r itself is left as it was.
    const void* reduce = nullptr;
  };
  // x_out = x + r, then y = rmsnorm(x_out) * w: the residual add fused with the norm that
  // follows it (in.r and in.x_out set, in.reduce null).
  virtual void add_rmsnorm(const NormIn& in, int64_t rows) {
    TPNODE_CHECK(in.r != nullptr && in.x_out != nullptr, "add_rmsnorm: no residual or no x_out");
    add(in.x, in.r, in.x_out, rows * in.n);
    rmsnorm(in.x_out, in.w, in.y, rows, in.n, in.eps);
  }
  // y[m, w.rows] = x · Wᵀ, whose all-reduce `reduce` (a Collective::device_reduce_plan over
  // y, or null) the norm after it folds (NormIn::reduce): a backend may start sending y to the
  // other ranks from the matmul's own launch.
  virtual void matmul_reduced(const Weight& w, const float* x, float* y, int64_t m,
                              const void* reduce) {
    (void)reduce;
    matmul(w, x, y, m);
  }
  // Whether norm_matmul_shared can run the all-reduce of its residual itself
  // (NormIn::reduce) for m rows of n.
  virtual bool folds_reduce(int64_t m, int64_t n) const {
    (void)m;
    (void)n;
    return false;
  }
  // The norm of m rows, then matmul_shared(outs, y, m). A backend may fuse the two, in which
  // case y holds unspecified values afterwards: nothing may read it but this call.
  virtual void norm_matmul_shared(const NormIn& in, std::span<const MatmulOut> outs, int64_t m) {
    TPNODE_CHECK(in.reduce == nullptr, "backend {} cannot fold an all-reduce into a norm", name());
    if (in.r != nullptr) {
      add_rmsnorm(in, m);
    } else {
      rmsnorm(in.x, in.w, in.y, m, in.n, in.eps);
    }
    matmul_shared(outs, in.y, m);
  }
  // y[m, n] += b[n]
  virtual void add_bias(float* y, const float* b, int64_t m, int64_t n) = 0;
  // Rotates q[n_tokens, n_head, head_dim] and k[n_tokens, n_head_kv, head_dim] in place
  // at the batch positions.
  virtual void rope(float* q, float* k, const RopeParams& p) = 0;
  // Writes k, v [n_tokens, n_head_kv, head_dim] into the layer's KV blocks at the batch
  // positions, then out[n_tokens, n_head, head_dim] = causal softmax(q·Kᵀ·scale)·V over
  // each token's sequence (its cached prefix and the new tokens up to itself).
  virtual void attention(const float* q, const float* k, const float* v, float* out,
                         const AttentionParams& p) = 0;
  // out[i] = silu(gate[i]) * up[i]; out may be gate (the engine does that)
  virtual void swiglu(const float* gate, const float* up, float* out, int64_t n) = 0;
  // out[i] = x[i] + y[i]; out may be x
  virtual void add(const float* x, const float* y, float* out, int64_t n) = 0;
  // out[j, :] = x[batch.logit_rows[j], :]
  virtual void gather_rows(const float* x, float* out, int64_t row_len) = 0;

  // Decode steps as graphs (optional; by default every step runs op by op). When
  // decode_graphs() is true the engine keeps one spare KV block, pads each decode-only step
  // (every sequence one new token) to a GraphKey shape, calls begin_step, and then either
  // graph_replay(key) runs the whole forward (embedding to logits), or it issues the ops
  // between graph_capture_begin(key) and graph_capture_end(), which also runs them. Ops
  // must then read everything that varies within a key (token ids, positions, lengths,
  // block tables) from the batch in backend memory, never bake it into a launch.
  virtual bool decode_graphs() const { return false; }
  virtual bool graph_replay(const GraphKey& key) {
    (void)key;
    return false;
  }
  virtual void graph_capture_begin(const GraphKey& key) { (void)key; }
  virtual void graph_capture_end() {}

  // Token sampling where the logits live (optional). When can_sample() is true,
  // sample_tokens() draws one token per row from logits [*, n_vocab] (backend memory), writes
  // the ids to tokens[rows.size()] (host memory) and waits for them. The same logits and row
  // give the same token on every run of one backend; streams differ between backends.
  virtual bool can_sample() const { return false; }
  // Greedy rows where the logits live (can_sample() backends): for each listed row of logits
  // [*, n_vocab] (backend memory), its largest logit and that logit's id, the lowest id among
  // equals (the same choice as sample_tokens at temperature 0). best and ids are host memory
  // [rows.size()]; waits for them.
  virtual void argmax_rows(const float* logits, int64_t n_vocab, const std::vector<int32_t>& rows,
                           float* best, int32_t* ids) {
    (void)logits;
    (void)n_vocab;
    (void)rows;
    (void)best;
    (void)ids;
    TPNODE_THROW(ErrorKind::kUnsupported, "backend {} cannot take argmaxes of logits", name());
  }
  virtual void sample_tokens(const float* logits, int64_t n_vocab,
                             const std::vector<SampleRow>& rows, int32_t* tokens) {
    (void)logits;
    (void)n_vocab;
    (void)rows;
    (void)tokens;
    TPNODE_THROW(ErrorKind::kUnsupported, "backend {} cannot sample tokens", name());
  }
  // Asynchronous draws and chained tokens (optional). When can_chain() is true (it implies
  // can_sample()), sample_async() enqueues sample_tokens()'s draws after the work queued so
  // far and returns at once; take_sampled() waits for the oldest draw not yet taken and
  // copies its n ids to tokens (host memory). At most two draws are outstanding. Until the
  // next sample_async(), a batch token -1 - i (BatchMeta::tokens) stands for id i of the last
  // draw, which the backend reads where the draw left it.
  virtual bool can_chain() const { return false; }
  virtual void sample_async(const float* logits, int64_t n_vocab,
                            const std::vector<SampleRow>& rows) {
    (void)logits;
    (void)n_vocab;
    (void)rows;
    TPNODE_THROW(ErrorKind::kUnsupported, "backend {} cannot draw tokens asynchronously", name());
  }
  virtual void take_sampled(int32_t* tokens, size_t n) {
    (void)tokens;
    (void)n;
    TPNODE_THROW(ErrorKind::kUnsupported, "backend {} cannot draw tokens asynchronously", name());
  }
};

}  // namespace tpnode
