// SwiGLU writing gemm_kq's records for ffn_down (CudaBackendOptions::swiglu_kq_records): on
// llama.cpp's Q4_K_M mix (Q4_K ffn_down in some layers, Q6_K in others, so the records sit
// beside the copy the Q6_K kernel reads), decode batches that take each of those kernels (2:
// the int8 MMA GEMV's 256-value groups; 13: gemm_dq's layout; 40: cuBLASLt's BF16 copy) give
// logits bitwise those of the same steps with gemm_kq_acts making the records, op by op.
#include <cstring>
#include <memory>
#include <vector>

#include "tests/cuda/cuda_test_support.h"
#include "tests/cuda/mix_engine_pair.h"
#include "tests/engine/test_support.h"

namespace tpnode::test {
namespace {

TEST(CudaEngineSwigluRecords, BitwiseEqualToRecordsByTheirOwnLaunch) {
  if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device (cudaGetDeviceCount gave 0)";
  CudaBackendOptions on;
  on.gpu_memory_fraction = 0.05;
  on.use_cuda_graphs = false;
  CudaBackendOptions off = on;
  off.swiglu_kq_records = false;
  EngineOptions eo;
  eo.max_context = 64;
  eo.kv_tokens = 64 * 16;  // a block of 16 for each of the 55 sequences
  eo.max_batch_tokens = 256;
  eo.max_seqs = 48;
  MixEnginePair pair("swiglu records", on, off, 11, eo);
  const HParams& hp = pair.hp;
  const size_t V = static_cast<size_t>(hp.n_vocab);
  int32_t next_id = 1;
  for (const int batch : {2, 13, 40}) {
    SCOPED_TRACE(::testing::Message() << "batch " << batch);
    // `batch` new sequences of 3-6 prompt tokens (one prefill step), then three decode steps.
    StepPlan plan;
    for (int s = 0; s < batch; ++s) {
      const int32_t id = next_id++;
      SeqStep q{.seq_id = static_cast<uint64_t>(id), .n_past = 0, .tokens = {}, .blocks = {},
                .want_logits = true};
      for (int t = 0; t < 3 + s % 4; ++t) {
        q.tokens.push_back(static_cast<int32_t>((id * 31 + t * 7) % hp.n_vocab));
      }
      q.blocks = {id - 1};  // at most 10 tokens each
      plan.seqs.push_back(q);
    }
    for (int step = 0; step < 4; ++step) {
      const std::vector<float> a = pair.a.step(plan);
      const std::vector<float> b = pair.b.step(plan);
      ASSERT_EQ(a.size(), static_cast<size_t>(batch) * V);
      ASSERT_EQ(b.size(), a.size());
      EXPECT_EQ(0, std::memcmp(a.data(), b.data(), a.size() * sizeof(float))) << "step " << step;
      for (size_t r = 0; r < plan.seqs.size(); ++r) {
        SeqStep& q = plan.seqs[r];
        q.n_past += static_cast<int32_t>(q.tokens.size());
        q.tokens = {tsupport::argmax_row(a, r, V)};
      }
    }
  }
}

}  // namespace
}  // namespace tpnode::test
