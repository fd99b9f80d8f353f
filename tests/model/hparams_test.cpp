// ModelFile::open on the four fixture models (two GGUF, two safetensors folders): HParams,
// tokenizer basics and every tensor's name, type, shape, offset and values against
// tests/fixtures/model_files/expected.json (written with the fixtures by
// tools/make_model_file_fixtures.py, GGUF sides read back by gguf-py). Then HParams from
// config.json and HParams::validate on their own.
#include <gtest/gtest.h>

#include <algorithm>
#include <boost/json.hpp>
#include <cctype>
#include <cmath>
#include <fstream>
#include <map>
#include <sstream>

#include "node/common/error.h"
#include "node/model/gguf_model_file.h"
#include "node/model/model_file.h"
#include "node/model/safetensors_model_file.h"

namespace tpnode {
namespace {

namespace json = boost::json;

const std::string kDir = std::string(TPNODE_SOURCE_DIR) + "/tests/fixtures/model_files/";

const json::object& expected(const std::string& fixture) {
  static const json::value root = [] {
    std::ifstream in(kDir + "expected.json");
    std::stringstream ss;
    ss << in.rdbuf();
    return json::parse(ss.str());
  }();
  return root.at(fixture).as_object();
}

int64_t num(const json::object& o, const char* key) { return o.at(key).to_number<int64_t>(); }
double dbl(const json::object& o, const char* key) { return o.at(key).to_number<double>(); }

const char* rope_scaling_name(RopeScaling::Kind k) {
  switch (k) {
    case RopeScaling::Kind::kNone:
      return "none";
    case RopeScaling::Kind::kLinear:
      return "linear";
    case RopeScaling::Kind::kLlama3:
      return "llama3";
  }
  return "?";
}

void expect_hparams(const HParams& hp, const json::object& w) {
  EXPECT_EQ(hp.arch, w.at("arch").as_string());
  EXPECT_EQ(hp.name, w.at("name").as_string());
  EXPECT_EQ(hp.n_layer, num(w, "n_layer"));
  EXPECT_EQ(hp.n_embd, num(w, "n_embd"));
  EXPECT_EQ(hp.n_head, num(w, "n_head"));
  EXPECT_EQ(hp.n_head_kv, num(w, "n_head_kv"));
  EXPECT_EQ(hp.head_dim, num(w, "head_dim"));
  EXPECT_EQ(hp.n_ff, num(w, "n_ff"));
  EXPECT_EQ(hp.n_vocab, num(w, "n_vocab"));
  EXPECT_EQ(hp.n_ctx_train, num(w, "n_ctx_train"));
  EXPECT_EQ(hp.rope_theta, static_cast<float>(dbl(w, "rope_theta")));
  EXPECT_EQ(hp.rms_eps, static_cast<float>(dbl(w, "rms_eps")));
  EXPECT_EQ(hp.rope_style == RopeStyle::kNeox ? "neox" : "interleaved",
            w.at("rope_style").as_string());
  EXPECT_EQ(hp.tied_embeddings, w.at("tied_embeddings").as_bool());
  EXPECT_EQ(hp.attn_bias, w.at("attn_bias").as_bool());
  EXPECT_EQ(rope_scaling_name(hp.rope_scaling.kind), w.at("rope_scaling").as_string());
  std::vector<float> factors;
  if (w.contains("rope_freq_factors")) {
    for (const json::value& f : w.at("rope_freq_factors").as_array()) {
      factors.push_back(static_cast<float>(f.to_number<double>()));
    }
  }
  EXPECT_EQ(hp.rope_scaling.freq_factors, factors);
  if (hp.rope_scaling.kind == RopeScaling::Kind::kLlama3) {
    EXPECT_EQ(hp.rope_scaling.factor, dbl(w, "rope_factor"));
    EXPECT_EQ(hp.rope_scaling.low_freq_factor, dbl(w, "rope_low_freq_factor"));
    EXPECT_EQ(hp.rope_scaling.high_freq_factor, dbl(w, "rope_high_freq_factor"));
    EXPECT_EQ(hp.rope_scaling.original_context, num(w, "rope_original_context"));
  }
}

void expect_tokenizer(const TokenizerData& t, const json::object& w) {
  auto check_int = [&](const char* key, int64_t got) {
    if (w.contains(key)) {
      EXPECT_EQ(got, num(w, key)) << key;
    }
  };
  if (w.contains("model")) {
    EXPECT_EQ(t.model, w.at("model").as_string());
  }
  if (w.contains("pre")) {
    EXPECT_EQ(t.pre, w.at("pre").as_string());
  }
  check_int("n_tokens", static_cast<int64_t>(t.tokens.size()));
  check_int("n_merges", static_cast<int64_t>(t.merges.size()));
  check_int("n_scores", static_cast<int64_t>(t.scores.size()));
  check_int("bos", t.bos_id);
  check_int("eos", t.eos_id);
  check_int("unk", t.unk_id);
  check_int("pad", t.pad_id);
  if (w.contains("add_bos")) {
    EXPECT_EQ(t.add_bos, w.at("add_bos").as_bool());
  }
  if (w.contains("add_space_prefix")) {
    EXPECT_EQ(t.add_space_prefix, w.at("add_space_prefix").as_bool());
  }
  if (w.contains("token_5")) {
    EXPECT_EQ(t.tokens.at(5), w.at("token_5").as_string());
  }
  std::string prefix(w.at("chat_template_prefix").as_string());
  EXPECT_EQ(t.chat_template.substr(0, prefix.size()), prefix);
}

void expect_tensors(const ModelFile& m, const json::array& want, const std::string& dir) {
  ASSERT_EQ(m.tensors().size(), want.size());
  for (const json::value& wv : want) {
    const json::object& w = wv.as_object();
    std::string name(w.at("name").as_string());
    SCOPED_TRACE(name);
    const TensorView* t = m.find(name);
    ASSERT_NE(t, nullptr);
    EXPECT_EQ(&m.get(name), t);
    EXPECT_EQ(type_name(t->type), w.at("type").as_string());
    EXPECT_EQ(t->shape, json::value_to<std::vector<int64_t>>(w.at("shape")));
    EXPECT_EQ(t->file_offset, w.at("offset").to_number<uint64_t>());
    EXPECT_EQ(t->nbytes, w.at("nbytes").to_number<uint64_t>());
    EXPECT_EQ(t->file, dir + std::string(w.at("file").as_string()));
    EXPECT_EQ(t->cols(), t->shape[0]);
    EXPECT_EQ(t->rows() * t->cols(), t->elements());
    std::vector<float> values(t->elements());
    dequantize_row(t->type, t->data, values.data(), t->elements());
    const json::array& first = w.at("first").as_array();
    for (size_t j = 0; j < first.size(); ++j) {
      EXPECT_EQ(values[j], static_cast<float>(first[j].to_number<double>())) << "element " << j;
    }
    double sum = 0;
    for (float x : values) sum += x;
    EXPECT_NEAR(sum, dbl(w, "sum"), 1e-6 * (1 + std::abs(sum)));
  }
}

struct Fixture {
  std::string name;  // key in expected.json
  std::string path;  // what ModelFile::open gets
  std::string format;
  std::string tensor_dir;  // prefix of TensorView::file
};

class FixtureModel : public ::testing::TestWithParam<Fixture> {};

TEST_P(FixtureModel, MatchesExpected) {
  const Fixture& fx = GetParam();
  std::unique_ptr<ModelFile> m = ModelFile::open(fx.path);
  const json::object& w = expected(fx.name);
  EXPECT_EQ(m->format(), fx.format);
  EXPECT_EQ(m->path(), fx.path);
  expect_hparams(m->hparams(), w.at("hparams").as_object());
  expect_tokenizer(m->tokenizer(), w.at("tokenizer").as_object());
  expect_tensors(*m, w.at("tensors").as_array(), fx.tensor_dir);
  EXPECT_FALSE(m->metadata_summary().empty());
  EXPECT_EQ(m->find("no.such.tensor"), nullptr);
  try {
    m->get("no.such.tensor");
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("missing tensor 'no.such.tensor'"), std::string::npos)
        << e.what();
  }
  // Dropped pages come back from the file: the bytes read the same after release.
  const TensorView& first = m->tensors()[0];
  std::vector<uint8_t> before(first.data, first.data + first.nbytes);
  m->release_pages();
  EXPECT_TRUE(std::equal(before.begin(), before.end(), first.data));
}

INSTANTIATE_TEST_SUITE_P(
    ModelFiles, FixtureModel,
    ::testing::Values(
        Fixture{"tiny_llama.gguf", kDir + "tiny_llama.gguf", "gguf", kDir},
        Fixture{"tiny_qwen2.gguf", kDir + "tiny_qwen2.gguf", "gguf", kDir},
        Fixture{"tiny_llama3_rope.gguf", kDir + "tiny_llama3_rope.gguf", "gguf", kDir},
        Fixture{"tiny_llama_st", kDir + "tiny_llama_st", "safetensors", kDir + "tiny_llama_st/"},
        Fixture{"tiny_qwen2_sharded", kDir + "tiny_qwen2_sharded", "safetensors",
                kDir + "tiny_qwen2_sharded/"}),
    [](const ::testing::TestParamInfo<Fixture>& info) {
      std::string n = info.param.name;
      for (char& c : n) {
        if (!std::isalnum(static_cast<unsigned char>(c))) c = '_';
      }
      return n;
    });

TEST(GgufMetadataSummary, RendersKeysShort) {
  std::unique_ptr<ModelFile> m = ModelFile::open(kDir + "tiny_llama.gguf");
  std::map<std::string, std::string> s;
  for (auto& [k, v] : m->metadata_summary()) s[k] = v;
  EXPECT_EQ(s.at("GGUF.version"), "3");
  EXPECT_EQ(s.at("llama.block_count"), "2");
  EXPECT_EQ(s.at("general.name"), "\"tiny-llama-fixture\"");
  EXPECT_EQ(s.at("tokenizer.ggml.tokens").substr(0, 40),
            "[272 strings: \"<unk>\", \"<s>\", \"</s>\", \"<");
  EXPECT_LT(s.at("tokenizer.chat_template").size(), 80u);
}

// ---------------------------------------------------------------------------------------------
// config.json

json::object base_config() {
  return json::parse(R"({"model_type": "llama", "num_hidden_layers": 4, "hidden_size": 256,
                         "num_attention_heads": 8, "intermediate_size": 512, "vocab_size": 1000})")
      .as_object();
}

TEST(ConfigJson, DefaultsFollowTransformers) {
  HParams hp = hparams_from_config_json(base_config(), "config.json");
  EXPECT_EQ(hp.arch, "llama");
  EXPECT_EQ(hp.n_head_kv, 8);  // = heads
  EXPECT_EQ(hp.head_dim, 32);  // hidden / heads
  EXPECT_EQ(hp.n_ctx_train, 2048);
  EXPECT_EQ(hp.rope_theta, 10000.0f);
  EXPECT_EQ(hp.rms_eps, 1e-6f);
  EXPECT_EQ(hp.rope_style, RopeStyle::kNeox);
  EXPECT_EQ(hp.rope_scaling.kind, RopeScaling::Kind::kNone);
  EXPECT_FALSE(hp.attn_bias);
  EXPECT_NO_THROW(hp.validate());
}

TEST(ConfigJson, Qwen2AlwaysHasBiasAndMistralIsLlamaFamily) {
  json::object c = base_config();
  c["model_type"] = "qwen2";
  HParams q = hparams_from_config_json(c, "config.json");
  EXPECT_TRUE(q.attn_bias);
  EXPECT_EQ(q.n_ctx_train, 32768);
  c["model_type"] = "mistral";
  c["head_dim"] = 64;
  c["num_key_value_heads"] = 2;
  HParams m = hparams_from_config_json(c, "config.json");
  EXPECT_EQ(m.arch, "mistral");
  EXPECT_EQ(m.head_dim, 64);
  EXPECT_EQ(m.n_head_kv, 2);
}

TEST(ConfigJson, RopeScalingKinds) {
  json::object c = base_config();
  c["rope_scaling"] = json::parse(R"({"type": "linear", "factor": 2.0})");
  HParams lin = hparams_from_config_json(c, "config.json");
  EXPECT_EQ(lin.rope_scaling.kind, RopeScaling::Kind::kLinear);
  EXPECT_EQ(lin.rope_scaling.factor, 2.0f);
  c["rope_scaling"] = json::parse(R"({"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                                      "high_freq_factor": 4.0, "original_max_position_embeddings": 8192})");
  HParams l3 = hparams_from_config_json(c, "config.json");
  EXPECT_EQ(l3.rope_scaling.kind, RopeScaling::Kind::kLlama3);
  EXPECT_EQ(l3.rope_scaling.factor, 32.0f);
  EXPECT_EQ(l3.rope_scaling.original_context, 8192);
  c["rope_scaling"] = json::parse(R"({"rope_type": "yarn", "factor": 4.0})");
  try {
    hparams_from_config_json(c, "cfg/config.json");
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kUnsupported);
    EXPECT_NE(std::string(e.what()).find("cfg/config.json: rope_scaling type 'yarn'"),
              std::string::npos)
        << e.what();
  }
}

TEST(ConfigJson, MissingOrMistypedKeysNameFileAndKey) {
  for (const char* key : {"model_type", "num_hidden_layers", "hidden_size", "num_attention_heads",
                          "intermediate_size", "vocab_size"}) {
    json::object c = base_config();
    c.erase(key);
    try {
      hparams_from_config_json(c, "m/config.json");
      ADD_FAILURE() << "no error without " << key;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("m/config.json: missing required key '" +
                                           std::string(key) + "'"),
                std::string::npos)
          << e.what();
    }
  }
  json::object c = base_config();
  c["hidden_size"] = "wide";
  EXPECT_THROW(hparams_from_config_json(c, "config.json"), Error);
  c = base_config();
  c["model_type"] = "gpt_neox";
  EXPECT_THROW(hparams_from_config_json(c, "config.json"), Error);
}

// ---------------------------------------------------------------------------------------------
// validate

HParams good() { return hparams_from_config_json(base_config(), "config.json"); }

void expect_invalid(const HParams& hp, const std::string& part) {
  try {
    hp.validate();
    ADD_FAILURE() << "valid, expected: " << part;
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(part), std::string::npos) << e.what();
  }
}

TEST(HParamsValidate, RejectsInconsistentFields) {
  HParams hp = good();
  hp.n_head_kv = 3;
  expect_invalid(hp, "n_head 8 is not a multiple of n_head_kv 3");
  hp = good();
  hp.n_layer = 0;
  expect_invalid(hp, "n_layer = 0");
  hp = good();
  hp.n_embd = -5;
  expect_invalid(hp, "n_embd = -5");
  hp = good();
  hp.head_dim = 31;
  expect_invalid(hp, "head_dim 31 is odd");
  hp = good();
  hp.n_vocab = int64_t{1} << 40;
  expect_invalid(hp, "n_vocab");
  hp = good();
  hp.rms_eps = 0;
  expect_invalid(hp, "rms_eps");
  hp = good();
  hp.rope_theta = std::nanf("");
  expect_invalid(hp, "rope_theta");
  hp = good();
  hp.rope_scaling.kind = RopeScaling::Kind::kLlama3;
  hp.rope_scaling.factor = 8;
  hp.rope_scaling.low_freq_factor = 4;
  hp.rope_scaling.high_freq_factor = 1;
  expect_invalid(hp, "low_freq_factor");
  hp = good();
  hp.rope_scaling.freq_factors = {1.0f, 2.0f};  // head_dim 32 needs 16
  expect_invalid(hp, "2 rope frequency factors for head_dim 32");
  hp.rope_scaling.freq_factors.assign(16, 1.0f);
  hp.rope_scaling.freq_factors[3] = 0.0f;
  expect_invalid(hp, "rope frequency factor 0 is not positive");
  hp = good();
  hp.arch = "falcon";
  expect_invalid(hp, "falcon");
}

}  // namespace
}  // namespace tpnode
