#include "node/model/model_file_checks.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <map>
#include <string_view>

#include "node/common/error.h"

namespace tpnode {

namespace {

class ShapeChecker {
 public:
  ShapeChecker(const std::vector<TensorView>& tensors, const std::string& path) : path_(path) {
    for (const TensorView& t : tensors) by_name_.emplace(t.name, &t);
  }

  bool has(const std::string& name) const { return by_name_.count(name) != 0; }

  // shape in GGUF order: the contiguous dimension first.
  void expect(const std::string& name, const std::vector<int64_t>& shape) const {
    auto it = by_name_.find(name);
    TPNODE_CHECK(it != by_name_.end(), "{}: missing tensor '{}'", path_, name);
    const TensorView& t = *it->second;
    TPNODE_CHECK(t.shape == shape,
                 "{}: tensor '{}' has shape [{}], expected [{}] from the hyper-parameters", path_,
                 name, fmt::join(t.shape, ", "), fmt::join(shape, ", "));
  }

 private:
  const std::string& path_;
  std::map<std::string, const TensorView*, std::less<>> by_name_;
};

}  // namespace

void check_model_tensors(const HParams& hp, const std::vector<TensorView>& tensors,
                         const std::string& path) {
  ShapeChecker c(tensors, path);
  const int64_t q_dim = hp.n_head * hp.head_dim;
  const int64_t kv_dim = hp.n_head_kv * hp.head_dim;
  c.expect("token_embd.weight", {hp.n_embd, hp.n_vocab});
  c.expect("output_norm.weight", {hp.n_embd});
  if (!hp.tied_embeddings) c.expect("output.weight", {hp.n_embd, hp.n_vocab});
  for (int64_t i = 0; i < hp.n_layer; ++i) {
    auto blk = [i](std::string_view what) { return fmt::format("blk.{}.{}", i, what); };
    c.expect(blk("attn_norm.weight"), {hp.n_embd});
    c.expect(blk("attn_q.weight"), {hp.n_embd, q_dim});
    c.expect(blk("attn_k.weight"), {hp.n_embd, kv_dim});
    c.expect(blk("attn_v.weight"), {hp.n_embd, kv_dim});
    c.expect(blk("attn_output.weight"), {q_dim, hp.n_embd});
    c.expect(blk("ffn_norm.weight"), {hp.n_embd});
    c.expect(blk("ffn_gate.weight"), {hp.n_embd, hp.n_ff});
    c.expect(blk("ffn_up.weight"), {hp.n_embd, hp.n_ff});
    c.expect(blk("ffn_down.weight"), {hp.n_ff, hp.n_embd});
    if (hp.attn_bias) {
      c.expect(blk("attn_q.bias"), {q_dim});
      c.expect(blk("attn_k.bias"), {kv_dim});
      c.expect(blk("attn_v.bias"), {kv_dim});
    }
  }
}

}  // namespace tpnode
