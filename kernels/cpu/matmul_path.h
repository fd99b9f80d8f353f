// Chooses the kernel family of cpu::matmul explicitly: tests compare the scalar and AVX2
// paths, benchmarks time them. Production code calls cpu::matmul (automatic choice).
#pragma once

#include "kernels/cpu/matmul.h"

namespace tpnode::cpu {

enum class MatmulPath {
  kAuto,        // the best the CPU has: AVX512-VNNI, else AVX2/FMA, else scalar
  kScalar,      // portable kernels only
  kAvx2,        // AVX2 kernels; throws when the CPU lacks AVX2/FMA/F16C
  kAvx512Vnni,  // AVX2 kernels with VNNI byte dot products; throws when the CPU lacks them
};

// Whether the CPU has AVX512-VNNI and AVX512VL on top of AVX2/FMA/F16C.
bool cpu_has_avx512_vnni();

void matmul(const MatmulArgs& args, ThreadPool& pool, MatmulPath path);

}  // namespace tpnode::cpu
