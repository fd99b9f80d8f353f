// Element-wise and row ops of the CUDA backend against the CPU backend, odd sizes.
#include <fmt/format.h>

#include <numeric>

#include "node/common/error.h"
#include "tests/cuda/cuda_test_support.h"

namespace tpnode::test {
namespace {

using CudaOps = CudaVsCpu;

// A batch of n tokens of one sequence at positions p0.. (no KV cache needed).
BatchMeta simple_batch(int32_t n, int32_t p0, uint32_t seed, int32_t vocab) {
  std::mt19937 rng(seed);
  BatchMeta b;
  b.seq_start = {0, n};
  b.seq_kv_len = {p0 + n};
  b.max_blocks = (p0 + n + 15) / 16;
  for (int32_t i = 0; i < n; ++i) {
    b.tokens.push_back(static_cast<int32_t>(rng() % vocab));
    b.positions.push_back(p0 + i);
    b.token_seq.push_back(0);
  }
  for (int32_t i = 0; i < b.max_blocks; ++i) b.block_tables.push_back(i);
  b.logit_rows = {n - 1, 0, n / 2};
  return b;
}

TEST_F(CudaOps, RmsNorm) {
  // 769: no 32-multiple (plain path); 576 x 3 rows: the fused 8-bit path; 40 rows: plain.
  for (auto [rows, n] : {std::pair<int64_t, int64_t>{3, 769}, {3, 576}, {40, 576}}) {
    const auto x = put(cuda_random_floats(rows * n, 1, 3.0f));
    const auto w = put(cuda_random_floats(n, 2));
    const auto y = zeros(rows * n);
    cuda_->rmsnorm(x.gpu, w.gpu, y.gpu, rows, n, 1e-5f);
    cpu_->rmsnorm(x.cpu, w.cpu, y.cpu, rows, n, 1e-5f);
    EXPECT_LT(nmse(gpu(y, rows * n), cpu(y, rows * n)), 1e-10) << rows << "x" << n;
  }
}

TEST_F(CudaOps, RmsNormThenQuantizedMatmulUsesFreshActivations) {
  // rmsnorm writes the 8-bit copy of its output; a later write to that buffer must drop it.
  const int64_t rows = 2, n = 256, out = 67;
  const auto wrows = random_gguf_rows(TensorType::kQ4_K, out, n, 5);
  const HostMatrix hm{TensorType::kQ4_K, wrows.data(), out, n, wrows.size() / out};
  const Weight wg = cuda_->upload_weight(hm), wc = cpu_->upload_weight(hm);
  const auto x = put(cuda_random_floats(rows * n, 3));
  const auto g = put(cuda_random_floats(n, 4));
  const auto h = zeros(rows * n);
  const auto y = zeros(rows * out);
  const auto other = put(cuda_random_floats(rows * n, 6));
  cuda_->rmsnorm(x.gpu, g.gpu, h.gpu, rows, n, 1e-5f);
  cpu_->rmsnorm(x.cpu, g.cpu, h.cpu, rows, n, 1e-5f);
  cuda_->add(h.gpu, other.gpu, h.gpu, rows * n);  // h changes after its 8-bit copy was made
  cpu_->add(h.cpu, other.cpu, h.cpu, rows * n);
  cuda_->matmul(wg, h.gpu, y.gpu, rows);
  cpu_->matmul(wc, h.cpu, y.cpu, rows);
  EXPECT_LT(nmse(gpu(y, rows * out), cpu(y, rows * out)), 1e-3);
}

TEST_F(CudaOps, RmsNormFeedsQ4kMatmulsItsRecords) {
  // Batches on gemm_kq read the 8-bit records the norm wrote (sm_90a); elsewhere another kernel.
  const int64_t n = 512, out = 300;
  const auto wrows = random_gguf_rows(TensorType::kQ4_K, out, n, 7);
  const HostMatrix hm{TensorType::kQ4_K, wrows.data(), out, n, wrows.size() / out};
  const Weight wg = cuda_->upload_weight(hm), wc = cpu_->upload_weight(hm);
  for (const int64_t rows : {2, 9, 40, 64}) {
    const auto x = put(cuda_random_floats(rows * n, 8 + static_cast<uint32_t>(rows)));
    const auto g = put(cuda_random_floats(n, 9));
    const auto h = zeros(rows * n);
    const auto y = zeros(rows * out);
    cuda_->rmsnorm(x.gpu, g.gpu, h.gpu, rows, n, 1e-5f);
    cpu_->rmsnorm(x.cpu, g.cpu, h.cpu, rows, n, 1e-5f);
    cuda_->matmul(wg, h.gpu, y.gpu, rows);
    cpu_->matmul(wc, h.cpu, y.cpu, rows);
    EXPECT_LT(nmse(gpu(y, rows * out), cpu(y, rows * out)), 1e-3) << rows << " rows";
  }
}

TEST_F(CudaOps, AddRmsNormUpdatesTheResidualAndFeedsTheNextMatmul) {
  // 4096: one float4 per thread; 20480: more passes than stay in registers; 769: scalar path.
  for (auto [rows, n] : {std::pair<int64_t, int64_t>{1, 4096}, {3, 20480}, {2, 769}, {40, 576}}) {
    const auto x = put(cuda_random_floats(rows * n, 11, 3.0f));
    const auto r = put(cuda_random_floats(rows * n, 12));
    const auto w = put(cuda_random_floats(n, 13));
    const auto y = zeros(rows * n);
    const auto x0 = gpu(x, rows * n);
    // Out of place first (x stays as it was), then in place.
    const auto sum = zeros(rows * n);
    Backend::NormIn in{.x = x.gpu, .r = r.gpu, .x_out = sum.gpu, .w = w.gpu, .y = y.gpu, .n = n};
    cuda_->add_rmsnorm(in, rows);
    EXPECT_EQ(gpu(x, rows * n), x0);
    in.x_out = x.gpu;
    cuda_->add_rmsnorm(in, rows);
    cpu_->add(x.cpu, r.cpu, x.cpu, rows * n);
    cpu_->rmsnorm(x.cpu, w.cpu, y.cpu, rows, n, 1e-5f);
    EXPECT_EQ(gpu(sum, rows * n), gpu(x, rows * n)) << rows << "x" << n;
    EXPECT_LT(nmse(gpu(x, rows * n), cpu(x, rows * n)), 1e-12) << rows << "x" << n;
    EXPECT_LT(nmse(gpu(y, rows * n), cpu(y, rows * n)), 1e-10) << rows << "x" << n;
    if (n % 256 != 0 || rows > 16) continue;
    // The 8-bit copy written on the way feeds a quantized GEMV.
    const int64_t out = 37;
    const auto wrows = random_gguf_rows(TensorType::kQ4_K, out, n, 14);
    const HostMatrix hm{TensorType::kQ4_K, wrows.data(), out, n, wrows.size() / out};
    const Weight wg = cuda_->upload_weight(hm), wc = cpu_->upload_weight(hm);
    const auto o = zeros(rows * out);
    cuda_->matmul(wg, y.gpu, o.gpu, rows);
    cpu_->matmul(wc, y.cpu, o.cpu, rows);
    EXPECT_LT(nmse(gpu(o, rows * out), cpu(o, rows * out)), 1e-3) << rows << "x" << n;
  }
}

// Batches past the GEMV and gemm_dq limits run BF16 GEMMs (here on the Q4_K weight's BF16
// copy): RMSNorm and SwiGLU write the BF16 copy of their output that the GEMM reads, and a
// later write to that output must drop the copy.
TEST_F(CudaOps, NormAndSwigluWriteTheBf16CopyTheNextGemmReads) {
  const int64_t rows = 40, n = 512, out = 96;
  const BatchMeta batch = simple_batch(static_cast<int32_t>(rows), 0, 21, 1000);
  cuda_->begin_step(batch);
  cpu_->begin_step(batch);
  const auto wrows = random_gguf_rows(TensorType::kQ4_K, out, n, 22);
  const HostMatrix hm{TensorType::kQ4_K, wrows.data(), out, n, wrows.size() / out};
  const Weight wg = cuda_->upload_weight(hm), wc = cpu_->upload_weight(hm);
  const auto x = put(cuda_random_floats(rows * n, 23, 3.0f));
  const auto g = put(cuda_random_floats(n, 24));
  const auto other = put(cuda_random_floats(rows * n, 25));
  const auto h = zeros(rows * n);
  const auto y = zeros(rows * out);
  auto matmul_matches = [&](const Pair& in, const char* what) {
    cuda_->matmul(wg, in.gpu, y.gpu, rows);
    cpu_->matmul(wc, in.cpu, y.cpu, rows);
    EXPECT_LT(nmse(gpu(y, rows * out), cpu(y, rows * out)), 1e-3) << what;
  };
  cuda_->rmsnorm(x.gpu, g.gpu, h.gpu, rows, n, 1e-5f);
  cpu_->rmsnorm(x.cpu, g.cpu, h.cpu, rows, n, 1e-5f);
  matmul_matches(h, "norm, then GEMM");
  cuda_->rmsnorm(x.gpu, g.gpu, h.gpu, rows, n, 1e-5f);
  cpu_->rmsnorm(x.cpu, g.cpu, h.cpu, rows, n, 1e-5f);
  cuda_->add(h.gpu, other.gpu, h.gpu, rows * n);  // h changes after its BF16 copy was written
  cpu_->add(h.cpu, other.cpu, h.cpu, rows * n);
  matmul_matches(h, "norm, add, then GEMM");
  const auto up = put(cuda_random_floats(rows * n, 26));
  cuda_->swiglu(h.gpu, up.gpu, h.gpu, rows * n);
  cpu_->swiglu(h.cpu, up.cpu, h.cpu, rows * n);
  matmul_matches(h, "SwiGLU, then GEMM");
}

TEST_F(CudaOps, MatmulSharedEqualsSeparateMatmuls) {
  // One grouped launch for same-type matrices (Q4_K, Q6_K); for mixed ones (the q/k/v of a
  // Q4_K_M model whose v is Q6_K) one launch per type at batch 1 and gemm_kq for the Q4_K part
  // of a larger batch, the rest beside them on the side stream (int8 MMAs at 8, gemm_dq at 33,
  // cuBLASLt at 64); every part equal to the CPU backend's separate matmuls.
  const int64_t n = 512;
  const auto x = put(cuda_random_floats(64 * n, 21));
  struct Case {
    std::vector<TensorType> types;
    std::vector<int64_t> rows;
  };
  const std::vector<Case> cases = {
      {{TensorType::kQ4_K, TensorType::kQ4_K, TensorType::kQ4_K}, {67, 16, 9000}},
      {{TensorType::kQ6_K, TensorType::kQ6_K}, {5000, 4100}},
      {{TensorType::kQ4_K, TensorType::kQ6_K}, {33, 31}},
      {{TensorType::kQ4_K, TensorType::kQ4_K, TensorType::kQ6_K}, {512, 128, 128}},
      {{TensorType::kQ6_K, TensorType::kQ4_K, TensorType::kQ6_K}, {300, 257, 64}}};
  for (const Case& c : cases) {
    std::vector<std::vector<uint8_t>> host;
    std::vector<Weight> wg, wc;
    for (size_t i = 0; i < c.types.size(); ++i) {
      host.push_back(random_gguf_rows(c.types[i], c.rows[i], n, 30 + static_cast<uint32_t>(i)));
      const HostMatrix hm{c.types[i], host.back().data(), c.rows[i], n, host.back().size() / c.rows[i]};
      wg.push_back(cuda_->upload_weight(hm));
      wc.push_back(cpu_->upload_weight(hm));
    }
    for (int64_t m : {1, 8, 33, 64}) {
      std::vector<Pair> ys;
      std::vector<Backend::MatmulOut> og, oc;
      for (size_t i = 0; i < c.types.size(); ++i) ys.push_back(zeros(m * c.rows[i]));
      for (size_t i = 0; i < c.types.size(); ++i) {
        og.push_back({&wg[i], ys[i].gpu});
        oc.push_back({&wc[i], ys[i].cpu});
      }
      cuda_->matmul_shared(og, x.gpu, m);
      cpu_->matmul_shared(oc, x.cpu, m);
      for (size_t i = 0; i < c.types.size(); ++i) {
        EXPECT_LT(nmse(gpu(ys[i], m * c.rows[i]), cpu(ys[i], m * c.rows[i])), 1e-3)
            << type_name(c.types[i]) << " part " << i << ", batch " << m;
      }
    }
  }
}

TEST_F(CudaOps, SwigluInPlaceAddBias) {
  const int64_t n = 3 * 1000 + 7;
  const auto g = put(cuda_random_floats(n, 7, 4.0f));
  const auto u = put(cuda_random_floats(n, 8));
  cuda_->swiglu(g.gpu, u.gpu, g.gpu, n);
  cpu_->swiglu(g.cpu, u.cpu, g.cpu, n);
  EXPECT_LT(nmse(gpu(g, n), cpu(g, n)), 1e-10);
  const auto b = put(cuda_random_floats(1001, 9));
  cuda_->add_bias(g.gpu, b.gpu, 3, 1001);
  cpu_->add_bias(g.cpu, b.cpu, 3, 1001);
  cuda_->add(g.gpu, u.gpu, g.gpu, n);
  cpu_->add(g.cpu, u.cpu, g.cpu, n);
  EXPECT_LT(nmse(gpu(g, n), cpu(g, n)), 1e-10);
}

TEST_F(CudaOps, RopeStylesAndScaling) {
  const int32_t n_tok = 5;
  for (RopeStyle style : {RopeStyle::kNeox, RopeStyle::kInterleaved}) {
    for (auto kind : {RopeScaling::Kind::kNone, RopeScaling::Kind::kLinear,
                      RopeScaling::Kind::kLlama3}) {
      RopeParams p;
      p.n_head = 6;
      p.n_head_kv = 2;
      p.head_dim = 64;
      p.style = style;
      p.theta = 500000.0f;
      p.scaling.kind = kind;
      p.scaling.factor = kind == RopeScaling::Kind::kNone ? 1.0f : 8.0f;
      const BatchMeta b = simple_batch(n_tok, 3001, 10, 100);
      cuda_->begin_step(b);
      cpu_->begin_step(b);
      const auto q = put(cuda_random_floats(n_tok * 6 * 64, 11));
      const auto k = put(cuda_random_floats(n_tok * 2 * 64, 12));
      cuda_->rope(q.gpu, k.gpu, p);
      cpu_->rope(q.cpu, k.cpu, p);
      EXPECT_LT(nmse(gpu(q, n_tok * 6 * 64), cpu(q, n_tok * 6 * 64)), 1e-9)
          << static_cast<int>(style) << " " << static_cast<int>(kind);
      EXPECT_LT(nmse(gpu(k, n_tok * 2 * 64), cpu(k, n_tok * 2 * 64)), 1e-9);
    }
  }
}

TEST_F(CudaOps, EmbedAndGatherRows) {
  const int32_t n_tok = 9, vocab = 77;
  const BatchMeta b = simple_batch(n_tok, 0, 13, vocab);
  cuda_->begin_step(b);
  cpu_->begin_step(b);
  for (TensorType t : {TensorType::kQ8_0, TensorType::kQ4_K, TensorType::kQ6_K,
                       TensorType::kBF16, TensorType::kF16, TensorType::kF32}) {
    const int64_t cols = 512;
    const auto rows = random_gguf_rows(t, vocab, cols, 14);
    const HostMatrix hm{t, rows.data(), vocab, cols, rows.size() / vocab};
    const Weight wg = cuda_->upload_weight(hm), wc = cpu_->upload_weight(hm);
    const auto x = zeros(n_tok * cols);
    cuda_->embed(wg, x.gpu);
    cpu_->embed(wc, x.cpu);
    EXPECT_LT(nmse(gpu(x, n_tok * cols), cpu(x, n_tok * cols)), 1e-12) << static_cast<int>(t);
    const auto out = zeros(3 * cols);
    cuda_->gather_rows(x.gpu, out.gpu, cols);
    cpu_->gather_rows(x.cpu, out.cpu, cols);
    EXPECT_EQ(gpu(out, 3 * cols), cpu(out, 3 * cols));
  }
}

TEST_F(CudaOps, OutOfMemoryIsATypedError) {
  CudaBackendOptions o;
  o.gpu_memory_fraction = 0.05;
  auto small = make_cuda_backend(o);
  try {
    small->alloc(size_t{1} << 40);
    FAIL() << "a 1 TiB allocation succeeded";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kOutOfMemory) << e.what();
  }
}

}  // namespace
}  // namespace tpnode::test
