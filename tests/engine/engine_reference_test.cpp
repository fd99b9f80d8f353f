// The forward on the CPU backend against independent references: Hugging Face transformers
// logits of tiny random-weight Llama / Mistral / Qwen2 models (safetensors and the GGUFs that
// llama.cpp's converter made from them), and llama.cpp's own logits for the Q8_0 GGUFs.
// Fixtures: tests/fixtures/tiny_models (tools/make_tiny_models.py).
#include <gtest/gtest.h>

#include <cmath>

#include "node/backend/cpu/cpu_backend.h"
#include "node/model/model_file.h"
#include "tests/engine/test_support.h"

namespace tpnode {
namespace {

namespace fs = std::filesystem;
using tsupport::StepwiseRun;

struct Case {
  std::string model;    // tiny-llama, ...
  std::string variant;  // hf, f32, f16, q8_0
};

void PrintTo(const Case& c, std::ostream* os) { *os << c.model << "/" << c.variant; }

std::string PrintCase(const ::testing::TestParamInfo<Case>& info) {
  std::string s = info.param.model + "_" + info.param.variant;
  for (auto& c : s) {
    if (!isalnum(static_cast<unsigned char>(c))) c = '_';
  }
  return s;
}

class EngineReference : public ::testing::TestWithParam<Case> {
 protected:
  fs::path dir() const { return tsupport::source_dir() / "tests/fixtures/tiny_models" / GetParam().model; }
};

// Max |a - b| over a [rows, V] block against rows [first, first + rows) of the reference.
double max_abs_diff(const std::vector<float>& ours, const std::vector<float>& ref, int64_t V,
                    int64_t ref_row0) {
  double m = 0;
  for (size_t i = 0; i < ours.size(); ++i) {
    m = std::max(m, std::abs(static_cast<double>(ours[i]) - ref[ref_row0 * V + i]));
  }
  return m;
}

TEST_P(EngineReference, LogitsMatchTheReference) {
  const Case& c = GetParam();
  const auto ref = tsupport::read_json(dir() / "ref/reference.json").as_object();
  fs::path model_path = dir() / "hf";
  if (c.variant != "hf") {
    const auto& gg = ref.at("gguf").as_object();
    if (!gg.contains(c.variant)) GTEST_SKIP() << "no " << c.variant << " GGUF in the fixture";
    model_path = dir() / std::string(gg.at(c.variant).as_string());
  }
  auto loaded = tsupport::load_engine(model_path, {});
  Engine& engine = *loaded->engine;
  const int64_t V = engine.hparams().n_vocab;

  // Both reference sequences at once; "short" prefills 1 token, "long" 10, then one token a step.
  const auto& seqs = ref.at("hf").as_object().at("sequences").as_array();
  StepwiseRun run;
  std::vector<std::vector<float>> hf;
  for (const auto& s : seqs) {
    run.seqs.push_back(tsupport::to_ids(s.at("ids")));
    run.prefill.push_back(run.seqs.size() == 1 ? 1 : 10);
    hf.push_back(tsupport::read_f32(dir() / "ref" / std::string(s.at("logits_file").as_string())));
  }
  tsupport::run_stepwise(engine, run);

  // F32 weights must agree with transformers to 1e-4. Reduced-precision weights must be at
  // least as close to transformers as llama.cpp running the same file is (its deviation is
  // recorded in the fixture), with 25% slack for a different summation order.
  double tol_hf = 1e-4;
  if (c.variant != "hf" && c.variant != "f32") {
    const auto& lc = ref.at("llamacpp").as_object().at(c.variant).as_object();
    tol_hf = 1.25 * lc.at("max_abs_diff_vs_hf").to_number<double>() + 1e-3;
  }
  for (size_t i = 0; i < run.seqs.size(); ++i) {
    const int64_t first = run.prefill[i] - 1;
    const double d = max_abs_diff(run.logits[i], hf[i], V, first);
    EXPECT_LE(d, tol_hf) << "sequence " << i << " vs transformers";
    std::printf("[%s %s] seq %zu: max |ours - transformers| = %.3g\n", c.model.c_str(),
                c.variant.c_str(), i, d);
  }
  if (c.variant != "hf" && ref.contains("llamacpp") &&
      ref.at("llamacpp").as_object().contains(c.variant)) {
    const auto& lc = ref.at("llamacpp").as_object().at(c.variant).as_object();
    const auto& lseqs = lc.at("sequences").as_array();
    for (size_t i = 0; i < lseqs.size() && i < run.seqs.size(); ++i) {
      const auto lref =
          tsupport::read_f32(dir() / "ref" / std::string(lseqs[i].at("logits_file").as_string()));
      const double d = max_abs_diff(run.logits[i], lref, V, run.prefill[i] - 1);
      std::printf("[%s %s] seq %zu: max |ours - llama.cpp| = %.3g\n", c.model.c_str(),
                  c.variant.c_str(), i, d);
      EXPECT_LE(d, c.variant == "q8_0" ? 0.1 : 2e-2) << "sequence " << i << " vs llama.cpp";
    }
  }
}

class EngineBatching : public EngineReference {};

TEST_P(EngineBatching, DoesNotChangeLogits) {
  auto loaded = tsupport::load_engine(dir() / "hf", {.kv_tokens = 512});
  Engine& engine = *loaded->engine;
  const auto ref = tsupport::read_json(dir() / "ref/reference.json").as_object();
  const auto ids = tsupport::to_ids(ref.at("hf").as_object().at("sequences").as_array()[1].at("ids"));

  StepwiseRun alone{{ids}, {5}, {}};
  tsupport::run_stepwise(engine, alone);
  // The same sequence beside two others of different lengths and prefill chunks.
  std::vector<int32_t> other1(ids.rbegin(), ids.rend()), other2(ids.begin(), ids.begin() + 7);
  StepwiseRun together{{other1, ids, other2}, {3, 5, 7}, {}};
  tsupport::run_stepwise(engine, together);
  ASSERT_EQ(alone.logits[0].size(), together.logits[1].size());
  const double d = max_abs_diff(together.logits[1], alone.logits[0], engine.hparams().n_vocab, 0);
  EXPECT_LE(d, 1e-5);
}

// The safetensors folder of each model, and each GGUF the fixture has.
std::vector<Case> cases() {
  std::vector<Case> v;
  for (const char* m : {"tiny-llama", "tiny-mistral", "tiny-qwen2"}) {
    v.push_back({m, "hf"});
    const auto ref = tsupport::read_json(tsupport::source_dir() / "tests/fixtures/tiny_models" / m /
                                         "ref/reference.json");
    for (const auto& [variant, path] : ref.as_object().at("gguf").as_object()) {
      v.push_back({m, std::string(variant)});
    }
  }
  return v;
}

INSTANTIATE_TEST_SUITE_P(TinyModels, EngineReference, ::testing::ValuesIn(cases()), PrintCase);
INSTANTIATE_TEST_SUITE_P(TinyModels, EngineBatching,
                         ::testing::Values(Case{"tiny-llama", "hf"}, Case{"tiny-mistral", "hf"},
                                           Case{"tiny-qwen2", "hf"}),
                         PrintCase);

}  // namespace
}  // namespace tpnode
