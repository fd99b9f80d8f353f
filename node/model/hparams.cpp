#include "node/model/hparams.h"

#include <cmath>

#include "node/common/error.h"

namespace tpnode {

namespace {

// Upper bounds well above any llama-family model; they keep products like n_head * head_dim
// and buffer sizes derived from a hostile file far from overflow.
constexpr int64_t kMaxLayers = 4096;
constexpr int64_t kMaxDim = int64_t{1} << 20;
constexpr int64_t kMaxHeads = 4096;
constexpr int64_t kMaxHeadDim = 4096;
constexpr int64_t kMaxVocab = int64_t{1} << 24;
constexpr int64_t kMaxContext = int64_t{1} << 28;

void check_range(const char* field, int64_t v, int64_t max) {
  TPNODE_CHECK(v > 0 && v <= max, "hparams: {} = {} is not in 1..{}", field, v, max);
}

}  // namespace

void HParams::validate() const {
  TPNODE_CHECK(arch == "llama" || arch == "qwen2" || arch == "mistral",
               "hparams: architecture '{}' is not llama, qwen2 or mistral", arch);
  check_range("n_layer", n_layer, kMaxLayers);
  check_range("n_embd", n_embd, kMaxDim);
  check_range("n_head", n_head, kMaxHeads);
  check_range("n_head_kv", n_head_kv, kMaxHeads);
  check_range("head_dim", head_dim, kMaxHeadDim);
  check_range("n_ff", n_ff, kMaxDim);
  check_range("n_vocab", n_vocab, kMaxVocab);
  check_range("n_ctx_train", n_ctx_train, kMaxContext);
  TPNODE_CHECK(n_head % n_head_kv == 0, "hparams: n_head {} is not a multiple of n_head_kv {}",
               n_head, n_head_kv);
  TPNODE_CHECK(head_dim % 2 == 0, "hparams: head_dim {} is odd; RoPE rotates pairs", head_dim);
  TPNODE_CHECK(std::isfinite(rope_theta) && rope_theta > 0.0f,
               "hparams: rope_theta {} is not positive", rope_theta);
  TPNODE_CHECK(std::isfinite(rms_eps) && rms_eps > 0.0f && rms_eps < 1.0f,
               "hparams: rms_eps {} is not in (0, 1)", rms_eps);
  const RopeScaling& rs = rope_scaling;
  if (rs.kind != RopeScaling::Kind::kNone) {
    TPNODE_CHECK(std::isfinite(rs.factor) && rs.factor > 0.0f,
                 "hparams: rope scaling factor {} is not positive", rs.factor);
  }
  if (!rs.freq_factors.empty()) {
    TPNODE_CHECK(static_cast<int64_t>(rs.freq_factors.size()) == head_dim / 2,
                 "hparams: {} rope frequency factors for head_dim {}", rs.freq_factors.size(),
                 head_dim);
    for (float f : rs.freq_factors) {
      TPNODE_CHECK(std::isfinite(f) && f > 0.0f,
                   "hparams: rope frequency factor {} is not positive", f);
    }
  }
  if (rs.kind == RopeScaling::Kind::kLlama3) {
    TPNODE_CHECK(
        std::isfinite(rs.low_freq_factor) && std::isfinite(rs.high_freq_factor) &&
            rs.low_freq_factor > 0.0f && rs.low_freq_factor < rs.high_freq_factor,
        "hparams: llama3 rope scaling needs 0 < low_freq_factor ({}) < high_freq_factor ({})",
        rs.low_freq_factor, rs.high_freq_factor);
    check_range("rope_scaling.original_context", rs.original_context, kMaxContext);
  }
}

}  // namespace tpnode
