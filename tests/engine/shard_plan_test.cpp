#include "node/engine/shard_plan.h"

#include <gtest/gtest.h>

#include "node/common/error.h"

namespace tpnode {
namespace {

HParams smollm2() {
  HParams hp;
  hp.arch = "llama";
  hp.n_layer = 30;
  hp.n_embd = 576;
  hp.n_head = 9;
  hp.n_head_kv = 3;
  hp.head_dim = 64;
  hp.n_ff = 1536;
  hp.n_vocab = 49152;
  return hp;
}

TEST(ShardPlan, DefaultModelSplitsOverThree) {
  const HParams hp = smollm2();
  EXPECT_EQ(ShardPlan::valid_sizes(hp, 32, 16), (std::vector<int>{1, 3}));
  for (int r = 0; r < 3; ++r) {
    ShardPlan s = ShardPlan::make(hp, 3, r, 32);
    EXPECT_EQ(s.n_head, 3);
    EXPECT_EQ(s.head0, 3 * r);
    EXPECT_EQ(s.n_head_kv, 1);
    EXPECT_EQ(s.kv_head0, r);
    EXPECT_EQ(s.n_ff, 512);
    EXPECT_EQ(s.ff0, 512 * r);
    EXPECT_EQ(s.n_vocab, 16384);
    EXPECT_EQ(s.vocab0, 16384 * r);
  }
}

TEST(ShardPlan, RejectsTwoForNineHeadsAndListsValidSizes) {
  try {
    ShardPlan::make(smollm2(), 2, 0, 32);
    FAIL() << "tp 2 accepted for 9 heads";
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("9 attention heads do not divide by 2"), std::string::npos) << msg;
    EXPECT_NE(msg.find("valid tensor-parallel sizes: 1, 3"), std::string::npos) << msg;
  }
}

TEST(ShardPlan, KvHeadsReplicatedWhenRanksExceedThem) {
  HParams hp = smollm2();
  hp.n_head = 8;
  hp.n_head_kv = 2;
  hp.head_dim = 32;
  hp.n_embd = 256;
  hp.n_ff = 512;
  // 4 ranks, 2 KV heads: two ranks share each KV head, each keeps a copy.
  for (int r = 0; r < 4; ++r) {
    ShardPlan s = ShardPlan::make(hp, 4, r, 32);
    EXPECT_EQ(s.n_head, 2);
    EXPECT_EQ(s.n_head_kv, 1);
    EXPECT_EQ(s.kv_head0, r / 2);
  }
}

TEST(ShardPlan, QuantBlockBoundariesLimitTheSplit) {
  HParams hp = smollm2();
  // 576 / 3 = 192 columns of attn_output per rank: fine for 32-blocks, not for 256-blocks.
  EXPECT_TRUE(ShardPlan::is_valid(hp, 3, 32));
  std::string why;
  EXPECT_FALSE(ShardPlan::is_valid(hp, 3, 256, &why));
  EXPECT_NE(why.find("quantization block"), std::string::npos) << why;
}

TEST(ShardPlan, UnevenVocabularyCoversEveryRow) {
  HParams hp = smollm2();
  hp.n_vocab = 49155;
  int64_t next = 0;
  for (int r = 0; r < 3; ++r) {
    ShardPlan s = ShardPlan::make(hp, 3, r, 32);
    EXPECT_EQ(s.vocab0, next);
    next += s.n_vocab;
    EXPECT_EQ(s.vocab_counts.size(), 3u);
  }
  EXPECT_EQ(next, 49155);
}

}  // namespace
}  // namespace tpnode
