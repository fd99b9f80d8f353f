#include "node/model/gguf_model_file.h"

#include <spdlog/spdlog.h>

#include <cmath>
#include <cstring>

#include "node/common/error.h"
#include "node/model/mapped_file.h"

namespace tpnode {

namespace {

class ArchKeys {
 public:
  ArchKeys(const GgufFile& g, std::string arch) : g_(g), arch_(std::move(arch)) {}
  std::string key(std::string_view k) const { return arch_ + "." + std::string(k); }
  int64_t integer(std::string_view k) const { return g_.get_integer(key(k)); }
  std::optional<int64_t> integer_opt(std::string_view k) const {
    return g_.get_integer_optional(key(k));
  }
  std::optional<float> f32_opt(std::string_view k) const { return g_.get_optional<float>(key(k)); }
  std::optional<std::string> str_opt(std::string_view k) const {
    return g_.get_optional<std::string>(key(k));
  }

 private:
  const GgufFile& g_;
  std::string arch_;
};

RopeScaling rope_scaling_from_gguf(const GgufFile& g, const ArchKeys& k) {
  RopeScaling rs;
  std::optional<std::string> type = k.str_opt("rope.scaling.type");
  std::optional<float> factor = k.f32_opt("rope.scaling.factor");
  if (!type) {
    // Older files name only a linear factor.
    if (std::optional<float> lin = k.f32_opt("rope.scale_linear"); lin && *lin != 1.0f) {
      rs.kind = RopeScaling::Kind::kLinear;
      rs.factor = *lin;
    }
    return rs;
  }
  if (*type == "none") return rs;
  if (*type == "linear") {
    TPNODE_CHECK(factor.has_value(), "{}: linear rope scaling without '{}'", g.source(),
                 k.key("rope.scaling.factor"));
    rs.kind = RopeScaling::Kind::kLinear;
    rs.factor = *factor;
    return rs;
  }
  TPNODE_THROW(ErrorKind::kUnsupported,
               "{}: rope scaling type '{}' is not supported (none, linear)", g.source(), *type);
}

// llama.cpp's converter stores Llama 3 rope scaling as per-pair divisors of the inverse
// frequencies in a rope_freqs.weight tensor rather than as keys; RoPE applies them as given.
std::vector<float> rope_freq_factors(const GgufFile& g, int64_t head_dim) {
  const GgufTensorInfo* t = g.find_tensor("rope_freqs.weight");
  if (t == nullptr) return {};
  TPNODE_CHECK(head_dim >= 2 && t->type == TensorType::kF32 &&
                   t->shape == std::vector<int64_t>{head_dim / 2},
               "{}: rope_freqs.weight must be F32 of shape [{}] for head_dim {}", g.source(),
               head_dim / 2, head_dim);
  std::vector<float> f(static_cast<size_t>(head_dim / 2));
  std::memcpy(f.data(), g.tensor_bytes(*t).data(), f.size() * sizeof(float));
  for (size_t i = 0; i < f.size(); ++i) {
    TPNODE_CHECK(std::isfinite(f[i]) && f[i] > 0.0f,
                 "{}: rope_freqs.weight[{}] = {} is not positive", g.source(), i, f[i]);
  }
  return f;
}

int32_t token_id(const GgufFile& g, std::string_view key, size_t n_tokens) {
  std::optional<int64_t> id = g.get_integer_optional(key);
  if (!id) return -1;
  if (*id < 0 || static_cast<uint64_t>(*id) >= n_tokens) {
    spdlog::warn("{}: {} = {} is outside the vocabulary of {} tokens; ignored", g.source(), key,
                 *id, n_tokens);
    return -1;
  }
  return static_cast<int32_t>(*id);
}

}  // namespace

HParams hparams_from_gguf(const GgufFile& g) {
  HParams hp;
  hp.arch = g.get<std::string>("general.architecture");
  if (hp.arch != "llama" && hp.arch != "qwen2") {
    TPNODE_THROW(ErrorKind::kUnsupported, "{}: architecture '{}' is not supported (llama, qwen2)",
                 g.source(), hp.arch);
  }
  hp.name = g.get_optional<std::string>("general.name").value_or("");
  ArchKeys k(g, hp.arch);
  hp.n_layer = k.integer("block_count");
  hp.n_embd = k.integer("embedding_length");
  hp.n_head = k.integer("attention.head_count");
  hp.n_head_kv = k.integer_opt("attention.head_count_kv").value_or(hp.n_head);
  hp.n_ff = k.integer("feed_forward_length");
  hp.n_ctx_train = k.integer("context_length");
  TPNODE_CHECK(hp.n_head > 0, "{}: {} = {} must be positive", g.source(),
               k.key("attention.head_count"), hp.n_head);
  hp.head_dim = k.integer_opt("attention.key_length").value_or(hp.n_embd / hp.n_head);
  if (std::optional<int64_t> v = k.integer_opt("attention.value_length"); v && *v != hp.head_dim) {
    TPNODE_THROW(ErrorKind::kUnsupported, "{}: value head size {} differs from key head size {}",
                 g.source(), *v, hp.head_dim);
  }
  if (std::optional<int64_t> rot = k.integer_opt("rope.dimension_count");
      rot && *rot != hp.head_dim) {
    TPNODE_THROW(ErrorKind::kUnsupported, "{}: partial RoPE ({} of {} dimensions) is not supported",
                 g.source(), *rot, hp.head_dim);
  }
  hp.rope_theta = k.f32_opt("rope.freq_base").value_or(10000.0f);
  hp.rms_eps = k.f32_opt("attention.layer_norm_rms_epsilon").value_or(1e-5f);
  hp.rope_scaling = rope_scaling_from_gguf(g, k);
  // The converter permutes llama Q/K rows for interleaved RoPE; qwen2 keeps HF's layout.
  hp.rope_style = hp.arch == "llama" ? RopeStyle::kInterleaved : RopeStyle::kNeox;
  if (std::optional<int64_t> v = k.integer_opt("vocab_size")) {
    hp.n_vocab = *v;
  } else {
    const GgufValue* tokens = g.find("tokenizer.ggml.tokens");
    TPNODE_CHECK(tokens != nullptr && tokens->type == GgufType::kArray,
                 "{}: no '{}' and no tokenizer.ggml.tokens", g.source(), k.key("vocab_size"));
    hp.n_vocab = static_cast<int64_t>(std::min<uint64_t>(tokens->count, INT64_MAX));
  }
  hp.rope_scaling.freq_factors = rope_freq_factors(g, hp.head_dim);
  hp.tied_embeddings = g.find_tensor("output.weight") == nullptr;
  hp.attn_bias = g.find_tensor("blk.0.attn_q.bias") != nullptr;
  return hp;
}

TokenizerData tokenizer_from_gguf(const GgufFile& g) {
  TokenizerData t;
  t.model = g.get<std::string>("tokenizer.ggml.model");
  const bool spm = t.model == "llama";
  t.pre = g.get_optional<std::string>("tokenizer.ggml.pre").value_or("default");
  t.tokens = g.get_array<std::string>("tokenizer.ggml.tokens");
  const size_t n = t.tokens.size();
  if (g.has("tokenizer.ggml.scores")) {
    t.scores = g.get_array<float>("tokenizer.ggml.scores");
    TPNODE_CHECK(t.scores.size() == n, "{}: tokenizer.ggml.scores has {} entries for {} tokens",
                 g.source(), t.scores.size(), n);
  }
  if (g.has("tokenizer.ggml.token_type")) {
    t.token_types = g.get_array<int32_t>("tokenizer.ggml.token_type");
    TPNODE_CHECK(t.token_types.size() == n,
                 "{}: tokenizer.ggml.token_type has {} entries for {} tokens", g.source(),
                 t.token_types.size(), n);
  }
  if (g.has("tokenizer.ggml.merges")) t.merges = g.get_array<std::string>("tokenizer.ggml.merges");
  t.bos_id = token_id(g, "tokenizer.ggml.bos_token_id", n);
  t.eos_id = token_id(g, "tokenizer.ggml.eos_token_id", n);
  t.eot_id = token_id(g, "tokenizer.ggml.eot_token_id", n);
  t.unk_id = token_id(g, "tokenizer.ggml.unknown_token_id", n);
  t.pad_id = token_id(g, "tokenizer.ggml.padding_token_id", n);
  // SentencePiece models add BOS and a leading space unless told otherwise; BPE ones do not.
  t.add_bos = g.get_optional<bool>("tokenizer.ggml.add_bos_token").value_or(spm);
  t.add_eos = g.get_optional<bool>("tokenizer.ggml.add_eos_token").value_or(false);
  t.add_space_prefix = g.get_optional<bool>("tokenizer.ggml.add_space_prefix").value_or(spm);
  t.chat_template = g.get_optional<std::string>("tokenizer.chat_template").value_or("");
  return t;
}

std::vector<TensorView> tensor_views_from_gguf(const GgufFile& g) {
  std::vector<TensorView> views;
  views.reserve(g.tensors().size());
  for (const GgufTensorInfo& info : g.tensors()) {
    TensorView v;
    v.name = info.name;
    v.type = info.type;
    v.shape = info.shape;
    v.data = g.tensor_bytes(info).data();
    v.nbytes = info.nbytes;
    v.file_offset = g.data_offset() + info.offset;
    v.file = g.source();
    views.push_back(std::move(v));
  }
  return views;
}

namespace {

class GgufModelFile final : public ModelFile {
 public:
  explicit GgufModelFile(const std::string& path)
      : map_(path), gguf_(GgufFile::parse(map_.bytes(), path)) {
    path_ = path;
    hparams_ = hparams_from_gguf(gguf_);
    tokenizer_ = tokenizer_from_gguf(gguf_);
    tensors_ = tensor_views_from_gguf(gguf_);
  }

  std::string_view format() const override { return "gguf"; }
  void release_pages() const override { map_.release_pages(); }

  std::vector<std::pair<std::string, std::string>> metadata_summary() const override {
    std::vector<std::pair<std::string, std::string>> out;
    out.reserve(gguf_.metadata().size() + 1);
    out.emplace_back("GGUF.version", std::to_string(gguf_.version()));
    for (const auto& [key, value] : gguf_.metadata())
      out.emplace_back(key, gguf_value_summary(value));
    return out;
  }

 private:
  MappedFile map_;  // before gguf_: the parse views its bytes
  GgufFile gguf_;
};

}  // namespace

std::unique_ptr<ModelFile> open_gguf_model(const std::string& path) {
  return std::make_unique<GgufModelFile>(path);
}

}  // namespace tpnode
