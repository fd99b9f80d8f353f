#include "kernels/cpu/norm.h"

#include <cmath>

namespace tpnode::cpu {

void rmsnorm(const RmsNormArgs& a, ThreadPool& pool) {
  if (a.rows <= 0 || a.n <= 0) return;
  pool.parallel_for(a.rows, [&a](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const float* x = a.x + r * a.n;
      float* y = a.y + r * a.n;
      // The sum of squares in double keeps the result independent of n and order.
      double sum = 0.0;
      for (int64_t i = 0; i < a.n; ++i) sum += static_cast<double>(x[i]) * x[i];
      const float inv_rms =
          static_cast<float>(1.0 / std::sqrt(sum / static_cast<double>(a.n) + a.eps));
      for (int64_t i = 0; i < a.n; ++i) y[i] = a.w[i] * (x[i] * inv_rms);
    }
  });
}

}  // namespace tpnode::cpu
