// ModelFile on the default model against what gguf-py reads from the same file
// (tests/fixtures/model_files/smollm2_reference.json, written by tools/gguf_reference.py).
// Skips when the model has not been fetched (launch/fetch_model.sh).
#include <gtest/gtest.h>

#include <boost/json.hpp>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

#include "node/model/gguf_file.h"
#include "node/model/mapped_file.h"
#include "node/model/model_file.h"

namespace tpnode {
namespace {

namespace json = boost::json;

const std::string kModel =
    std::string(TPNODE_SOURCE_DIR) + "/models/SmolLM2-135M-Instruct.Q4_1.gguf";
const std::string kReference =
    std::string(TPNODE_SOURCE_DIR) + "/tests/fixtures/model_files/smollm2_reference.json";

class DefaultModel : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (!std::filesystem::exists(kModel)) return;
    std::ifstream in(kReference);
    std::stringstream ss;
    ss << in.rdbuf();
    ref_ = new json::object(json::parse(ss.str()).as_object());
    model_ = ModelFile::open(kModel).release();
  }
  static void TearDownTestSuite() {
    delete model_;
    delete ref_;
    model_ = nullptr;
    ref_ = nullptr;
  }
  void SetUp() override {
    if (model_ == nullptr)
      GTEST_SKIP() << "default model absent: " << kModel << " (run launch/fetch_model.sh)";
    ASSERT_EQ(std::filesystem::file_size(kModel), ref().at("file_size").to_number<uint64_t>())
        << "the model file differs from the one the reference was made from; rerun "
           "tools/gguf_reference.py";
  }
  static const json::object& ref() { return *ref_; }
  static const ModelFile& model() { return *model_; }

  static inline json::object* ref_ = nullptr;
  static inline ModelFile* model_ = nullptr;
};

int64_t num(const json::object& o, const char* key) { return o.at(key).to_number<int64_t>(); }

TEST_F(DefaultModel, HParams) {
  const HParams& hp = model().hparams();
  const json::object& w = ref().at("hparams").as_object();
  EXPECT_EQ(model().format(), "gguf");
  EXPECT_EQ(hp.arch, ref().at("arch").as_string());
  EXPECT_EQ(hp.name, w.at("name").as_string());
  EXPECT_EQ(hp.n_layer, num(w, "n_layer"));
  EXPECT_EQ(hp.n_embd, num(w, "n_embd"));
  EXPECT_EQ(hp.n_head, num(w, "n_head"));
  EXPECT_EQ(hp.n_head_kv, num(w, "n_head_kv"));
  EXPECT_EQ(hp.head_dim, num(w, "head_dim"));
  EXPECT_EQ(hp.n_ff, num(w, "n_ff"));
  EXPECT_EQ(hp.n_vocab, num(w, "n_vocab"));
  EXPECT_EQ(hp.n_ctx_train, num(w, "n_ctx_train"));
  EXPECT_EQ(hp.rope_theta, static_cast<float>(w.at("rope_theta").to_number<double>()));
  EXPECT_EQ(hp.rms_eps, static_cast<float>(w.at("rms_eps").to_number<double>()));
  EXPECT_EQ(hp.tied_embeddings, w.at("tied_embeddings").as_bool());
  EXPECT_EQ(hp.attn_bias, w.at("attn_bias").as_bool());
  EXPECT_EQ(hp.rope_style, RopeStyle::kInterleaved);  // llama GGUF
  EXPECT_EQ(hp.rope_scaling.kind, RopeScaling::Kind::kNone);
  // The facts the brief states for SmolLM2-135M, independent of any reader.
  EXPECT_EQ(hp.n_layer, 30);
  EXPECT_EQ(hp.n_embd, 576);
  EXPECT_EQ(hp.n_head, 9);
  EXPECT_EQ(hp.n_head_kv, 3);
  EXPECT_EQ(hp.head_dim, 64);
  EXPECT_EQ(hp.n_ff, 1536);
  EXPECT_EQ(hp.n_vocab, 49152);
  EXPECT_EQ(hp.rope_theta, 100000.0f);
  EXPECT_TRUE(hp.tied_embeddings);
}

TEST_F(DefaultModel, Tokenizer) {
  const TokenizerData& t = model().tokenizer();
  const json::object& w = ref().at("tokenizer").as_object();
  EXPECT_EQ(t.model, w.at("model").as_string());
  EXPECT_EQ(t.pre, w.at("pre").as_string());
  EXPECT_EQ(static_cast<int64_t>(t.tokens.size()), num(w, "n_tokens"));
  EXPECT_EQ(static_cast<int64_t>(t.merges.size()), num(w, "n_merges"));
  EXPECT_EQ(t.token_types.size(), t.tokens.size());
  EXPECT_EQ(t.bos_id, num(w, "bos"));
  EXPECT_EQ(t.eos_id, num(w, "eos"));
  EXPECT_EQ(t.unk_id, num(w, "unk"));
  EXPECT_EQ(t.pad_id, num(w, "pad"));
  EXPECT_EQ(t.add_bos, w.at("add_bos").as_bool());
  EXPECT_EQ(t.add_space_prefix, w.at("add_space_prefix").as_bool());
  const json::array& first = w.at("first_tokens").as_array();
  for (size_t i = 0; i < first.size(); ++i) EXPECT_EQ(t.tokens.at(i), first[i].as_string());
  EXPECT_EQ(t.tokens.back(), w.at("last_token").as_string());
  EXPECT_EQ(static_cast<int64_t>(t.chat_template.size()), num(w, "chat_template_length"));
  EXPECT_NE(t.chat_template.find("<|im_start|>"), std::string::npos);  // ChatML
}

TEST_F(DefaultModel, EveryTensor) {
  const json::array& want = ref().at("tensors").as_array();
  ASSERT_EQ(model().tensors().size(), want.size());
  ASSERT_EQ(static_cast<int64_t>(want.size()), num(ref(), "tensor_count"));
  for (size_t i = 0; i < want.size(); ++i) {
    const TensorView& t = model().tensors()[i];
    const json::object& w = want[i].as_object();
    SCOPED_TRACE(t.name);
    EXPECT_EQ(t.name, w.at("name").as_string());
    EXPECT_EQ(type_name(t.type), w.at("type").as_string());
    EXPECT_EQ(t.shape, json::value_to<std::vector<int64_t>>(w.at("shape")));
    EXPECT_EQ(t.file_offset, w.at("offset").to_number<uint64_t>());
    EXPECT_EQ(t.nbytes, w.at("nbytes").to_number<uint64_t>());
    EXPECT_EQ(t.file, kModel);
  }
}

TEST_F(DefaultModel, ViewsPointAtTheRightBytes) {
  for (const json::value& pv : ref().at("probes").as_array()) {
    const json::object& p = pv.as_object();
    const TensorView& t = model().get(std::string(p.at("name").as_string()));
    SCOPED_TRACE(t.name);
    std::vector<float> row(t.cols());
    dequantize_row(t.type, t.data, row.data(), t.cols());
    const json::array& first = p.at("row0_first").as_array();
    for (size_t j = 0; j < first.size(); ++j)
      EXPECT_EQ(row[j], static_cast<float>(first[j].to_number<double>()));
    double sum = 0;
    for (float x : row) sum += x;
    EXPECT_NEAR(sum, p.at("row0_sum").to_number<double>(), 1e-9 * (1 + std::abs(sum)));
  }
}

TEST_F(DefaultModel, MetadataKeysAndLayout) {
  std::vector<std::string> keys;
  for (const auto& [k, v] : model().metadata_summary()) {
    if (k != "GGUF.version") keys.push_back(k);
  }
  EXPECT_EQ(keys, json::value_to<std::vector<std::string>>(ref().at("metadata_keys")));

  MappedFile map(kModel);
  GgufFile g = GgufFile::parse(map.bytes(), kModel);
  EXPECT_EQ(g.version(), ref().at("version").to_number<uint32_t>());
  EXPECT_EQ(g.alignment(), ref().at("alignment").to_number<uint64_t>());
  EXPECT_EQ(g.data_offset(), ref().at("data_offset").to_number<uint64_t>());
}

}  // namespace
}  // namespace tpnode
