// RMSNorm as Hugging Face's LlamaRMSNorm computes it: y = w * (x * rsqrt(mean(x^2) + eps)).
#pragma once

#include <cstdint>

#include "kernels/cpu/thread_pool.h"

namespace tpnode::cpu {

struct RmsNormArgs {
  const float* x = nullptr;  // [rows, n]
  const float* w = nullptr;  // [n]
  float* y = nullptr;        // [rows, n]; may alias x
  int64_t rows = 0;
  int64_t n = 0;
  float eps = 1e-5f;
};

void rmsnorm(const RmsNormArgs& args, ThreadPool& pool);

}  // namespace tpnode::cpu
