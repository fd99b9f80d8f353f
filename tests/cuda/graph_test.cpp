// Decode graphs: the engine pads decode-only steps to graph shapes and the CUDA backend
// captures and replays them. Checked two ways:
//   - PaddedCpu: a CPU backend that asks for graph shapes (and captures nothing) returns the
//     same logits as the plain CPU backend, so padding and row picking are right (no GPU);
//   - CudaGraphs: on the GPU, logits with graphs are bitwise those of the same padded steps
//     run op by op, over decode steps of changing batch sizes, lengths and wanted rows.
#include <filesystem>

#include "node/engine/single_rank_collective.h"
#include "node/engine/engine.h"
#include "node/engine/weight_source.h"
#include "node/model/model_file.h"
#include "tests/cuda/cuda_test_support.h"
#include "tests/cuda/mix_engine_pair.h"
#include "tests/engine/test_support.h"

namespace tpnode::test {
namespace {

// Forwards every op to another backend and asks for graph shapes; counts the brackets.
class GraphShapedBackend final : public Backend {
 public:
  explicit GraphShapedBackend(Backend& inner) : in_(inner) {}
  std::string_view name() const override { return in_.name(); }
  void* alloc(size_t bytes) override { return in_.alloc(bytes); }
  void copy_to_device(void* d, const void* s, size_t n) override { in_.copy_to_device(d, s, n); }
  void copy_to_host(void* d, const void* s, size_t n) override { in_.copy_to_host(d, s, n); }
  void sync() override { in_.sync(); }
  Weight upload_weight(const HostMatrix& m) override { return in_.upload_weight(m); }
  float* upload_vector(TensorType t, const void* d, int64_t n) override {
    return in_.upload_vector(t, d, n);
  }
  Weight synth_weight(TensorType t, int64_t r, int64_t c, uint64_t s) override {
    return in_.synth_weight(t, r, c, s);
  }
  float* synth_vector(int64_t n, float v) override { return in_.synth_vector(n, v); }
  size_t kv_element_bytes() const override { return in_.kv_element_bytes(); }
  void init_kv_cache(const KvCacheShape& s) override {
    kv_blocks = s.n_blocks;
    in_.init_kv_cache(s);
  }
  void begin_step(const BatchMeta& b) override {
    last_tokens = b.n_tokens();
    in_.begin_step(b);
  }
  void embed(const Weight& t, float* x) override { in_.embed(t, x); }
  void rmsnorm(const float* x, const float* w, float* y, int64_t r, int64_t n, float e) override {
    in_.rmsnorm(x, w, y, r, n, e);
  }
  void matmul(const Weight& w, const float* x, float* y, int64_t m) override {
    in_.matmul(w, x, y, m);
  }
  void add_bias(float* y, const float* b, int64_t m, int64_t n) override {
    in_.add_bias(y, b, m, n);
  }
  void rope(float* q, float* k, const RopeParams& p) override { in_.rope(q, k, p); }
  void attention(const float* q, const float* k, const float* v, float* out,
                 const AttentionParams& p) override {
    in_.attention(q, k, v, out, p);
  }
  void swiglu(const float* g, const float* u, float* o, int64_t n) override {
    in_.swiglu(g, u, o, n);
  }
  void add(const float* x, const float* y, float* out, int64_t n) override {
    in_.add(x, y, out, n);
  }
  void gather_rows(const float* x, float* out, int64_t n) override { in_.gather_rows(x, out, n); }

  bool decode_graphs() const override { return true; }
  void graph_capture_begin(const GraphKey& key) override {
    ++captures;
    last_key = key;
  }
  void graph_capture_end() override { ++capture_ends; }

  int64_t kv_blocks = 0;
  int64_t last_tokens = 0;
  int captures = 0, capture_ends = 0;
  GraphKey last_key;

 private:
  Backend& in_;
};

std::string fixture(const char* rel) { return std::string(TPNODE_SOURCE_DIR) + "/" + rel; }

// A script of steps: three prompts prefilled, decode with 3 sequences (one not wanting
// logits), a new sequence prefilled while the others decode, 4 sequences decoding, one
// leaving, 3 decoding again. Each step is run by every engine; `check` compares them.
template <typename Check>
void run_script(const HParams& hp, std::vector<Engine*> engines, Check check) {
  const int32_t V = static_cast<int32_t>(hp.n_vocab);
  auto prompt = [V](int n, int salt) {
    std::vector<int32_t> t;
    for (int i = 0; i < n; ++i) t.push_back((i * 37 + salt * 101 + 5) % V);
    return t;
  };
  std::vector<SeqStep> seqs = {
      {.seq_id = 1, .n_past = 0, .tokens = prompt(21, 1), .blocks = {0, 1, 2, 3}, .want_logits = true},
      {.seq_id = 2, .n_past = 0, .tokens = prompt(5, 2), .blocks = {9, 4, 5, 6}, .want_logits = true},
      {.seq_id = 3, .n_past = 0, .tokens = prompt(34, 3), .blocks = {7, 8, 10, 11}, .want_logits = true},
  };
  int step = 0;
  auto run = [&](const std::vector<SeqStep>& active) {
    StepPlan plan;
    plan.seqs = active;
    std::vector<std::vector<float>> out;
    for (Engine* e : engines) out.push_back(e->step(plan));
    check(step++, plan, out);
    return out[0];
  };
  auto advance = [&](std::vector<SeqStep>& active, const std::vector<float>& logits) {
    size_t row = 0;
    for (SeqStep& s : active) {
      s.n_past += static_cast<int32_t>(s.tokens.size());
      const int32_t next = s.want_logits ? tsupport::argmax_row(logits, row++, static_cast<size_t>(V))
                                         : static_cast<int32_t>((s.n_past * 13) % V);
      s.tokens = {next};
    }
  };
  advance(seqs, run(seqs));
  seqs[1].want_logits = false;
  for (int i = 0; i < 5; ++i) advance(seqs, run(seqs));  // 3 -> bucket 4: eager, capture, replay
  seqs[1].want_logits = true;
  // A fourth sequence's prompt in a mixed step, then 4 decoding (bucket 4 again).
  seqs.push_back({.seq_id = 4, .n_past = 0, .tokens = prompt(17, 4), .blocks = {12, 13, 14, 15},
                  .want_logits = true});
  advance(seqs, run(seqs));
  for (int i = 0; i < 4; ++i) advance(seqs, run(seqs));
  seqs.erase(seqs.begin());  // 3 left, now longer
  for (int i = 0; i < 3; ++i) advance(seqs, run(seqs));
  seqs.resize(1);  // one sequence: bucket 1
  for (int i = 0; i < 4; ++i) advance(seqs, run(seqs));
}

// The tiny model on two CPU backends, one behind GraphShapedBackend: the same steps run plain
// and padded to graph shapes.
CpuBackendOptions two_threads() {
  CpuBackendOptions co;
  co.n_threads = 2;  // two backends at once: keep them off each other's cores
  return co;
}
struct PaddedPair {
  static constexpr const char* kModel = "tests/fixtures/model_files/tiny_llama.gguf";
  explicit PaddedPair(const EngineOptions& eo)
      : file(ModelFile::open(fixture(kModel))),
        src_a(*file),
        src_b(*file),
        cpu_a(make_cpu_backend(two_threads())),
        cpu_b(make_cpu_backend(two_threads())),
        shaped(*cpu_b),
        plain(file->hparams(), src_a, *cpu_a, c1, eo),
        padded(file->hparams(), src_b, shaped, c2, eo) {}
  std::unique_ptr<ModelFile> file;
  FileWeightSource src_a, src_b;
  std::unique_ptr<Backend> cpu_a, cpu_b;
  GraphShapedBackend shaped;
  SingleRankCollective c1, c2;
  Engine plain, padded;
};

TEST(PaddedCpu, LogitsMatchUnpaddedSteps) {
  const std::string path = fixture(PaddedPair::kModel);
  if (!std::filesystem::exists(path)) GTEST_SKIP() << path << " is absent";
  EngineOptions eo;
  eo.max_context = 128;
  eo.kv_tokens = 512;
  eo.max_batch_tokens = 96;
  eo.max_seqs = 8;
  PaddedPair pair(eo);
  const HParams& hp = pair.file->hparams();
  Engine& plain = pair.plain;
  Engine& padded = pair.padded;
  GraphShapedBackend& shaped = pair.shaped;
  EXPECT_EQ(padded.kv_blocks(), plain.kv_blocks());
  EXPECT_EQ(shaped.kv_blocks, plain.kv_blocks() + 1);  // the spare block for padding

  int decode_steps = 0;
  run_script(hp, {&plain, &padded}, [&](int step, const StepPlan& plan,
                                         const std::vector<std::vector<float>>& out) {
    bool decode = true;
    for (const SeqStep& s : plan.seqs) decode = decode && s.tokens.size() == 1;
    if (decode) {
      ++decode_steps;
      int32_t bucket = 1;
      while (bucket < static_cast<int32_t>(plan.seqs.size())) bucket *= 2;
      EXPECT_EQ(shaped.last_tokens, bucket) << "step " << step;
      EXPECT_EQ(shaped.last_key.n_seqs, bucket) << "step " << step;
    }
    ASSERT_EQ(out[0].size(), out[1].size()) << "step " << step;
    EXPECT_LT(nmse(out[1], out[0]), 1e-10) << "step " << step;
  });
  EXPECT_EQ(shaped.captures, decode_steps);
  EXPECT_EQ(shaped.capture_ends, decode_steps);
}

// Above 32 sequences decode steps pad to multiples of 8 (graph_seqs), not the next power of two:
// 47 sequences take the 48-sequence shape, 39 the 40-sequence one, 32 their own; the logits are
// those of the unpadded steps. (One padding sequence at most: the CPU backend refuses two
// sequences writing one KV block, which padding sequences do, all in the spare block.)
TEST(PaddedCpu, ManySequencesPadToMultiplesOfEight) {
  const std::string path = fixture(PaddedPair::kModel);
  if (!std::filesystem::exists(path)) GTEST_SKIP() << path << " is absent";
  EngineOptions eo;
  eo.max_context = 64;
  eo.kv_tokens = 1024;
  eo.max_batch_tokens = 160;
  eo.max_seqs = 48;
  PaddedPair pair(eo);
  const HParams& hp = pair.file->hparams();
  Engine& plain = pair.plain;
  Engine& padded = pair.padded;
  GraphShapedBackend& shaped = pair.shaped;
  const auto V = static_cast<int32_t>(hp.n_vocab);
  std::vector<SeqStep> seqs;
  for (int32_t i = 0; i < 47; ++i) {
    seqs.push_back({.seq_id = static_cast<uint64_t>(i + 1),
                    .n_past = 0,
                    .tokens = {(i * 7 + 1) % V, (i * 11 + 2) % V, (i * 13 + 3) % V},
                    .blocks = {i},
                    .want_logits = true});
  }
  auto step = [&](int32_t want_seqs) {
    StepPlan plan;
    plan.seqs = seqs;
    const std::vector<float> a = plain.step(plan);
    const std::vector<float> b = padded.step(plan);
    ASSERT_EQ(a.size(), b.size());
    EXPECT_LT(nmse(b, a), 1e-10) << plan.seqs.size() << " sequences";
    if (want_seqs > 0) {
      EXPECT_EQ(shaped.last_key.n_seqs, want_seqs) << plan.seqs.size() << " sequences";
      EXPECT_EQ(shaped.last_tokens, want_seqs);
    }
    size_t row = 0;
    for (SeqStep& s : seqs) {
      s.n_past += static_cast<int32_t>(s.tokens.size());
      s.tokens = {tsupport::argmax_row(a, row++, static_cast<size_t>(V))};
    }
  };
  step(0);  // the prompts: no graph shape
  step(48);
  step(48);
  seqs.resize(39);
  step(40);
  seqs.resize(32);
  step(32);
}

class CudaGraphs : public CudaVsCpu, public ::testing::WithParamInterface<const char*> {
 protected:
  CpuBackendOptions cpu_options() const override {
    CpuBackendOptions o;
    o.n_threads = 2;
    return o;
  }
};

TEST_P(CudaGraphs, BitwiseEqualToOpByOp) {
  const std::string path = fixture(GetParam());
  if (!std::filesystem::exists(path)) GTEST_SKIP() << path << " is absent";
  auto file = ModelFile::open(path);
  const HParams& hp = file->hparams();
  CudaBackendOptions off = cuda_options();
  off.use_cuda_graphs = false;
  auto cuda_off = make_cuda_backend(off);
  FileWeightSource src_on(*file), src_off(*file), src_cpu(*file);
  SingleRankCollective c1, c2, c3;
  EngineOptions eo;
  eo.max_context = 128;
  eo.kv_tokens = 512;
  eo.max_batch_tokens = 96;
  eo.max_seqs = 8;
  Engine with_graphs(hp, src_on, *cuda_, c1, eo);
  Engine without(hp, src_off, *cuda_off, c2, eo);
  Engine cpu(hp, src_cpu, *cpu_, c3, eo);
  run_script(hp, {&with_graphs, &without, &cpu},
             [&](int step, const StepPlan&, const std::vector<std::vector<float>>& out) {
               ASSERT_EQ(out[0].size(), out[1].size()) << "step " << step;
               EXPECT_EQ(0, std::memcmp(out[0].data(), out[1].data(), out[0].size() * sizeof(float)))
                   << "step " << step;
               EXPECT_LT(nmse(out[0], out[2]), 2e-3) << "step " << step;
             });
}

// llama.cpp's Q4_K_M mix over 8 layers (Q6_K attn_v beside Q4_K q and k in layers 0, 3, 6
// and 7): with the side stream (the v matmul a parallel branch beside the q/k gemm_kq) and
// graphs, logits bitwise those of one stream op by op, through prefill of 60 tokens, decode
// batches of 3-4 (graph bucket 4) and 1 (one GEMV launch per type).
TEST(CudaGraphsSideStream, MixedTypesBitwiseEqualToOneStreamOpByOp) {
  if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device (cudaGetDeviceCount gave 0)";
  CudaBackendOptions on;
  on.gpu_memory_fraction = 0.05;
  CudaBackendOptions off = on;
  off.use_cuda_graphs = false;
  off.side_stream = false;
  EngineOptions eo;
  eo.max_context = 128;
  eo.kv_tokens = 512;
  eo.max_batch_tokens = 96;
  eo.max_seqs = 8;
  MixEnginePair pair("side stream", on, off, 7, eo);
  run_script(pair.hp, {&pair.a, &pair.b},
             [&](int step, const StepPlan&, const std::vector<std::vector<float>>& out) {
               ASSERT_EQ(out[0].size(), out[1].size()) << "step " << step;
               EXPECT_EQ(0, std::memcmp(out[0].data(), out[1].data(), out[0].size() * sizeof(float)))
                   << "step " << step;
             });
}

INSTANTIATE_TEST_SUITE_P(Models, CudaGraphs,
                         ::testing::Values("tests/fixtures/model_files/tiny_llama.gguf",
                                           "tests/fixtures/model_files/tiny_qwen2.gguf"),
                         [](const auto& i) {
                           return std::filesystem::path(i.param).stem().string();
                         });

}  // namespace
}  // namespace tpnode::test
