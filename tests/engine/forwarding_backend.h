// A Backend that forwards every op to a CPU backend, for tests that give the engine a backend
// with one trait of another (device sampling, a memory budget) while the math stays the CPU's;
// and BudgetBackend, the CPU backend with a memory budget.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string_view>

#include "node/backend/cpu/cpu_backend.h"
#include "node/engine/backend.h"

namespace tpnode::tsupport {

class ForwardingBackend : public Backend {
 public:
  ForwardingBackend() : inner_(make_cpu_backend({})) {}

  std::string_view name() const override { return inner_->name(); }
  void* alloc(size_t bytes) override { return inner_->alloc(bytes); }
  void copy_to_device(void* dst, const void* src, size_t bytes) override {
    inner_->copy_to_device(dst, src, bytes);
  }
  void copy_to_host(void* dst, const void* src, size_t bytes) override {
    inner_->copy_to_host(dst, src, bytes);
  }
  void sync() override { inner_->sync(); }
  Weight upload_weight(const HostMatrix& m) override { return inner_->upload_weight(m); }
  float* upload_vector(TensorType type, const void* data, int64_t n) override {
    return inner_->upload_vector(type, data, n);
  }
  Weight synth_weight(TensorType type, int64_t rows, int64_t cols, uint64_t seed) override {
    return inner_->synth_weight(type, rows, cols, seed);
  }
  float* synth_vector(int64_t n, float value) override { return inner_->synth_vector(n, value); }
  size_t kv_element_bytes() const override { return inner_->kv_element_bytes(); }
  void init_kv_cache(const KvCacheShape& shape) override { inner_->init_kv_cache(shape); }
  void begin_step(const BatchMeta& batch) override { inner_->begin_step(batch); }
  void embed(const Weight& table, float* x) override { inner_->embed(table, x); }
  void rmsnorm(const float* x, const float* w, float* y, int64_t rows, int64_t n,
               float eps) override {
    inner_->rmsnorm(x, w, y, rows, n, eps);
  }
  void matmul(const Weight& w, const float* x, float* y, int64_t m) override {
    inner_->matmul(w, x, y, m);
  }
  void add_bias(float* y, const float* b, int64_t m, int64_t n) override {
    inner_->add_bias(y, b, m, n);
  }
  void rope(float* q, float* k, const RopeParams& p) override { inner_->rope(q, k, p); }
  void attention(const float* q, const float* k, const float* v, float* out,
                 const AttentionParams& p) override {
    inner_->attention(q, k, v, out, p);
  }
  void swiglu(const float* gate, const float* up, float* out, int64_t n) override {
    inner_->swiglu(gate, up, out, n);
  }
  void add(const float* x, const float* y, float* out, int64_t n) override {
    inner_->add(x, y, out, n);
  }
  void gather_rows(const float* x, float* out, int64_t row_len) override {
    inner_->gather_rows(x, out, row_len);
  }

 private:
  std::unique_ptr<Backend> inner_;
};

// The CPU backend with a memory budget: alloc() and the KV cache draw on it, and the last
// answer of memory_available() is kept, so that a test can check what the engine made of it.
class BudgetBackend final : public ForwardingBackend {
 public:
  explicit BudgetBackend(uint64_t budget) : budget_(budget) {}
  mutable std::optional<uint64_t> answered;  // what memory_available() said last
  uint64_t kv_bytes = 0;                     // what init_kv_cache asked for

  std::optional<uint64_t> memory_available() const override {
    const uint64_t left = budget_ > used_ ? budget_ - used_ : 0;
    answered = left;
    return left;
  }
  void* alloc(size_t bytes) override {
    used_ += bytes;
    return ForwardingBackend::alloc(bytes);
  }
  void init_kv_cache(const KvCacheShape& s) override {
    kv_bytes = static_cast<uint64_t>(2 * s.n_layer * s.n_blocks * s.block_size * s.n_head_kv *
                                     s.head_dim) *
               kv_element_bytes();
    used_ += kv_bytes;
    ForwardingBackend::init_kv_cache(s);
  }

 private:
  uint64_t budget_;
  uint64_t used_ = 0;
};

}  // namespace tpnode::tsupport
