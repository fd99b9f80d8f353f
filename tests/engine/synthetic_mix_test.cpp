#include "node/engine/synthetic_mix.h"

#include <fmt/format.h>
#include <gtest/gtest.h>

#include <set>

#include "node/common/error.h"
#include "node/engine/weight_source.h"
#include "node/model/hparams.h"

namespace tpnode {
namespace {

// llama.cpp's Q4_K_M of a 32-layer model keeps attn_v and ffn_down in Q6_K in layers 0-3, 28-31
// and 6, 9, ..., 27 (llama-quant.cpp: i < n/8, i >= 7n/8, (i - n/8) % 3 == 2).
TEST(SyntheticMix, Q4KMMatchesLlamaCppLayersOfA32LayerModel) {
  const std::set<int64_t> want = {0, 1, 2, 3, 6, 9, 12, 15, 18, 21, 24, 27, 28, 29, 30, 31};
  std::set<int64_t> got;
  for (int64_t l = 0; l < 32; ++l) {
    if (q4_k_m_more_bits(l, 32)) got.insert(l);
  }
  EXPECT_EQ(got, want);
  // 80 layers (Llama-3-70B): 0-9, 70-79 and 12, 15, ..., 69.
  int n80 = 0;
  for (int64_t l = 0; l < 80; ++l) n80 += q4_k_m_more_bits(l, 80) ? 1 : 0;
  EXPECT_EQ(n80, 10 + 10 + 20);
  EXPECT_TRUE(q4_k_m_more_bits(12, 80));
  EXPECT_FALSE(q4_k_m_more_bits(13, 80));
}

HParams small_llama(int64_t layers) {
  HParams hp;
  hp.arch = "llama";
  hp.n_layer = layers;
  hp.n_embd = 256;
  hp.n_head = 4;
  hp.n_head_kv = 2;
  hp.head_dim = 64;
  hp.n_ff = 512;
  hp.n_vocab = 1000;
  return hp;
}

TEST(SyntheticMix, TypesOfTheSyntheticModel) {
  const HParams hp = small_llama(16);
  SyntheticMix mix = synthetic_mix("q4_k_m", hp);
  const SyntheticWeightSource src(hp, mix.matrix, 1, mix.overrides);
  for (int64_t l = 0; l < hp.n_layer; ++l) {
    SCOPED_TRACE(fmt::format("layer {}", l));
    const TensorType more = q4_k_m_more_bits(l, hp.n_layer) ? TensorType::kQ6_K : TensorType::kQ4_K;
    EXPECT_EQ(src.type(fmt::format("blk.{}.attn_v.weight", l)), more);
    EXPECT_EQ(src.type(fmt::format("blk.{}.ffn_down.weight", l)), more);
    EXPECT_EQ(src.type(fmt::format("blk.{}.attn_q.weight", l)), TensorType::kQ4_K);
    EXPECT_EQ(src.type(fmt::format("blk.{}.attn_output.weight", l)), TensorType::kQ4_K);
    EXPECT_EQ(src.type(fmt::format("blk.{}.ffn_up.weight", l)), TensorType::kQ4_K);
    EXPECT_EQ(src.type(fmt::format("blk.{}.attn_norm.weight", l)), TensorType::kF32);
  }
  EXPECT_EQ(src.type("output.weight"), TensorType::kQ6_K);
  EXPECT_EQ(src.type("token_embd.weight"), TensorType::kQ4_K);

  mix = synthetic_mix("q4_k_m-flat", hp);
  const SyntheticWeightSource flat(hp, mix.matrix, 1, mix.overrides);
  for (int64_t l = 0; l < hp.n_layer; ++l) {
    EXPECT_EQ(flat.type(fmt::format("blk.{}.ffn_down.weight", l)), TensorType::kQ6_K);
    EXPECT_EQ(flat.type(fmt::format("blk.{}.attn_v.weight", l)), TensorType::kQ4_K);
  }
  EXPECT_EQ(flat.type("output.weight"), TensorType::kQ6_K);
  EXPECT_EQ(flat.type("blk.0.attn_output.weight"), TensorType::kQ4_K);

  EXPECT_EQ(synthetic_mix("bf16", hp).matrix, TensorType::kBF16);
  EXPECT_TRUE(synthetic_mix("q8_0", hp).overrides.empty());
  EXPECT_THROW(synthetic_mix("q4_k_l", hp), Error);
}

// An 80-layer llama with grouped-query attention is a 70B to llama.cpp: its attn_v is Q5_K
// where it is not Q6_K; ffn_down as for any model.
TEST(SyntheticMix, Q4KMOfA70B) {
  HParams hp = small_llama(80);
  const SyntheticMix mix = synthetic_mix("q4_k_m", hp);
  const SyntheticWeightSource src(hp, mix.matrix, 1, mix.overrides);
  EXPECT_EQ(src.type("blk.0.attn_v.weight"), TensorType::kQ6_K);
  EXPECT_EQ(src.type("blk.13.attn_v.weight"), TensorType::kQ5_K);
  EXPECT_EQ(src.type("blk.13.ffn_down.weight"), TensorType::kQ4_K);
  EXPECT_EQ(src.type("blk.12.ffn_down.weight"), TensorType::kQ6_K);
  hp.n_head_kv = hp.n_head;  // no GQA: not a 70B
  const SyntheticMix mha = synthetic_mix("q4_k_m", hp);
  const SyntheticWeightSource mha_src(hp, mha.matrix, 1, mha.overrides);
  EXPECT_EQ(mha_src.type("blk.13.attn_v.weight"), TensorType::kQ4_K);
}

}  // namespace
}  // namespace tpnode
