// Warpgroup MMA (wgmma, sm_90a) primitives shared by the tensor-core GEMMs: the async group
// fences, a K-major shared-memory descriptor without swizzle, and the shapes the kernels issue
// (A from registers, B from shared memory). Defines TPNODE_WGMMA to 1 where the compilation
// target has them, else to 0 (callers fall back to mma.sync or do not launch).
#pragma once

#include <cstdint>

namespace tpnode::cuda {

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define TPNODE_WGMMA 1
__device__ __forceinline__ void wg_fence() {
  asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
}
__device__ __forceinline__ void wg_commit() {
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
}
template <int N>
__device__ __forceinline__ void wg_wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}
// Descriptor of a K-major operand without swizzle: core matrices of 8 rows x 16 contiguous
// bytes (128 bytes); lbo = bytes between the two core matrices of one MMA's k step, sbo =
// bytes between groups of 8 rows (tokens).
__device__ __forceinline__ uint64_t wg_desc(uint32_t addr, uint32_t lbo, uint32_t sbo) {
  return static_cast<uint64_t>((addr & 0x3FFFF) >> 4) |
         (static_cast<uint64_t>((lbo & 0x3FFFF) >> 4) << 16) |
         (static_cast<uint64_t>((sbo & 0x3FFFF) >> 4) << 32);
}

// D[64 x 8NB] (+)= A[64 x 16] (BF16, registers) . B[16 x 8NB] (BF16, shared memory, K-major);
// with accumulate false D is overwritten.
template <int NB>
struct WgmmaBf16;
// D[64 x 8NB] (+)= A[64 x 32] (s8, registers) . B[32 x 8NB] (s8, shared memory, K-major), in
// 32-bit integers.
template <int NB>
struct WgmmaS8;

#define TPNODE_D4F(j) "+f"(d[j][0]), "+f"(d[j][1]), "+f"(d[j][2]), "+f"(d[j][3])
#define TPNODE_D4I(j) "+r"(d[j][0]), "+r"(d[j][1]), "+r"(d[j][2]), "+r"(d[j][3])
template <>
struct WgmmaBf16<8> {
  __device__ static void run(float (&d)[8][4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,
                             uint64_t b, int accumulate = 1) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 "
        "{%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,"
        "%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31}, "
        "{%32,%33,%34,%35}, %36, p, 1, 1, 0;\n}\n"
        : TPNODE_D4F(0), TPNODE_D4F(1), TPNODE_D4F(2), TPNODE_D4F(3), TPNODE_D4F(4),
          TPNODE_D4F(5), TPNODE_D4F(6), TPNODE_D4F(7)
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "l"(b), "r"(accumulate)
        : "memory");
  }
};
template <>
struct WgmmaBf16<4> {
  __device__ static void run(float (&d)[4][4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,
                             uint64_t b, int accumulate = 1) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %21, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n32k16.f32.bf16.bf16 "
        "{%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15}, "
        "{%16,%17,%18,%19}, %20, p, 1, 1, 0;\n}\n"
        : TPNODE_D4F(0), TPNODE_D4F(1), TPNODE_D4F(2), TPNODE_D4F(3)
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "l"(b), "r"(accumulate)
        : "memory");
  }
};
template <>
struct WgmmaS8<8> {
  __device__ static void run(int (&d)[8][4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,
                             uint64_t b, int accumulate) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n64k32.s32.s8.s8 "
        "{%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,"
        "%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31}, "
        "{%32,%33,%34,%35}, %36, p;\n}\n"
        : TPNODE_D4I(0), TPNODE_D4I(1), TPNODE_D4I(2), TPNODE_D4I(3), TPNODE_D4I(4),
          TPNODE_D4I(5), TPNODE_D4I(6), TPNODE_D4I(7)
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "l"(b), "r"(accumulate)
        : "memory");
  }
};
template <>
struct WgmmaBf16<6> {
  __device__ static void run(float (&d)[6][4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,
                             uint64_t b, int accumulate = 1) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %29, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n48k16.f32.bf16.bf16 "
        "{%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,"
        "%16,%17,%18,%19,%20,%21,%22,%23}, "
        "{%24,%25,%26,%27}, %28, p, 1, 1, 0;\n}\n"
        : TPNODE_D4F(0), TPNODE_D4F(1), TPNODE_D4F(2), TPNODE_D4F(3), TPNODE_D4F(4),
          TPNODE_D4F(5)
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "l"(b), "r"(accumulate)
        : "memory");
  }
};
template <>
struct WgmmaS8<6> {
  __device__ static void run(int (&d)[6][4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,
                             uint64_t b, int accumulate) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %29, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n48k32.s32.s8.s8 "
        "{%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,"
        "%16,%17,%18,%19,%20,%21,%22,%23}, "
        "{%24,%25,%26,%27}, %28, p;\n}\n"
        : TPNODE_D4I(0), TPNODE_D4I(1), TPNODE_D4I(2), TPNODE_D4I(3), TPNODE_D4I(4),
          TPNODE_D4I(5)
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "l"(b), "r"(accumulate)
        : "memory");
  }
};
template <>
struct WgmmaS8<4> {
  __device__ static void run(int (&d)[4][4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,
                             uint64_t b, int accumulate) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %21, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n32k32.s32.s8.s8 "
        "{%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15}, "
        "{%16,%17,%18,%19}, %20, p;\n}\n"
        : TPNODE_D4I(0), TPNODE_D4I(1), TPNODE_D4I(2), TPNODE_D4I(3)
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "l"(b), "r"(accumulate)
        : "memory");
  }
};
#undef TPNODE_D4F
#undef TPNODE_D4I
#else
#define TPNODE_WGMMA 0
#endif

}  // namespace tpnode::cuda
