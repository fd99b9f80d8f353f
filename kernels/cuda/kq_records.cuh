// gemm_kq's 8-bit activation records (layout in gemm_kq.h): the offsets and the per-warp writer
// that gemm_kq_acts and the RMSNorm share, so that both write the same bytes.
#pragma once

#include <cuda_bf16.h>

#include <cstdint>

#include "kernels/cuda/gemm_kq.h"
#include "kernels/cuda/quantize_chunk.cuh"

namespace tpnode::cuda::kq {

inline constexpr int kRec = kGemmKqRecordBytes;
inline constexpr int kSumsOff = 2048, kXScaleOff = 2304;
inline constexpr int kPiece = 128;  // one core matrix: 8 tokens x 16 bytes

// The record holding stage st (values 256 st..) of token tok, of ceil(m / 8) = groups.
__device__ __forceinline__ uint8_t* record(uint8_t* base, int64_t st, int groups, int64_t tok) {
  return base + (st * groups + tok / 8) * kRec;
}

// One warp writes token slot t8 of a record from the stage's 256 values quantized by
// quantize_group256 (lane l: values 8l..8l+7, chunk l / 4, i = l % 4; d the group's scale,
// chunk_sum the sum of q over the lane's chunk): chunk c's pieces 2c (values 8i..8i+3) and
// 2c + 1 (8i+4..8i+7) at byte 4i of the token's row, and the chunk's d * sum. Every lane of
// the warp must call it.
__device__ __forceinline__ void write_quantized_record(const int (&q)[8], float d, int chunk_sum,
                                                       uint8_t* rec, int t8) {
  const int lane = static_cast<int>(threadIdx.x % 32);
  const int c = lane / 4, i = lane % 4;
  *reinterpret_cast<uint32_t*>(rec + (2 * c) * kPiece + t8 * 16 + 4 * i) = pack_s8x4(q);
  *reinterpret_cast<uint32_t*>(rec + (2 * c + 1) * kPiece + t8 * 16 + 4 * i) = pack_s8x4(q + 4);
  if (i == 0) {
    reinterpret_cast<__nv_bfloat16*>(rec + kSumsOff + t8 * 16)[c] =
        __float2bfloat16_rn(d * static_cast<float>(chunk_sum));
  }
  if (lane < 4) *reinterpret_cast<uint32_t*>(rec + kSumsOff + kPiece + t8 * 16 + 4 * lane) = 0;
  if (lane == 0) reinterpret_cast<float*>(rec + kXScaleOff)[t8] = d;
}

// The same from the stage's float values (lane l holds values 8l..8l+7).
__device__ __forceinline__ void write_record(const float (&v)[8], uint8_t* rec, int t8) {
  int q[8], sum = 0;
  const float d = quantize_group256(v, q, sum);
  write_quantized_record(q, d, sum, rec, t8);
}

// Slot tok's record of stage st, all zeros (a padding token's).
__device__ __forceinline__ void write_zero_record(uint8_t* base, int64_t st, int groups,
                                                  int64_t tok) {
  const float z[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
  write_record(z, record(base, st, groups, tok), static_cast<int>(tok % 8));
}

// The zeros of padding slots m + t, m + t + m, ... below the next multiple of 8, stages st0 ..
// st0 + n_st - 1, one stage per warp in turn (W warps): token t's CTA writes its share, so that
// no CTA writes up to seven of them after its own, a tail the whole launch waited for. Every
// lane of every warp must call it.
__device__ __forceinline__ void write_padding_records(uint8_t* base, int64_t st0, int64_t n_st,
                                                      int64_t t, int64_t m, int W) {
  const int warp = static_cast<int>(threadIdx.x / 32);
  const int groups = static_cast<int>((m + 7) / 8);
  for (int64_t tok = m + t; tok < int64_t{groups} * 8; tok += m) {
    for (int64_t s = warp; s < n_st; s += W) write_zero_record(base, st0 + s, groups, tok);
  }
}

// A CTA's share of token t's records, of m tokens: stages st0 .. st0 + n_st - 1, whose values
// are vals[256 s ..] (s from 0; 16-byte aligned, read as float4), one stage per warp in turn
// (W warps), and the same stages of its share of the padding slots (as write_padding_records
// spreads them). Every lane of every warp must call it.
__device__ __forceinline__ void write_token_records(uint8_t* base, const float* vals, int64_t st0,
                                                    int64_t n_st, int64_t t, int64_t m, int W) {
  const int warp = static_cast<int>(threadIdx.x / 32), lane = static_cast<int>(threadIdx.x % 32);
  const int groups = static_cast<int>((m + 7) / 8);
  for (int64_t s = warp; s < n_st; s += W) {
    float v[8];
    const float4* src = reinterpret_cast<const float4*>(vals + 256 * s + 8 * lane);
    const float4 a = src[0], b = src[1];
    v[0] = a.x, v[1] = a.y, v[2] = a.z, v[3] = a.w;
    v[4] = b.x, v[5] = b.y, v[6] = b.z, v[7] = b.w;
    write_record(v, record(base, st0 + s, groups, t), static_cast<int>(t % 8));
    for (int64_t tok = m + t; tok < int64_t{groups} * 8; tok += m) {
      write_zero_record(base, st0 + s, groups, tok);
    }
  }
}

// The same bytes as write_record, from four values per thread: values 4p..4p+3 of a stage
// (p = threadIdx.x % 64: two consecutive warps hold the stage) with the stage's amax over its
// 64 threads, which the caller works out. Every lane of both warps must call it (8-lane
// shuffles); only those with `store` write.
__device__ __forceinline__ void write_record4(float4 v, float amax, uint8_t* rec, int t8,
                                              bool store) {
  const int p = static_cast<int>(threadIdx.x % 64);
  const float d = amax / 127.0f;
  int q[4];
  quantize4(v, amax, d, q);
  // Chunk c = p / 8 (values 32c..): eight threads; exact integer sum in any order.
  int sum = q[0] + q[1] + q[2] + q[3];
  sum += __shfl_xor_sync(0xffffffffu, sum, 1);
  sum += __shfl_xor_sync(0xffffffffu, sum, 2);
  sum += __shfl_xor_sync(0xffffffffu, sum, 4);
  if (!store) return;
  // write_record's lane l = p / 2 holds values 8l..8l+7: chunk l / 4, i = l % 4, pieces 2c
  // (values 8i..8i+3) and 2c + 1 (8i+4..8i+7) at byte 4i of the slot's row.
  const int c = p / 8, i = p / 2 % 4;
  *reinterpret_cast<uint32_t*>(rec + (2 * c + p % 2) * kPiece + t8 * 16 + 4 * i) = pack_s8x4(q);
  if (p % 8 == 0) {
    reinterpret_cast<__nv_bfloat16*>(rec + kSumsOff + t8 * 16)[c] =
        __float2bfloat16_rn(d * static_cast<float>(sum));
  }
  if (p < 4) *reinterpret_cast<uint32_t*>(rec + kSumsOff + kPiece + t8 * 16 + 4 * p) = 0;
  if (p == 0) reinterpret_cast<float*>(rec + kXScaleOff)[t8] = d;
}

}  // namespace tpnode::cuda::kq
