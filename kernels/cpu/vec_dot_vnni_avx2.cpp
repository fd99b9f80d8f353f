// The AVX2 kernels with AVX512-VNNI's vpdpbusd (256-bit, needs AVX512VL) for the byte dot
// products: one instruction instead of maddubs + madd. Exact integer sums either way, so the
// results are bit-identical to vec_dot_avx2.cpp. Called only after a run-time CPU check.
#pragma GCC target("avx2,fma,f16c,avx512f,avx512vl,avx512vnni")

#include <immintrin.h>

#include "kernels/cpu/vec_dot.h"

namespace tpnode::cpu {
namespace {

inline __m256i dot_u8_i8(__m256i u, __m256i s) {
  return _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, s);
}

}  // namespace
}  // namespace tpnode::cpu

#include "kernels/cpu/vec_dot_x86.h"

namespace tpnode::cpu {

GemmRowsFn vnni_gemm_rows(TensorType w_type) { return x86_gemm_rows(w_type); }

}  // namespace tpnode::cpu
