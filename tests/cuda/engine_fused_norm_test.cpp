// The whole forward on a small synthetic Llama whose batch-1 decode steps take the CUDA
// backend's norm inside the gate/up GEMV (2 x 4096 Q4_K rows over 512 columns: the geometry
// compiled with it), against the CPU backend on the same host-made weights; and against the
// CUDA backend with the fusion off, whose logits must differ in their bits (the fused kernel
// quantizes x * w and scales the products by 1 / rms afterwards), so that the test notices
// when the fused path stops being taken.
#include <cstring>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "node/engine/engine.h"
#include "node/engine/single_rank_collective.h"
#include "node/engine/weight_source.h"
#include "tests/cuda/cuda_test_support.h"
#include "tests/engine/test_support.h"

namespace tpnode::test {
namespace {

// SyntheticWeightSource's names, shapes and types, with the values made on the host (GGUF
// rows from a per-name seed, norm weights near 1), so that both backends get the same model.
class HostRowsSource final : public WeightSource {
 public:
  HostRowsSource(const HParams& hp, TensorType type) : shapes_(hp, type) {}
  bool has(const std::string& name) const override { return shapes_.has(name); }
  std::pair<int64_t, int64_t> shape(const std::string& name) const override {
    return shapes_.shape(name);
  }
  TensorType type(const std::string& name) const override { return shapes_.type(name); }
  Weight matrix(const std::string& name, const MatrixSlice& slice, Backend& b) override {
    const auto [rows, cols] = shape(name);
    TPNODE_CHECK(slice.row0 == 0 && slice.col0 == 0 && slice.rows == rows && slice.cols == cols,
                 "HostRowsSource: one rank only ({})", name);
    const std::vector<uint8_t> g = random_gguf_rows(type(name), rows, cols, seed(name));
    return b.upload_weight(HostMatrix{type(name), g.data(), rows, cols, g.size() / rows});
  }
  float* vector(const std::string& name, int64_t off, int64_t n, Backend& b) override {
    std::vector<float> v = cuda_random_floats(static_cast<size_t>(off + n), seed(name));
    for (float& x : v) x = 1.0f + 0.25f * x;
    return b.upload_vector(TensorType::kF32, v.data() + off, n);
  }

 private:
  static uint32_t seed(const std::string& name) {
    return static_cast<uint32_t>(std::hash<std::string>{}(name));
  }
  SyntheticWeightSource shapes_;
};

class CudaEngineFusedNorm : public CudaVsCpuFusedNorm {};

TEST_F(CudaEngineFusedNorm, DecodeMatchesCpuAndTakesTheFusedKernel) {
  const HParams hp = tsupport::small_llama("fused-norm test", 4096);
  CudaBackendOptions off = cuda_options();
  off.fuse_norm_gemv = false;
  off.gpu_memory_fraction = 0.25;
  std::unique_ptr<Backend> unfused = make_cuda_backend(off);
  EngineOptions eo;
  eo.max_context = 128;
  eo.kv_tokens = 256;
  eo.max_batch_tokens = 32;
  HostRowsSource src_gpu(hp, TensorType::kQ4_K), src_off(hp, TensorType::kQ4_K),
      src_cpu(hp, TensorType::kQ4_K);
  SingleRankCollective c_gpu, c_off, c_cpu;
  Engine gpu(hp, src_gpu, *cuda_, c_gpu, eo), gpu_off(hp, src_off, *unfused, c_off, eo),
      cpu(hp, src_cpu, *cpu_, c_cpu, eo);

  // A 12-token prompt, then batch-1 decode steps (the fused norm serves only those).
  StepPlan plan;
  SeqStep s{.seq_id = 1, .n_past = 0, .tokens = {}, .blocks = {0, 1}, .want_logits = true};
  for (int i = 0; i < 12; ++i) s.tokens.push_back(static_cast<int32_t>((i * 53 + 7) % hp.n_vocab));
  plan.seqs = {s};
  const size_t V = static_cast<size_t>(hp.n_vocab);
  for (int step = 0; step < 6; ++step) {
    const std::vector<float> lg = gpu.step(plan);
    const std::vector<float> lo = gpu_off.step(plan);
    const std::vector<float> lc = cpu.step(plan);
    ASSERT_EQ(lg.size(), V);
    ASSERT_EQ(lo.size(), V);
    ASSERT_EQ(lc.size(), V);
    EXPECT_LT(nmse(lg, lc), 2e-3) << "step " << step;
    EXPECT_LT(nmse(lo, lc), 2e-3) << "step " << step << " (fusion off)";
    if (step > 0) {
      EXPECT_NE(0, std::memcmp(lg.data(), lo.data(), V * sizeof(float)))
          << "step " << step << ": the fused kernel did not run";
    }
    SeqStep& q = plan.seqs[0];
    q.n_past += static_cast<int32_t>(q.tokens.size());
    q.tokens = {tsupport::argmax_row(lc, 0, V)};
  }
}

}  // namespace
}  // namespace tpnode::test
