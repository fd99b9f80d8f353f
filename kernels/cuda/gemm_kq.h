// Q4_K GEMM for decode batches on int8 tensor cores: y[m, rows] = x[m, cols] · Wᵀ with W in
// Q4_K (split layout, quant_layout.h) and x quantized to 8 bits per 256-value group
// (gemm_kq_acts). Each 256-value block of a row is one k stage: its eight 32-value chunks'
// 6-bit scales are split as sc = 8 hi + lo (each 0..7), the 4-bit quants times hi and times lo
// (<= 105, still int8) go through two s8 warpgroup MMAs (m64nNk32) that add a whole block in
// 32-bit integers, converted once per block (d * x scale); the mins' term is one BF16 MMA per
// block of -dmin * m against the chunks' sums of x. So the weights are read once per 64
// tokens and no float work scales with chunks. sm_90a only (gemm_kq_available); results are
// bitwise repeatable for a given plan: fixed summation order, no float atomics.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/cuda/gemm_dq.h"  // GemmDqWorkspace: the same k-split scratch
#include "kernels/cuda/quant_layout.h"

namespace tpnode::cuda {

inline constexpr int64_t kGemmKqMaxBatch = 128;
inline constexpr int kGemmKqMaxSplits = 8;

// The activation layout gemm_kq reads: records of kGemmKqRecordBytes, [cols / 256 stages]
// [ceil(m / 8) groups of 8 tokens], tokens past m zero. A record holds, for its 8 tokens and
// 256 values:
//   [0, 2048)     16 pieces of [8 tokens][16 int8]: piece 2c + h holds chunk c's values
//                 8i + 4h + j (i, j = 0..3) at byte 4i + j, the order the MMA fragments of
//                 8 adjacent weight quants take them (s8 core matrices, K-major);
//   [2048, 2304)  two BF16 core matrices [8 tokens][8]: the first holds each chunk's sum of x
//                 (scale * sum of its int8 values), the second zeros;
//   [2304, 2336)  the 8 tokens' scales (float): x ~= scale * q, |q| <= 127.
inline constexpr int kGemmKqRecordBytes = 2336;
inline constexpr int kGemmKqStage = 256;
inline int64_t gemm_kq_acts_bytes(int64_t m, int64_t cols) {
  return (m + 7) / 8 * (cols / kGemmKqStage) * kGemmKqRecordBytes;
}

struct GemmKqActsParams {
  const float* x = nullptr;  // [m, cols]
  uint8_t* y = nullptr;      // gemm_kq_acts_bytes(m, cols), 16-byte aligned
  int64_t m = 0;
  int64_t cols = 0;  // a multiple of 256
};
void gemm_kq_acts(const GemmKqActsParams& p, cudaStream_t stream);

struct GemmKqParams {
  DeviceMatrix w;              // [rows, cols] Q4_K (gemm_kq_supports)
  const uint8_t* x = nullptr;  // gemm_kq_acts' layout of [m, cols]
  float* y = nullptr;          // [m, ldy]: columns [0, rows) written
  int64_t m = 0;               // 1..kGemmKqMaxBatch
  int64_t ldy = 0;             // row stride of y in elements; 0 = w.rows
  GemmDqWorkspace ws;          // optional: without it k is never split
};

// Several Q4_K matrices of the same width that share x (q/k/v, gate/up) in one launch.
inline constexpr int kGemmKqMaxGroup = 3;
struct GemmKqOut {
  DeviceMatrix w;
  float* y = nullptr;
  int64_t ldy = 0;  // 0 = w.rows
};
struct GemmKqGroupParams {
  GemmKqOut outs[kGemmKqMaxGroup];
  int n = 0;
  const uint8_t* x = nullptr;
  int64_t m = 0;
  GemmDqWorkspace ws;
};

// The launch's shape. A CTA computes 128 rows of one token tile of 32 or 64 tokens. 32-token
// tiles can run two CTAs per SM (half the ring each; 123 registers against 139 and 191): four
// warps per scheduler instead of two hide more of a stage's chain of dependent instructions.
// Then each weight block is decoded once per 32 tokens (the second tile's reads mostly hit L2).
//
// Stream-K: one CTA per tile and k split leaves SMs idle where the tiles are not whole waves
// (gate/up of Llama-3-8B at batch 64: 224 tiles on 132 SMs, a second wave of 92). A resident
// grid whose CTAs take even, contiguous ranges of all the tiles' stages instead (a CTA's ring
// runs on from one tile into the next; a tile shared by CTAs is added up in CTA order by the
// last of them) ends all CTAs together.
struct GemmKqTuning {
  int max_tile_tokens = 64;  // 32 or 64
  int ctas_per_sm = 2;       // 1 or 2 (32-token tiles only)
  // Stream-K where the tiles make more than one wave and not whole waves (also where tiles and
  // k splits leave SMs idle within one wave lost 4-5% at batches 40-64 on an H200).
  bool stream_k = true;
};
struct GemmKqPlan {
  int k_splits = 1;  // 1..kGemmKqMaxSplits
  int max_tile_tokens = 64;
  int ctas_per_sm = 1;  // 2 only where the tiles are of 32 tokens
  int ctas = 0;         // > 0: stream-K over this many CTAs (k_splits unused)
};
// The scratch gemm_kq's k splits and stream-K launches use on the current device: room for two
// output-tile parts and a counter per resident CTA (k splits need no more).
GemmDqWorkspaceSize gemm_kq_workspace_size();
// Throws unless the tuning is one the kernels are built for.
void gemm_kq_check_tuning(const GemmKqTuning& t);
GemmKqPlan gemm_kq_plan(const GemmKqParams& p, const GemmKqTuning& t = {});
GemmKqPlan gemm_kq_plan(const GemmKqGroupParams& p, const GemmKqTuning& t = {});

// A Q4_K matrix whose rows are whole 256-value blocks, 16-byte aligned (rows and start).
bool gemm_kq_supports(const DeviceMatrix& w);
// Whether the current device runs gemm_kq: compute capability 9.0 and a build with sm_90a
// (the probe runs once per device, outside graph capture: call gemm_kq_init at set-up).
bool gemm_kq_available();
// Raises the kernel's shared-memory limit and probes the build, once per device. Call outside
// graph capture.
void gemm_kq_init();

void gemm_kq(const GemmKqParams& p, cudaStream_t stream);
void gemm_kq(const GemmKqParams& p, const GemmKqPlan& plan, cudaStream_t stream);
void gemm_kq_group(const GemmKqGroupParams& p, cudaStream_t stream);
void gemm_kq_group(const GemmKqGroupParams& p, const GemmKqPlan& plan, cudaStream_t stream);

}  // namespace tpnode::cuda
