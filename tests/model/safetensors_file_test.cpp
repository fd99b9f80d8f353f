// The safetensors header parser on hand-built buffers, HF -> internal names, and the folder
// loader's choices (skipped and ignored tensors, shards, tokenizer_config overrides) on the
// fixtures of tools/make_model_file_fixtures.py. Values are checked in hparams_test.cpp.
#include "node/model/safetensors_file.h"

#include <gtest/gtest.h>

#include <cstring>
#include <map>

#include "node/common/error.h"
#include "node/model/hf_names.h"
#include "node/model/model_file.h"

namespace tpnode {
namespace {

const std::string kDir = std::string(TPNODE_SOURCE_DIR) + "/tests/fixtures/model_files/";

std::vector<uint8_t> make_safetensors(const std::string& header, size_t data_bytes) {
  std::vector<uint8_t> b(8 + header.size() + data_bytes, 0);
  uint64_t n = header.size();
  std::memcpy(b.data(), &n, 8);
  std::memcpy(b.data() + 8, header.data(), header.size());
  for (size_t i = 0; i < data_bytes; ++i) b[8 + header.size() + i] = static_cast<uint8_t>(i);
  return b;
}

TEST(SafetensorsParse, ReadsEntriesInOrder) {
  std::string header =
      R"({"__metadata__":{"format":"pt"},"b":{"dtype":"F32","shape":[2,3],"data_offsets":[0,24]},)"
      R"("a":{"dtype":"BF16","shape":[4],"data_offsets":[24,32]},"s":{"dtype":"I64","shape":[],"data_offsets":[32,40]}})";
  std::vector<uint8_t> b = make_safetensors(header, 40);
  SafetensorsHeader h = parse_safetensors(b, "mem.safetensors");
  EXPECT_EQ(h.data_offset, 8 + header.size());
  ASSERT_EQ(h.tensors.size(), 3u);
  EXPECT_EQ(h.tensors[0].name, "b");
  EXPECT_EQ(h.tensors[0].type, TensorType::kF32);
  EXPECT_EQ(h.tensors[0].shape, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(h.tensors[0].begin, 0u);
  EXPECT_EQ(h.tensors[0].end, 24u);
  EXPECT_EQ(h.tensors[1].name, "a");
  EXPECT_EQ(h.tensors[1].type, TensorType::kBF16);
  EXPECT_EQ(h.tensors[2].dtype, "I64");
  EXPECT_FALSE(h.tensors[2].type.has_value());  // sized and checked, but not loadable
  EXPECT_TRUE(h.tensors[2].shape.empty());
}

TEST(SafetensorsParse, EmptyHeaderObjectIsValid) {
  std::vector<uint8_t> b = make_safetensors("{}", 0);
  EXPECT_TRUE(parse_safetensors(b, "empty.safetensors").tensors.empty());
}

TEST(HfNames, MapsLlamaFamilyNames) {
  std::map<std::string, std::string> cases = {
      {"model.embed_tokens.weight", "token_embd.weight"},
      {"model.norm.weight", "output_norm.weight"},
      {"lm_head.weight", "output.weight"},
      {"model.layers.0.input_layernorm.weight", "blk.0.attn_norm.weight"},
      {"model.layers.12.self_attn.q_proj.weight", "blk.12.attn_q.weight"},
      {"model.layers.3.self_attn.k_proj.bias", "blk.3.attn_k.bias"},
      {"model.layers.3.self_attn.v_proj.weight", "blk.3.attn_v.weight"},
      {"model.layers.3.self_attn.o_proj.weight", "blk.3.attn_output.weight"},
      {"model.layers.7.post_attention_layernorm.weight", "blk.7.ffn_norm.weight"},
      {"model.layers.7.mlp.gate_proj.weight", "blk.7.ffn_gate.weight"},
      {"model.layers.7.mlp.up_proj.weight", "blk.7.ffn_up.weight"},
      {"model.layers.7.mlp.down_proj.weight", "blk.7.ffn_down.weight"},
  };
  for (const auto& [hf, ours] : cases) EXPECT_EQ(internal_name_from_hf(hf), ours) << hf;
  for (const char* skipped :
       {"model.layers.0.self_attn.rotary_emb.inv_freq", "model.layers.01.mlp.up_proj.weight",
        "model.layers.x.mlp.up_proj.weight", "model.layers.-1.mlp.up_proj.weight",
        "model.layers..mlp.up_proj.weight", "model.embed_tokens",
        "model.layers.0.mlp.up_proj.scales", "other.weight", ""}) {
    EXPECT_FALSE(internal_name_from_hf(skipped).has_value()) << skipped;
  }
}

TEST(SafetensorsFolder, SkipsUnusedTensorsAndKeepsHfLayout) {
  std::unique_ptr<ModelFile> m = ModelFile::open(kDir + "tiny_llama_st");
  EXPECT_EQ(m->format(), "safetensors");
  // 2 layers x 9 + embeddings, final norm, lm_head; the rotary inv_freq buffer is skipped.
  EXPECT_EQ(m->tensors().size(), 21u);
  for (const TensorView& t : m->tensors()) EXPECT_EQ(t.name.find("inv_freq"), std::string::npos);
  const TensorView& q = m->get("blk.0.attn_q.weight");
  EXPECT_EQ(q.type, TensorType::kF16);
  EXPECT_EQ(q.shape, (std::vector<int64_t>{64, 64}));
  const TensorView& k = m->get("blk.1.attn_k.weight");
  EXPECT_EQ(k.shape, (std::vector<int64_t>{64, 32}));  // HF [32, 64] reversed
  EXPECT_EQ(m->get("blk.0.ffn_down.weight").type, TensorType::kBF16);
  EXPECT_EQ(m->get("output.weight").type, TensorType::kF32);
  EXPECT_EQ(m->hparams().rope_style, RopeStyle::kNeox);

  std::map<std::string, std::string> s;
  for (auto& [key, value] : m->metadata_summary()) s[key] = value;
  EXPECT_EQ(s.at("safetensors.shards"), "1");
  EXPECT_EQ(s.at("model_type"), "\"llama\"");
  EXPECT_EQ(s.at("num_hidden_layers"), "2");
}

TEST(SafetensorsFolder, ShardsAndTiedHeadIgnored) {
  std::unique_ptr<ModelFile> m = ModelFile::open(kDir + "tiny_qwen2_sharded");
  EXPECT_TRUE(m->hparams().tied_embeddings);
  EXPECT_TRUE(m->hparams().attn_bias);
  EXPECT_EQ(m->find("output.weight"), nullptr);  // lm_head.weight present but tied
  EXPECT_EQ(m->get("blk.0.attn_q.bias").shape, (std::vector<int64_t>{64}));
  EXPECT_NE(m->get("blk.0.attn_q.weight").file.find("model-00001-of-00002.safetensors"),
            std::string::npos);
  EXPECT_NE(m->get("blk.1.attn_q.weight").file.find("model-00002-of-00002.safetensors"),
            std::string::npos);
  // The named "default" template wins over the first of the list.
  EXPECT_EQ(m->tokenizer().chat_template, "{% for message in messages %}{{'<|im_start|>'");
  EXPECT_EQ(m->tokenizer().tokens.at(static_cast<size_t>(m->tokenizer().eos_id)), "<|im_end|>");
}

}  // namespace
}  // namespace tpnode
