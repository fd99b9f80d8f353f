// The CPU backend: the numerical ground truth the CUDA backend and the model tests compare
// against. Ops run synchronously on the calling thread plus a private thread pool.
#pragma once

#include <memory>
#include <string_view>
#include <vector>

#include "kernels/cpu/attention.h"
#include "kernels/cpu/thread_pool.h"
#include "node/backend/cpu/aligned_buffer.h"
#include "node/backend/cpu/batch_check.h"
#include "node/engine/backend.h"

namespace tpnode {

struct CpuBackendOptions {
  int n_threads = 0;                      // 0 = all cores
  TensorType kv_type = TensorType::kF32;  // kF32 (ground truth) or kF16
  // Quantized weights are dequantized and dotted with F32 activations instead of 8-bit
  // ones: slower, free of activation rounding (for exact cross-checks).
  bool exact_matmul = false;
};

class CpuBackend final : public Backend {
 public:
  explicit CpuBackend(const CpuBackendOptions& options = {});
  ~CpuBackend() override;

  std::string_view name() const override { return "cpu"; }
  const CpuBackendOptions& options() const { return options_; }
  int n_threads() const { return pool_.size(); }

  void* alloc(size_t bytes) override;
  void copy_to_device(void* dst, const void* src, size_t bytes) override;
  void copy_to_host(void* dst, const void* src, size_t bytes) override;
  void sync() override {}

  Weight upload_weight(const HostMatrix& m) override;
  float* upload_vector(TensorType type, const void* data, int64_t n) override;
  Weight synth_weight(TensorType type, int64_t rows, int64_t cols, uint64_t seed) override;
  float* synth_vector(int64_t n, float value) override;

  void init_kv_cache(const KvCacheShape& shape) override;
  void begin_step(const BatchMeta& batch) override;

  void embed(const Weight& table, float* x) override;
  void rmsnorm(const float* x, const float* w, float* y, int64_t rows, int64_t n,
               float eps) override;
  void matmul(const Weight& w, const float* x, float* y, int64_t m) override;
  void add_bias(float* y, const float* b, int64_t m, int64_t n) override;
  void rope(float* q, float* k, const RopeParams& p) override;
  void attention(const float* q, const float* k, const float* v, float* out,
                 const AttentionParams& p) override;
  void swiglu(const float* gate, const float* up, float* out, int64_t n) override;
  void add(const float* x, const float* y, float* out, int64_t n) override;
  void gather_rows(const float* x, float* out, int64_t row_len) override;

 private:
  cpu::KvLayerView kv_layer(int64_t layer);

  CpuBackendOptions options_;
  cpu::ThreadPool pool_;
  std::vector<AlignedBuffer> allocations_;
  KvCacheShape kv_shape_;
  AlignedBuffer kv_k_;  // [n_layer, n_blocks, block_size, n_head_kv, head_dim] of kv_type
  AlignedBuffer kv_v_;
  BatchMeta batch_;
  BatchChecker checker_;
  bool blocks_checked_ = false;  // batch_'s block tables checked against kv_shape_
};

std::unique_ptr<Backend> make_cpu_backend(const CpuBackendOptions& options = {});

}  // namespace tpnode
