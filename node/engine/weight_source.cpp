#include "node/engine/weight_source.h"

#include <algorithm>
#include <functional>

#include "node/common/error.h"

namespace tpnode {

uint64_t WeightSource::bytes(const std::string& name, const MatrixSlice& slice) const {
  return row_bytes(type(name), slice.cols) * static_cast<uint64_t>(slice.rows);
}

int64_t WeightSource::row_parallel_block(const HParams& hp) const {
  int64_t block = 1;
  for (int64_t l = 0; l < hp.n_layer; ++l) {
    for (const char* name : {"attn_output.weight", "ffn_down.weight"}) {
      block = std::max(block, type_traits(type(fmt::format("blk.{}.{}", l, name))).block_size);
    }
  }
  return block;
}

// --- file -----------------------------------------------------------------------------------

bool FileWeightSource::has(const std::string& name) const { return file_.find(name) != nullptr; }

std::pair<int64_t, int64_t> FileWeightSource::shape(const std::string& name) const {
  const TensorView& t = file_.get(name);
  return {t.rows(), t.cols()};
}

TensorType FileWeightSource::type(const std::string& name) const { return file_.get(name).type; }

Weight FileWeightSource::matrix(const std::string& name, const MatrixSlice& slice, Backend& b) {
  const TensorView& t = file_.get(name);
  const int64_t block = type_traits(t.type).block_size;
  TPNODE_CHECK(slice.row0 >= 0 && slice.rows > 0 && slice.row0 + slice.rows <= t.rows() &&
                   slice.col0 >= 0 && slice.cols > 0 && slice.col0 + slice.cols <= t.cols(),
               "{}: slice rows [{}, +{}) cols [{}, +{}) outside [{} x {}]", name, slice.row0,
               slice.rows, slice.col0, slice.cols, t.rows(), t.cols());
  TPNODE_CHECK(slice.col0 % block == 0 && slice.cols % block == 0,
               "{}: column slice [{}, +{}) is not on {}-element block boundaries", name,
               slice.col0, slice.cols, block);
  const size_t stride = row_bytes(t.type, t.cols());
  HostMatrix m;
  m.type = t.type;
  m.data = t.data + static_cast<size_t>(slice.row0) * stride + row_bytes(t.type, slice.col0);
  m.rows = slice.rows;
  m.cols = slice.cols;
  m.row_stride = stride;
  return b.upload_weight(m);
}

float* FileWeightSource::vector(const std::string& name, int64_t off, int64_t n, Backend& b) {
  const TensorView& t = file_.get(name);
  TPNODE_CHECK(off >= 0 && n > 0 && off + n <= t.elements(), "{}: slice [{}, +{}) outside {}",
               name, off, n, t.elements());
  return b.upload_vector(t.type, t.data + row_bytes(t.type, off), n);
}

// --- synthetic ------------------------------------------------------------------------------

SyntheticWeightSource::SyntheticWeightSource(
    const HParams& hp, TensorType matrix_type, uint64_t seed,
    std::vector<std::pair<std::string, TensorType>> overrides)
    : hp_(hp), type_(matrix_type), seed_(seed), overrides_(std::move(overrides)) {}

namespace {

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// Layer-independent part of a name: "blk.7.attn_q.weight" -> "attn_q.weight".
std::string base_name(const std::string& name) {
  if (name.rfind("blk.", 0) != 0) return name;
  const size_t dot = name.find('.', 4);
  return dot == std::string::npos ? name : name.substr(dot + 1);
}

}  // namespace

bool SyntheticWeightSource::has(const std::string& name) const {
  const std::string base = base_name(name);
  if (base.find(".bias") != std::string::npos) return hp_.attn_bias;
  if (name == "output.weight") return !hp_.tied_embeddings;
  static const char* kKnown[] = {"token_embd.weight", "output_norm.weight", "attn_norm.weight",
                                 "attn_q.weight",     "attn_k.weight",      "attn_v.weight",
                                 "attn_output.weight", "ffn_norm.weight",   "ffn_gate.weight",
                                 "ffn_up.weight",     "ffn_down.weight"};
  for (const char* k : kKnown) {
    if (base == k) return true;
  }
  return false;
}

std::pair<int64_t, int64_t> SyntheticWeightSource::shape(const std::string& name) const {
  const std::string base = base_name(name);
  const int64_t q = hp_.n_head * hp_.head_dim, kv = hp_.n_head_kv * hp_.head_dim;
  if (base == "token_embd.weight" || base == "output.weight") return {hp_.n_vocab, hp_.n_embd};
  if (base == "attn_q.weight") return {q, hp_.n_embd};
  if (base == "attn_k.weight" || base == "attn_v.weight") return {kv, hp_.n_embd};
  if (base == "attn_output.weight") return {hp_.n_embd, q};
  if (base == "ffn_gate.weight" || base == "ffn_up.weight") return {hp_.n_ff, hp_.n_embd};
  if (base == "ffn_down.weight") return {hp_.n_embd, hp_.n_ff};
  if (base == "attn_q.bias") return {1, q};
  if (base == "attn_k.bias" || base == "attn_v.bias") return {1, kv};
  if (ends_with(base, "norm.weight")) return {1, hp_.n_embd};
  TPNODE_THROW(ErrorKind::kInvalidInput, "synthetic model has no tensor {}", name);
}

TensorType SyntheticWeightSource::type(const std::string& name) const {
  if (shape(name).first == 1) return TensorType::kF32;
  // A suffix names whole dotted parts: "output.weight" is the LM head, not attn_output.
  for (const auto& [suffix, t] : overrides_) {
    if (name == suffix || ends_with(name, "." + suffix)) return t;
  }
  return type_;
}

Weight SyntheticWeightSource::matrix(const std::string& name, const MatrixSlice& slice,
                                     Backend& b) {
  const uint64_t seed = seed_ * 0x9E3779B97F4A7C15ull ^ std::hash<std::string>{}(name) ^
                        static_cast<uint64_t>(slice.row0) << 20 ^ static_cast<uint64_t>(slice.col0);
  return b.synth_weight(type(name), slice.rows, slice.cols, seed);
}

float* SyntheticWeightSource::vector(const std::string& name, int64_t off, int64_t n,
                                     Backend& b) {
  (void)name;
  (void)off;
  return b.synth_vector(n, 1.0f);
}

}  // namespace tpnode
