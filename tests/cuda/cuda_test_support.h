// Shared by the CUDA tests: a fixture that skips without a GPU and holds a CUDA and a CPU
// backend (the oracle), seeded data, GGUF-format random quantized rows, and NMSE.
#pragma once


#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cctype>
#include <cmath>
#include <cstdlib>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <memory>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "node/backend/cpu/cpu_backend.h"
#include "kernels/cuda/quant_layout.h"
#include "node/backend/cuda/cuda_backend.h"

namespace tpnode::test {

// Device memory of a kernel-level test, freed at scope exit (null when cudaMalloc failed).
class DeviceBytes {
 public:
  DeviceBytes() = default;
  explicit DeviceBytes(size_t bytes) {
    if (cudaMalloc(&p_, bytes) != cudaSuccess) p_ = nullptr;
  }
  DeviceBytes(const DeviceBytes&) = delete;
  DeviceBytes& operator=(const DeviceBytes&) = delete;
  DeviceBytes(DeviceBytes&& o) noexcept : p_(o.p_) { o.p_ = nullptr; }
  DeviceBytes& operator=(DeviceBytes&& o) noexcept {
    std::swap(p_, o.p_);
    return *this;
  }
  ~DeviceBytes() {
    if (p_ != nullptr) cudaFree(p_);
  }
  template <typename T>
  T* as() const {
    return static_cast<T*>(p_);
  }

 private:
  void* p_ = nullptr;
};

inline std::vector<float> cuda_random_floats(size_t n, uint32_t seed, float scale = 1.0f) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(-scale, scale);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

// ||a - ref||² / ||ref||²; NaN anywhere gives +inf.
inline double nmse(const std::vector<float>& a, const std::vector<float>& ref) {
  double num = 0.0, den = 0.0;
  for (size_t i = 0; i < ref.size(); ++i) {
    if (!std::isfinite(a[i])) return INFINITY;
    const double d = static_cast<double>(a[i]) - ref[i];
    num += d * d;
    den += static_cast<double>(ref[i]) * ref[i];
  }
  return den > 0.0 ? num / den : num;
}

inline uint16_t f32_to_f16_bits(float f) {
  const _Float16 h = static_cast<_Float16>(f);
  uint16_t b;
  std::memcpy(&b, &h, 2);
  return b;
}

inline size_t gguf_block_bytes(TensorType t) {
  switch (t) {
    case TensorType::kQ4_0: return 18;
    case TensorType::kQ4_1: return 20;
    case TensorType::kQ5_0: return 22;
    case TensorType::kQ5_1: return 24;
    case TensorType::kQ8_0: return 34;
    case TensorType::kQ4_K: return 144;
    case TensorType::kQ5_K: return 176;
    case TensorType::kQ6_K: return 210;
    case TensorType::kF16: case TensorType::kBF16: return 2;
    case TensorType::kF32: return 4;
    default: return 0;
  }
}
// The quantized weight types every quantized CUDA kernel supports, and their names as
// gtest parameter labels.
inline constexpr TensorType kQuantizedTypes[] = {
    TensorType::kQ4_0, TensorType::kQ4_1, TensorType::kQ5_0, TensorType::kQ5_1,
    TensorType::kQ8_0, TensorType::kQ4_K, TensorType::kQ5_K, TensorType::kQ6_K};
inline std::string quant_type_label(const ::testing::TestParamInfo<TensorType>& i) {
  return ::tpnode::cuda::weight_type_label(i.param);
}

inline int64_t gguf_block_size(TensorType t) {
  switch (t) {
    case TensorType::kQ4_K: case TensorType::kQ5_K: case TensorType::kQ6_K: return 256;
    case TensorType::kF16: case TensorType::kBF16: case TensorType::kF32: return 1;
    default: return 32;
  }
}

// Random GGUF rows of `type`: random quants and sub-scales, half scales of sane size
// (values ~ +-0.1), so both backends see finite, non-trivial weights.
inline std::vector<uint8_t> random_gguf_rows(TensorType type, int64_t rows, int64_t cols,
                                             uint32_t seed) {
  std::mt19937 rng(seed);
  const int64_t nb = cols / gguf_block_size(type);
  const size_t bb = gguf_block_bytes(type);
  std::vector<uint8_t> out(static_cast<size_t>(rows * nb) * bb);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  if (type == TensorType::kF32) {
    for (size_t i = 0; i < out.size() / 4; ++i) {
      const float v = u(rng) * 0.1f;
      std::memcpy(out.data() + 4 * i, &v, 4);
    }
    return out;
  }
  if (type == TensorType::kF16 || type == TensorType::kBF16) {
    for (size_t i = 0; i < out.size() / 2; ++i) {
      const float v = u(rng) * 0.1f;
      uint16_t b;
      if (type == TensorType::kF16) {
        b = f32_to_f16_bits(v);
      } else {
        uint32_t bits;
        std::memcpy(&bits, &v, 4);
        b = static_cast<uint16_t>(bits >> 16);
      }
      std::memcpy(out.data() + 2 * i, &b, 2);
    }
    return out;
  }
  for (auto& b : out) b = static_cast<uint8_t>(rng());
  auto put_half = [&](uint8_t* p, float v) {
    const uint16_t b = f32_to_f16_bits(v);
    std::memcpy(p, &b, 2);
  };
  std::uniform_real_distribution<float> pos(0.5f, 1.0f);
  for (int64_t i = 0; i < rows * nb; ++i) {
    uint8_t* blk = out.data() + static_cast<size_t>(i) * bb;
    switch (type) {
      case TensorType::kQ4_0: put_half(blk, 0.012f * pos(rng)); break;
      case TensorType::kQ5_0: put_half(blk, 0.006f * pos(rng)); break;
      case TensorType::kQ8_0: put_half(blk, 0.0008f * pos(rng)); break;
      case TensorType::kQ4_1:
      case TensorType::kQ5_1:
        put_half(blk, (type == TensorType::kQ4_1 ? 0.012f : 0.006f) * pos(rng));
        put_half(blk + 2, -0.09f * pos(rng));
        break;
      case TensorType::kQ4_K:
      case TensorType::kQ5_K:
        put_half(blk, 0.0004f * pos(rng));
        put_half(blk + 2, 0.0015f * pos(rng));
        break;
      case TensorType::kQ6_K: put_half(blk + 208, 0.0001f * pos(rng)); break;
      default: break;
    }
  }
  return out;
}

// Test names for suites over model paths: the file or folder stem, other characters as '_'.
inline std::string model_param_name(const ::testing::TestParamInfo<const char*>& info) {
  std::string n = std::filesystem::path(info.param).stem().string();
  for (char& ch : n) {
    if (!std::isalnum(static_cast<unsigned char>(ch))) ch = '_';
  }
  return n;
}

// A CUDA backend and the CPU oracle; skipped with a reason when no GPU is usable.
class CudaVsCpu : public ::testing::Test {
 protected:
  void SetUp() override {
    if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device (cudaGetDeviceCount gave 0)";
    cuda_ = make_cuda_backend(cuda_options());
    cpu_ = make_cpu_backend(cpu_options());
  }
  // TPNODE_TEST_CUDA_NO_PDL / _NO_GRAPHS / _GEMV_MAX=<n> switch features for bisecting a
  // failure on the GPU machine (tests only; the backend itself reads no environment).
  virtual CudaBackendOptions cuda_options() const {
    CudaBackendOptions o;
    o.gpu_memory_fraction = 0.5;
    if (std::getenv("TPNODE_TEST_CUDA_NO_PDL")) o.pdl = false;
    if (std::getenv("TPNODE_TEST_CUDA_NO_GRAPHS")) o.use_cuda_graphs = false;
    if (const char* g = std::getenv("TPNODE_TEST_CUDA_GEMV_MAX")) o.quant_gemv_max_batch = std::atoi(g);
    return o;
  }
  virtual CpuBackendOptions cpu_options() const { return {}; }

  // The same host data in both backends.
  struct Pair {
    float* gpu;
    float* cpu;
  };
  Pair put(const std::vector<float>& host) {
    const size_t bytes = host.size() * sizeof(float);
    Pair p{static_cast<float*>(cuda_->alloc(bytes)), static_cast<float*>(cpu_->alloc(bytes))};
    cuda_->copy_to_device(p.gpu, host.data(), bytes);
    cpu_->copy_to_device(p.cpu, host.data(), bytes);
    return p;
  }
  Pair zeros(size_t n) { return put(std::vector<float>(n, 0.0f)); }
  std::vector<float> get(Backend& b, const float* p, size_t n) {
    std::vector<float> out(n);
    b.copy_to_host(out.data(), p, n * sizeof(float));
    return out;
  }
  std::vector<float> gpu(const Pair& p, size_t n) { return get(*cuda_, p.gpu, n); }
  std::vector<float> cpu(const Pair& p, size_t n) { return get(*cpu_, p.cpu, n); }

  std::unique_ptr<Backend> cuda_;
  std::unique_ptr<Backend> cpu_;
};

// CudaVsCpu with the batch-1 RMSNorm inside the gate/up GEMV (CudaBackendOptions::
// fuse_norm_gemv, off by default).
class CudaVsCpuFusedNorm : public CudaVsCpu {
 protected:
  CudaBackendOptions cuda_options() const override {
    CudaBackendOptions o = CudaVsCpu::cuda_options();
    o.fuse_norm_gemv = true;
    return o;
  }
};

}  // namespace tpnode::test
