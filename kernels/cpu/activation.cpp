#include "kernels/cpu/activation.h"

#include <cmath>

namespace tpnode::cpu {

float silu(float x) { return x / (1.0f + std::exp(-x)); }

void swiglu(const float* gate, const float* up, float* out, int64_t n, ThreadPool& pool) {
  constexpr int64_t kGrain = 1 << 13;
  pool.parallel_for(
      n,
      [=](int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end; ++i) out[i] = silu(gate[i]) * up[i];
      },
      kGrain);
}

}  // namespace tpnode::cpu
