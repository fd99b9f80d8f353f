// The llama-family forward, written once over Backend and Collective.
//
// Per layer: RMSNorm -> Q,K,V (this rank's heads) -> RoPE -> paged attention -> O (partial
// sums) -> all-reduce -> residual -> RMSNorm -> gate, up (this rank's FFN columns) -> SwiGLU ->
// down (partial sums) -> all-reduce -> residual. Then the LM head over this rank's vocabulary
// rows, gathered on rank 0.
#include "node/engine/engine.h"
#include "node/engine/step_executor.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <cmath>
#include <deque>
#include <optional>

#include "node/common/error.h"

namespace tpnode {

namespace {

struct LayerWeights {
  float* attn_norm = nullptr;  // [n_embd]
  Weight wq, wk, wv;           // [heads * head_dim, n_embd] this rank's heads
  float* bq = nullptr;         // [n_head * head_dim] (attention bias), may be null
  float* bk = nullptr;
  float* bv = nullptr;
  Weight wo;                   // [n_embd, n_head * head_dim] this rank's input columns
  float* ffn_norm = nullptr;   // [n_embd]
  Weight gate, up;             // [n_ff, n_embd] this rank's rows
  Weight down;                 // [n_embd, n_ff] this rank's columns
};

// Activations for the largest step, allocated once.
struct Scratch {
  // [tokens, n_embd] the residual stream, in x and x2 by turns: each residual add writes
  // the other buffer (Backend::NormIn::x_out), so a backend may fold it into a kernel.
  float* x = nullptr;
  float* x2 = nullptr;
  float* h = nullptr;       // [tokens, n_embd] normed input
  float* q = nullptr;       // [tokens, n_head * head_dim]
  float* k = nullptr;       // [tokens, n_head_kv * head_dim]
  float* v = nullptr;       // [tokens, n_head_kv * head_dim]
  float* attn = nullptr;    // [tokens, n_head * head_dim]
  float* t = nullptr;       // [tokens, n_embd] partial sums before the all-reduce
  float* gate = nullptr;    // [tokens, n_ff]
  float* up = nullptr;      // [tokens, n_ff]
  float* last = nullptr;    // [seqs, n_embd] hidden states that feed the LM head
  float* normed = nullptr;  // [seqs, n_embd]
  float* logits = nullptr;  // [seqs, n_vocab of this rank]
};

std::string layer_name(int64_t layer, const char* what) {
  return fmt::format("blk.{}.{}", layer, what);
}

}  // namespace

struct Engine::Impl {
  Backend& b;
  Collective& c;
  std::vector<LayerWeights> layers;
  Weight tok_embd;     // full table (replicated)
  Weight output;       // this rank's vocabulary rows
  float* output_norm = nullptr;
  Scratch s;
  RopeParams rope;
  AttentionParams attn;
  BatchMeta meta;
  std::vector<float> local_logits;  // [seqs, n_vocab of this rank] on the host
  std::vector<float> staged_logits; // graph steps: LM head rows before picking the wanted
  std::vector<float> gathered;      // rank order, before re-interleaving
  StepOutput out;                   // what collect() returns on rank 0
  StepOutput none;                  // what collect() returns on other ranks
  // A submitted step not yet collected: its output, less the ids of its asynchronous draw.
  struct Pending {
    StepOutput out;
    bool root = true;               // out is this rank's to return (else none)
    std::vector<size_t> drawn_at;   // output rows of its draw, in draw order (empty: none)
  };
  std::deque<Pending> pending;
  // The last submitted step's draw: (seq_id, index in the draw) of each sequence it drew for.
  std::vector<std::pair<uint64_t, int32_t>> last_draw;
  std::vector<int32_t> drawn;       // a draw's ids, as the backend returned them
  std::vector<SampleRow> sample_rows;  // rows sampled on the device this step
  std::vector<size_t> sampled_at;      // their output rows
  std::vector<int64_t> host_rows;      // LM head rows returned as logits
  // Tensor parallel greedy rows: each rank sends its best (logit, id) per row, not its logits.
  std::vector<int64_t> greedy_rows;    // their LM head rows
  std::vector<size_t> greedy_at;       // their output rows
  std::vector<float> greedy_local;     // [rows][2]: this rank's best logit and global id
  std::vector<float> greedy_all;       // rank 0: [ranks][rows][2]
  std::vector<float> greedy_best;      // [rows]: the device argmax's logits
  std::vector<int32_t> greedy_ids;     // [rows]: and their ids in this rank's slice

  // Copies LM-head rows `rows` of this rank's logits to dst [rows.size(), vocab].
  void fetch_rows(const std::vector<int64_t>& rows, int64_t vocab, std::vector<float>& dst);
  // Tokens of the greedy rows: every rank's best logit of its vocabulary slice, gathered
  // on rank 0 (ties to the lowest id, as the host sampler's argmax).
  void tp_greedy(int64_t vocab0, int64_t vocab, StepOutput& out, int64_t n_out);
  // Puts the ids in `drawn` at their output rows `at` of out.tokens, checking each.
  void place_drawn(const std::vector<size_t>& at, int64_t vocab, StepOutput& out) const;
  // A KV block outside the scheduler's range: padding sequences of graph steps write and
  // read there. -1 when the backend runs no graphs.
  int32_t pad_block = -1;

  Impl(Backend& backend, Collective& collective) : b(backend), c(collective) {}
  void forward(const HParams& hp, const ShardPlan& shard);
};

namespace {

float* alloc_f32(Backend& b, int64_t n) {
  return static_cast<float*>(b.alloc(static_cast<size_t>(n) * sizeof(float)));
}

}  // namespace

Engine::Engine(const HParams& hp, WeightSource& weights, Backend& backend,
               Collective& collective, const EngineOptions& options)
    : impl_(std::make_unique<Impl>(backend, collective)), hp_(hp), options_(options) {
  hp_.validate();
  Impl& m = *impl_;
  shard_ = ShardPlan::make(hp_, collective.size(), collective.rank(),
                           weights.row_parallel_block(hp_));
  if (options_.max_context <= 0) options_.max_context = std::min<int64_t>(hp_.n_ctx_train, 4096);
  if (options_.max_context <= 0) options_.max_context = 4096;
  // Whether the backend has a memory budget (its size is asked again once the weights and step
  // buffers are in, by auto_kv_blocks).
  const bool has_budget = backend.memory_available().has_value();
  if (options_.max_seqs == 0) options_.max_seqs = has_budget ? kDeviceMaxSeqs : kHostMaxSeqs;
  TPNODE_CHECK(options_.max_batch_tokens > 0 && options_.max_seqs > 0 &&
                   options_.kv_block_size > 0,
               "engine options: max_batch_tokens, max_seqs and kv_block_size must be positive");

  const int64_t hd = hp_.head_dim, E = hp_.n_embd;
  const int64_t q_rows = shard_.n_head * hd, kv_rows = shard_.n_head_kv * hd;

  // Everything this rank will load, for the progress display.
  struct Job {
    std::string name;
    MatrixSlice slice;
  };
  std::vector<Job> jobs;
  auto full = [&](const std::string& name) {
    auto [rows, cols] = weights.shape(name);
    return MatrixSlice{0, rows, 0, cols};
  };
  uint64_t total = 0, done = 0;
  auto count = [&](const std::string& name, MatrixSlice s) {
    total += weights.bytes(name, s);
    jobs.push_back({name, s});
  };
  count("token_embd.weight", full("token_embd.weight"));
  const std::string head_name = weights.has("output.weight") ? "output.weight" : "token_embd.weight";
  count(head_name, {shard_.vocab0, shard_.n_vocab, 0, E});
  for (int64_t l = 0; l < hp_.n_layer; ++l) {
    count(layer_name(l, "attn_q.weight"), {shard_.head0 * hd, q_rows, 0, E});
    count(layer_name(l, "attn_k.weight"), {shard_.kv_head0 * hd, kv_rows, 0, E});
    count(layer_name(l, "attn_v.weight"), {shard_.kv_head0 * hd, kv_rows, 0, E});
    count(layer_name(l, "attn_output.weight"), {0, E, shard_.head0 * hd, q_rows});
    count(layer_name(l, "ffn_gate.weight"), {shard_.ff0, shard_.n_ff, 0, E});
    count(layer_name(l, "ffn_up.weight"), {shard_.ff0, shard_.n_ff, 0, E});
    count(layer_name(l, "ffn_down.weight"), {0, E, shard_.ff0, shard_.n_ff});
  }
  weight_bytes_ = total;

  // Matrices load in the order they were counted above.
  size_t next = 0;
  auto load_next = [&] {
    const Job& j = jobs[next++];
    Weight w = weights.matrix(j.name, j.slice, backend);
    done += weights.bytes(j.name, j.slice);
    if (options_.progress) options_.progress(done, total);
    return w;
  };
  auto vec = [&](const std::string& name, int64_t off, int64_t n) {
    return weights.vector(name, off, n, backend);
  };

  m.tok_embd = load_next();
  m.output = load_next();
  m.output_norm = vec("output_norm.weight", 0, E);
  m.layers.resize(static_cast<size_t>(hp_.n_layer));
  for (int64_t l = 0; l < hp_.n_layer; ++l) {
    LayerWeights& L = m.layers[static_cast<size_t>(l)];
    L.attn_norm = vec(layer_name(l, "attn_norm.weight"), 0, E);
    L.wq = load_next();
    L.wk = load_next();
    L.wv = load_next();
    L.wo = load_next();
    if (hp_.attn_bias) {
      L.bq = vec(layer_name(l, "attn_q.bias"), shard_.head0 * hd, q_rows);
      L.bk = vec(layer_name(l, "attn_k.bias"), shard_.kv_head0 * hd, kv_rows);
      L.bv = vec(layer_name(l, "attn_v.bias"), shard_.kv_head0 * hd, kv_rows);
    }
    L.ffn_norm = vec(layer_name(l, "ffn_norm.weight"), 0, E);
    L.gate = load_next();
    L.up = load_next();
    L.down = load_next();
  }

  // Step buffers before the KV cache, which may take what the backend has left after them.
  const int64_t T = options_.max_batch_tokens, S = options_.max_seqs;
  m.s.x = alloc_f32(backend, T * E);
  m.s.x2 = alloc_f32(backend, T * E);
  m.s.h = alloc_f32(backend, T * E);
  m.s.q = alloc_f32(backend, T * q_rows);
  m.s.k = alloc_f32(backend, T * kv_rows);
  m.s.v = alloc_f32(backend, T * kv_rows);
  m.s.attn = alloc_f32(backend, T * q_rows);
  m.s.t = alloc_f32(backend, T * E);
  m.s.gate = alloc_f32(backend, T * shard_.n_ff);
  m.s.up = alloc_f32(backend, T * shard_.n_ff);
  m.s.last = alloc_f32(backend, S * E);
  m.s.normed = alloc_f32(backend, S * E);
  m.s.logits = alloc_f32(backend, S * shard_.n_vocab);

  // KV cache: this rank's KV heads for every layer, in blocks.
  const int64_t bs = options_.kv_block_size;
  const int64_t bytes_per_token =
      2 * hp_.n_layer * kv_rows * static_cast<int64_t>(backend.kv_element_bytes());
  int64_t kv_tokens = options_.kv_tokens;
  if (kv_tokens <= 0 && options_.kv_bytes > 0) kv_tokens = options_.kv_bytes / bytes_per_token;
  if (kv_tokens <= 0 && has_budget) {
    kv_tokens = auto_kv_blocks(backend, collective, bytes_per_token * bs) * bs;
  } else if (kv_tokens <= 0) {
    kv_tokens = 4 * options_.max_context;
  }
  kv_blocks_ = kv_tokens / bs;
  TPNODE_CHECK_KIND(kv_blocks_ >= (options_.max_context + bs - 1) / bs, ErrorKind::kOutOfMemory,
                    "KV cache of {} tokens cannot hold one sequence of the maximum context {} "
                    "(raise --kv-tokens/--kv-bytes or --gpu-memory-fraction, or lower --ctx)",
                    kv_blocks_ * bs, options_.max_context);
  options_.kv_tokens = kv_blocks_ * bs;
  const bool graphs = backend.decode_graphs();
  if (graphs) m.pad_block = static_cast<int32_t>(kv_blocks_);
  backend.init_kv_cache({hp_.n_layer, kv_blocks_ + (graphs ? 1 : 0), bs, shard_.n_head_kv, hd});

  m.rope = {shard_.n_head, shard_.n_head_kv, hd, hp_.rope_style, hp_.rope_theta,
            hp_.rope_scaling};
  m.attn.n_head = shard_.n_head;
  m.attn.n_head_kv = shard_.n_head_kv;
  m.attn.head_dim = hd;
  m.attn.scale = 1.0f / std::sqrt(static_cast<float>(hd));
  m.attn.rope = &m.rope;
}

Engine::~Engine() = default;

// The KV blocks an automatic cache takes on a backend with a memory budget: what it has left
// less kDeviceScratchReserve and a twentieth of the rest, at most max_seqs sequences of
// max_context, and the least over the ranks, which share block ids (every rank calls this).
int64_t Engine::auto_kv_blocks(Backend& backend, Collective& collective,
                               int64_t bytes_per_block) const {
  const uint64_t left = backend.memory_available().value_or(0);
  const uint64_t reserve = kDeviceScratchReserve + left / 20;
  const int64_t bs = options_.kv_block_size;
  int64_t blocks = left > reserve ? static_cast<int64_t>((left - reserve) / bytes_per_block) : 0;
  blocks = std::min(blocks, options_.max_seqs * ((options_.max_context + bs - 1) / bs));
  if (collective.size() == 1) return blocks;
  // The minimum through the sum collective: each rank's count in its own slot (floats: exact
  // below 2^24 blocks).
  blocks = std::min<int64_t>(blocks, (int64_t{1} << 24) - 1);
  const auto n = static_cast<size_t>(collective.size());
  std::vector<float> slots(n, 0.0f);
  slots[static_cast<size_t>(collective.rank())] = static_cast<float>(blocks);
  float* dev = alloc_f32(backend, static_cast<int64_t>(n));
  backend.copy_to_device(dev, slots.data(), n * sizeof(float));
  collective.all_reduce_sum(dev, n);
  backend.copy_to_host(slots.data(), dev, n * sizeof(float));
  return static_cast<int64_t>(*std::min_element(slots.begin(), slots.end()));
}

namespace {

// Checks the plan against the engine's limits and builds the batch the backend sees.
void build_batch(const StepPlan& plan, const EngineOptions& o, int64_t kv_blocks,
                 BatchMeta& meta) {
  TPNODE_CHECK(static_cast<int64_t>(plan.seqs.size()) <= o.max_seqs,
               "step has {} sequences, more than max_seqs {}", plan.seqs.size(), o.max_seqs);
  TPNODE_CHECK(plan.n_tokens() <= o.max_batch_tokens,
               "step has {} tokens, more than max_batch_tokens {}", plan.n_tokens(),
               o.max_batch_tokens);
  meta = BatchMeta{};
  int32_t max_blocks = 0;
  for (const auto& s : plan.seqs) {
    max_blocks = std::max(max_blocks, static_cast<int32_t>(s.blocks.size()));
  }
  meta.max_blocks = max_blocks;
  meta.seq_start.push_back(0);
  for (size_t i = 0; i < plan.seqs.size(); ++i) {
    const SeqStep& s = plan.seqs[i];
    const int64_t kv_len = static_cast<int64_t>(s.n_past) + static_cast<int64_t>(s.tokens.size());
    TPNODE_CHECK(!s.tokens.empty(), "sequence {}: no tokens in this step", s.seq_id);
    TPNODE_CHECK(kv_len <= o.max_context, "sequence {}: {} tokens exceed the context of {}",
                 s.seq_id, kv_len, o.max_context);
    TPNODE_CHECK(static_cast<int64_t>(s.blocks.size()) * o.kv_block_size >= kv_len,
                 "sequence {}: {} KV blocks cannot hold {} tokens", s.seq_id, s.blocks.size(),
                 kv_len);
    for (int32_t blk : s.blocks) {
      TPNODE_CHECK(blk >= 0 && blk < kv_blocks, "sequence {}: KV block {} out of range [0, {})",
                   s.seq_id, blk, kv_blocks);
    }
    for (size_t j = 0; j < s.tokens.size(); ++j) {
      meta.tokens.push_back(s.tokens[j]);
      meta.positions.push_back(s.n_past + static_cast<int32_t>(j));
      meta.token_seq.push_back(static_cast<int32_t>(i));
    }
    meta.seq_start.push_back(static_cast<int32_t>(meta.tokens.size()));
    meta.seq_kv_len.push_back(static_cast<int32_t>(kv_len));
    for (int32_t b = 0; b < max_blocks; ++b) {
      meta.block_tables.push_back(b < static_cast<int32_t>(s.blocks.size()) ? s.blocks[b] : -1);
    }
    if (s.want_logits) meta.logit_rows.push_back(meta.seq_start.back() - 1);
  }
}

int32_t next_pow2(int32_t n) {
  int32_t p = 1;
  while (p < n) p *= 2;
  return p;
}

// The graph shape of a decode-only step (every sequence one new token), or nothing. Buckets
// by graph_seqs and powers of two of the table width, capped by what the scratch buffers and
// the context hold.
std::optional<GraphKey> decode_graph_key(const StepPlan& plan, const BatchMeta& meta,
                                         const EngineOptions& o) {
  if (plan.seqs.empty()) return std::nullopt;
  for (const auto& s : plan.seqs) {
    if (s.tokens.size() != 1) return std::nullopt;
  }
  const int32_t n = meta.n_seqs();
  const auto seq_cap = static_cast<int32_t>(std::min(o.max_seqs, o.max_batch_tokens));
  const auto ctx_blocks = static_cast<int32_t>((o.max_context + o.kv_block_size - 1) / o.kv_block_size);
  GraphKey key;
  key.n_seqs = std::max(n, std::min(graph_seqs(n), seq_cap));
  key.max_blocks = std::max(meta.max_blocks, std::min(next_pow2(std::max(meta.max_blocks, 4)),
                                                      std::max(ctx_blocks, meta.max_blocks)));
  return key;
}

// Pads a decode-only batch to `key`: each padding sequence decodes token 0 at position 0 in
// the spare block, and every token feeds the LM head (real sequences first, in order).
void pad_to_graph_shape(const GraphKey& key, int32_t pad_block, BatchMeta& meta) {
  const int32_t n = meta.n_seqs(), mb = meta.max_blocks;
  std::vector<int32_t> tables(static_cast<size_t>(key.n_seqs) * key.max_blocks, -1);
  for (int32_t s = 0; s < n; ++s) {
    std::copy_n(meta.block_tables.begin() + static_cast<size_t>(s) * mb, mb,
                tables.begin() + static_cast<size_t>(s) * key.max_blocks);
  }
  for (int32_t s = n; s < key.n_seqs; ++s) {
    tables[static_cast<size_t>(s) * key.max_blocks] = pad_block;
    meta.tokens.push_back(0);
    meta.positions.push_back(0);
    meta.token_seq.push_back(s);
    meta.seq_start.push_back(s + 1);
    meta.seq_kv_len.push_back(1);
  }
  meta.block_tables = std::move(tables);
  meta.max_blocks = key.max_blocks;
  meta.logit_rows.resize(static_cast<size_t>(key.n_seqs));
  for (int32_t s = 0; s < key.n_seqs; ++s) meta.logit_rows[static_cast<size_t>(s)] = s;
}

}  // namespace

void Engine::Impl::fetch_rows(const std::vector<int64_t>& rows, int64_t vocab,
                              std::vector<float>& dst) {
  const auto n = static_cast<int64_t>(rows.size());
  dst.resize(static_cast<size_t>(n * vocab));
  bool in_order = true;  // the rows are 0..n-1: no staging
  for (int64_t j = 0; j < n; ++j) in_order = in_order && rows[static_cast<size_t>(j)] == j;
  if (in_order) {
    b.copy_to_host(dst.data(), s.logits, dst.size() * sizeof(float));
    return;
  }
  // Copy up to the last row needed, then compact.
  const int64_t last = *std::max_element(rows.begin(), rows.end()) + 1;
  staged_logits.resize(static_cast<size_t>(last * vocab));
  b.copy_to_host(staged_logits.data(), s.logits, staged_logits.size() * sizeof(float));
  for (int64_t j = 0; j < n; ++j) {
    std::copy_n(staged_logits.data() + rows[static_cast<size_t>(j)] * vocab, vocab,
                dst.data() + j * vocab);
  }
}

void Engine::Impl::tp_greedy(int64_t vocab0, int64_t vocab, StepOutput& out, int64_t n_out) {
  const auto n = static_cast<int64_t>(greedy_rows.size());
  greedy_local.resize(static_cast<size_t>(2 * n));
  // Ids travel as floats: exact below 2^24, far above any vocabulary.
  auto put = [&](int64_t j, float value, int64_t id) {
    greedy_local[static_cast<size_t>(2 * j)] = value;
    greedy_local[static_cast<size_t>(2 * j + 1)] = static_cast<float>(vocab0 + id);
  };
  if (b.can_sample()) {
    // On the device: only a logit and an id per row leave it.
    greedy_ids.resize(static_cast<size_t>(n));
    greedy_best.resize(static_cast<size_t>(n));
    std::vector<int32_t> rows(greedy_rows.begin(), greedy_rows.end());
    b.argmax_rows(s.logits, vocab, rows, greedy_best.data(), greedy_ids.data());
    for (int64_t j = 0; j < n; ++j) {
      const int32_t id = greedy_ids[static_cast<size_t>(j)];
      TPNODE_CHECK_KIND(id >= 0 && id < vocab, ErrorKind::kRuntime,
                        "argmax_rows returned id {} outside the slice of {}", id, vocab);
      put(j, greedy_best[static_cast<size_t>(j)], id);
    }
  } else {
    fetch_rows(greedy_rows, vocab, local_logits);
    for (int64_t j = 0; j < n; ++j) {
      const float* r = local_logits.data() + j * vocab;
      int64_t best = 0;
      for (int64_t i = 1; i < vocab; ++i) {
        if (r[i] > r[best]) best = i;
      }
      put(j, r[best], best);
    }
  }
  const int size = c.size();
  const bool root = c.rank() == 0;
  greedy_all.resize(root ? static_cast<size_t>(2 * n * size) : 0);
  c.gather_host(greedy_local.data(), greedy_local.size(), root ? greedy_all.data() : nullptr,
                std::vector<size_t>(static_cast<size_t>(size), greedy_local.size()));
  if (!root) return;
  if (out.tokens.empty()) out.tokens.assign(static_cast<size_t>(n_out), -1);
  for (int64_t j = 0; j < n; ++j) {
    // Ranks hold ascending vocabulary slices: a later rank wins only with a larger logit.
    float best = 0.0f;
    int32_t id = -1;
    for (int r = 0; r < size; ++r) {
      const float* e = greedy_all.data() + (static_cast<int64_t>(r) * n + j) * 2;
      if (id < 0 || e[0] > best) {
        best = e[0];
        id = static_cast<int32_t>(e[1]);
      }
    }
    out.tokens[greedy_at[static_cast<size_t>(j)]] = id;
  }
}

bool Engine::chains() const { return impl_->c.size() == 1 && impl_->b.can_chain(); }

void Engine::submit(const StepPlan& plan) {
  Impl& m = *impl_;
  Backend& b = m.b;
  const HParams& hp = hp_;
  TPNODE_CHECK(m.pending.size() < 2, "submit: two steps are already uncollected");
  build_batch(plan, options_, kv_blocks_, m.meta);
  for (size_t i = 0; i < plan.seqs.size(); ++i) {
    const SeqStep& s = plan.seqs[i];
    for (size_t j = 0; j < s.tokens.size(); ++j) {
      const int32_t tok = s.tokens[j];
      if (tok != kChainedToken) {
        TPNODE_CHECK(tok >= 0 && tok < hp.n_vocab, "token id {} outside the vocabulary of {}",
                     tok, hp.n_vocab);
        continue;
      }
      TPNODE_CHECK(chains(), "sequence {}: a chained token, but this engine cannot chain",
                   s.seq_id);
      TPNODE_CHECK(s.tokens.size() == 1, "sequence {}: a chained token with {} others",
                   s.seq_id, s.tokens.size() - 1);
      const auto it = std::find_if(m.last_draw.begin(), m.last_draw.end(),
                                   [&](const auto& d) { return d.first == s.seq_id; });
      TPNODE_CHECK(it != m.last_draw.end(),
                   "sequence {}: a chained token, but the previous step drew none for it",
                   s.seq_id);
      m.meta.tokens[static_cast<size_t>(m.meta.seq_start[i])] = -1 - it->second;
    }
  }
  m.last_draw.clear();  // read by this step's embedding only
  // Rows of the LM head output to return, in sequence order. A graph step computes logits
  // for every (padded) sequence, so the rows are picked out on the way to the host.
  std::vector<int64_t> wanted;
  std::optional<GraphKey> key;
  if (m.pad_block >= 0) key = decode_graph_key(plan, m.meta, options_);
  for (size_t i = 0; i < plan.seqs.size(); ++i) {
    if (!plan.seqs[i].want_logits) continue;
    wanted.push_back(key ? static_cast<int64_t>(i) : static_cast<int64_t>(wanted.size()));
  }
  if (key) pad_to_graph_shape(*key, m.pad_block, m.meta);

  b.begin_step(m.meta);
  // A padded step whose all-reduces cannot be captured runs op by op.
  const bool graph = key && m.c.all_reduce_capturable(static_cast<size_t>(m.meta.n_tokens() * hp.n_embd));
  if (!graph || !b.graph_replay(*key)) {
    if (graph) b.graph_capture_begin(*key);
    m.forward(hp, shard_);
    if (graph) b.graph_capture_end();
  }

  Impl::Pending p;
  StepOutput& out = p.out;
  p.root = m.c.rank() == 0;
  const int64_t n_out = static_cast<int64_t>(wanted.size());
  if (n_out == 0) {
    b.sync();
    m.pending.push_back(std::move(p));
    return;
  }
  const int64_t V = hp.n_vocab, Vl = shard_.n_vocab;

  // Device sampling needs the whole vocabulary in one place: one rank only. With tensor
  // parallelism each rank holds a vocabulary slice: greedy rows are decided by tp_greedy,
  // the others are gathered and sampled on rank 0's host.
  const bool device = m.c.size() == 1 && b.can_sample();
  m.sample_rows.clear();
  m.sampled_at.clear();
  m.host_rows.clear();
  m.greedy_rows.clear();
  m.greedy_at.clear();
  size_t row = 0;
  for (const SeqStep& s : plan.seqs) {
    if (!s.want_logits) continue;
    const int64_t lm_row = wanted[row];
    if (device && s.sampling.enabled) {
      s.sampling.validate();
      // The draw counter is the sampled token's position: the same request gives the same
      // tokens whatever else runs in its steps.
      m.sample_rows.push_back(
          {.logit_row = static_cast<int32_t>(lm_row),
           .temperature = s.sampling.temperature,
           .top_k = s.sampling.top_k,
           .top_p = s.sampling.top_p,
           .min_p = s.sampling.min_p,
           .seed = s.sampling.seed,
           .draw = static_cast<uint64_t>(s.n_past) + static_cast<uint64_t>(s.tokens.size())});
      m.sampled_at.push_back(row);
      // What a chained token of the next step names (the draw's order is this one).
      if (chains()) {
        m.last_draw.emplace_back(s.seq_id, static_cast<int32_t>(m.sample_rows.size() - 1));
      }
    } else if (m.c.size() > 1 && s.sampling.enabled && s.sampling.temperature <= 0.0f) {
      m.greedy_rows.push_back(lm_row);
      m.greedy_at.push_back(row);
    } else {
      m.host_rows.push_back(lm_row);
    }
    ++row;
  }
  if (!m.greedy_rows.empty()) m.tp_greedy(shard_.vocab0, Vl, out, n_out);
  if (!m.sample_rows.empty()) {
    if (out.tokens.empty()) out.tokens.assign(static_cast<size_t>(n_out), -1);
    if (chains()) {
      // The ids arrive in collect(); the next step may read them on the device.
      b.sample_async(m.s.logits, Vl, m.sample_rows);
      p.drawn_at = m.sampled_at;
    } else {
      m.drawn.resize(m.sample_rows.size());
      b.sample_tokens(m.s.logits, Vl, m.sample_rows, m.drawn.data());
      m.place_drawn(m.sampled_at, V, out);
    }
  }

  const int64_t n_host = static_cast<int64_t>(m.host_rows.size());
  if (n_host == 0) {
    m.pending.push_back(std::move(p));
    return;
  }
  m.fetch_rows(m.host_rows, Vl, m.local_logits);
  if (m.c.size() == 1) {
    out.logits.swap(m.local_logits);
    m.pending.push_back(std::move(p));
    return;
  }

  // Each rank holds [n_host, its vocabulary rows]; rank 0 receives them in rank order and
  // interleaves them into [n_host, V].
  std::vector<size_t> counts;
  for (int64_t cnt : shard_.vocab_counts) counts.push_back(static_cast<size_t>(cnt * n_host));
  const bool root = m.c.rank() == 0;
  m.gathered.resize(root ? static_cast<size_t>(n_host * V) : 0);
  m.c.gather_host(m.local_logits.data(), m.local_logits.size(), root ? m.gathered.data() : nullptr,
                  counts);
  if (!root) {
    m.pending.push_back(std::move(p));
    return;
  }
  out.logits.resize(static_cast<size_t>(n_host * V));
  int64_t col0 = 0, off = 0;
  for (int64_t cnt : shard_.vocab_counts) {
    for (int64_t r = 0; r < n_host; ++r) {
      std::copy_n(m.gathered.data() + off + r * cnt, cnt, out.logits.data() + r * V + col0);
    }
    off += cnt * n_host;
    col0 += cnt;
  }
  m.pending.push_back(std::move(p));
}

void Engine::Impl::place_drawn(const std::vector<size_t>& at, int64_t vocab,
                               StepOutput& out) const {
  for (size_t k = 0; k < at.size(); ++k) {
    const int32_t tok = drawn[k];
    TPNODE_CHECK_KIND(tok >= 0 && tok < vocab, ErrorKind::kRuntime,
                      "device sampling returned token {} outside the vocabulary of {}", tok, vocab);
    out.tokens[at[k]] = tok;
  }
}

const StepOutput& Engine::collect() {
  Impl& m = *impl_;
  TPNODE_CHECK(!m.pending.empty(), "collect: no submitted step");
  Impl::Pending p = std::move(m.pending.front());
  m.pending.pop_front();
  if (!p.drawn_at.empty()) {
    m.drawn.resize(p.drawn_at.size());
    m.b.take_sampled(m.drawn.data(), m.drawn.size());
    m.place_drawn(p.drawn_at, hp_.n_vocab, p.out);
  }
  m.out = std::move(p.out);
  return p.root ? m.out : m.none;
}

// The layer sequence on the current batch (begin_step done): embedding, every layer, and the
// LM head over the batch's logit rows into s.logits. Only backend ops and collectives on
// backend memory, so a backend can capture it as one graph.
void Engine::Impl::forward(const HParams& hp, const ShardPlan& shard) {
  Impl& m = *this;  // the same names as in step()
  const int64_t T = m.meta.n_tokens(), E = hp.n_embd, hd = hp.head_dim;
  const int64_t q_cols = shard.n_head * hd, kv_cols = shard.n_head_kv * hd;
  const bool reduce = m.c.size() > 1;
  Scratch& s = m.s;

  float* x = s.x;  // the residual stream now; a residual add moves it to the other buffer
  b.embed(m.tok_embd, x);
  // Each norm goes to the backend together with the matmuls it feeds (norm_matmul_shared), so
  // that a backend can fold it into them; s.h is read by nothing else.
  auto norm = [&](const float* r, const float* w) {
    Backend::NormIn in{.x = x, .r = r, .w = w, .y = s.h, .n = E, .eps = hp.rms_eps};
    if (r != nullptr) {
      x = x == s.x ? s.x2 : s.x;
      in.x_out = x;
    }
    return in;
  };
  Backend::NormIn attn_norm = norm(nullptr, m.layers[0].attn_norm);
  // The all-reduce of s.t (row-parallel partial sums): folded into the norm that adds it to
  // the residual when the backend and the collective can (a plan, known before the matmul
  // that writes s.t), else on its own after that matmul.
  const size_t count = static_cast<size_t>(T * E);
  auto fold_plan = [&]() -> const void* {
    return reduce && b.folds_reduce(T, E) ? m.c.device_reduce_plan(s.t, count) : nullptr;
  };
  auto reduce_into = [&](Backend::NormIn& n, const void* plan) {
    if (!reduce) return;
    if (plan != nullptr) {
      n.reduce = plan;
    } else {
      m.c.all_reduce_sum(s.t, count);
    }
  };
  for (int64_t l = 0; l < hp.n_layer; ++l) {
    const LayerWeights& L = m.layers[static_cast<size_t>(l)];
    const Backend::MatmulOut qkv[] = {{&L.wq, s.q}, {&L.wk, s.k}, {&L.wv, s.v}};
    b.norm_matmul_shared(attn_norm, qkv, T);
    if (L.bq) {
      b.add_bias(s.q, L.bq, T, q_cols);
      b.add_bias(s.k, L.bk, T, kv_cols);
      b.add_bias(s.v, L.bv, T, kv_cols);
    }
    // RoPE runs inside attention (m.attn.rope), where a backend can fold it into the kernel.
    m.attn.layer = l;
    b.attention(s.q, s.k, s.v, s.attn, m.attn);
    const void* plan = fold_plan();
    b.matmul_reduced(L.wo, s.attn, s.t, T, plan);

    const Backend::MatmulOut gate_up[] = {{&L.gate, s.gate}, {&L.up, s.up}};
    Backend::NormIn ffn_norm = norm(s.t, L.ffn_norm);
    reduce_into(ffn_norm, plan);
    b.norm_matmul_shared(ffn_norm, gate_up, T);
    b.swiglu(s.gate, s.up, s.gate, T * shard.n_ff);
    // The residual add (and the all-reduce before it) meets the next layer's attention norm.
    if (l + 1 < hp.n_layer) {
      plan = fold_plan();
      b.matmul_reduced(L.down, s.gate, s.t, T, plan);
      attn_norm = norm(s.t, m.layers[static_cast<size_t>(l + 1)].attn_norm);
      reduce_into(attn_norm, plan);
    } else {
      b.matmul(L.down, s.gate, s.t, T);
      if (reduce) m.c.all_reduce_sum(s.t, count);
      b.add(x, s.t, x, T * E);
    }
  }

  const int64_t n_rows = static_cast<int64_t>(m.meta.logit_rows.size());
  if (n_rows == 0) return;
  b.gather_rows(x, s.last, E);
  b.rmsnorm(s.last, m.output_norm, s.normed, n_rows, E, hp.rms_eps);
  b.matmul(m.output, s.normed, s.logits, n_rows);
}

int32_t graph_seqs(int32_t n) { return n <= 32 ? next_pow2(n) : (n + 7) / 8 * 8; }

const StepOutput& LocalExecutor::run(const StepPlan& plan) { return engine_.run(plan); }
bool LocalExecutor::chains() const { return engine_.chains(); }
void LocalExecutor::submit(const StepPlan& plan) { engine_.submit(plan); }
const StepOutput& LocalExecutor::collect() { return engine_.collect(); }

const StepOutput& StepExecutor::collect() {
  TPNODE_CHECK(done_ != nullptr, "collect: no submitted step");
  const StepOutput* out = done_;
  done_ = nullptr;
  return *out;
}

}  // namespace tpnode
