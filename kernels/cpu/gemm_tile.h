// The loop nest shared by every matmul kernel: W rows in tiles that stay in L1, x rows in
// groups of kGroup so one load of a W block feeds several dot products. A Dot type supplies
//   template <int NX> static void run(int64_t k, const uint8_t* w_row,
//                                     const uint8_t* const* x_rows, float* out);
// which must compute each out[q] identically for every NX (batch-invariant results).
// Internal linkage: instantiated in files built for different ISAs.
#pragma once

#include <cstdint>

#include "kernels/cpu/vec_dot.h"

namespace tpnode::cpu {
namespace {

constexpr int kGroup = 4;           // x rows per W row load
constexpr int64_t kTileRows = 16;   // W rows reused from L1 across the x groups
constexpr int64_t kPrefetchRows = 4;  // how far ahead W rows are requested from memory

// Asks for W row `j` while earlier rows are computed: decode streams W from DRAM once, and
// the hardware prefetcher alone leaves the dot products waiting on it.
inline void prefetch_row(const GemmTask& t, int64_t j) {
  const uint8_t* row = t.w + static_cast<size_t>(j) * t.w_stride;
  const size_t bytes = t.w_stride;
  for (size_t off = 0; off < bytes; off += 64) __builtin_prefetch(row + off, 0, 0);
}

template <class Dot>
void gemm_rows(const GemmTask& t, int64_t r0, int64_t r1) {
  for (int64_t j0 = r0; j0 < r1; j0 += kTileRows) {
    const int64_t j1 = r1 < j0 + kTileRows ? r1 : j0 + kTileRows;
    for (int64_t i = 0; i < t.m; i += kGroup) {
      const int nx = static_cast<int>(t.m - i < kGroup ? t.m - i : kGroup);
      const uint8_t* xs[kGroup] = {};
      for (int q = 0; q < nx; ++q) xs[q] = t.x + static_cast<size_t>(i + q) * t.x_stride;
      for (int64_t j = j0; j < j1; ++j) {
        if (i == 0 && j + kPrefetchRows < r1) prefetch_row(t, j + kPrefetchRows);
        const uint8_t* w = t.w + static_cast<size_t>(j) * t.w_stride;
        float out[kGroup] = {};
        switch (nx) {
          case 4: Dot::template run<4>(t.k, w, xs, out); break;
          case 3: Dot::template run<3>(t.k, w, xs, out); break;
          case 2: Dot::template run<2>(t.k, w, xs, out); break;
          default: Dot::template run<1>(t.k, w, xs, out); break;
        }
        for (int q = 0; q < nx; ++q) t.y[(i + q) * t.ldy + j] = out[q];
      }
    }
  }
}

}  // namespace
}  // namespace tpnode::cpu
