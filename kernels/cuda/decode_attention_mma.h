// Decode attention on tensor cores: one CTA per (token, KV head, key split) takes the KV head's
// whole query group (up to 8 heads), so each K/V row is read once per token; scores and the
// value sums are mma.sync m16n8k16 products (BF16/F16 in, F32 accumulated) with the keys as
// the MMA's rows and the heads as its columns, instead of the CUDA-core kernel's per-key FMA
// and shuffle chains (faster on an H200 at every batch measured, 1 to 64: docs/BENCHMARKS.md).
// decode_attention launches it for DecodeAttentionParams::mma. head_dim 64 or 128.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "kernels/cuda/attention.h"
#include "kernels/cuda/pdl.cuh"

namespace tpnode::cuda {

// Whether the kernel takes these heads: a group of at most 8 query heads per KV head and
// head_dim 64 or 128.
bool decode_mma_supports(int64_t n_head, int64_t n_head_kv, int64_t head_dim);
// Keys a CTA of `warps` warps takes per round of them (the split planner's stage).
int decode_mma_stage_keys(int warps);
// The whole variant: twelve warps per CTA, one CTA per SM, taken by grids of at most one CTA
// per kDecodeMmaWholeGridShare SMs.
inline constexpr int kDecodeMmaWholeWarps = 12;
// At most one CTA per eight SMs (batches 1-2 of Llama-3-8B's 8 KV heads on 132 SMs): at batch
// 4 the whole variant's longer-context splits (four-CTA clusters of one CTA per SM) measured
// 6% slower steps on an H200 (docs/BENCHMARKS.md).
inline constexpr int kDecodeMmaWholeGridShare = 8;
// Whether a device that gives a CTA at most `smem_per_cta` bytes of shared memory (its opt-in
// limit) runs the whole variant at this head_dim: 202 KB at head_dim 128 (Hopper's 227 KB holds
// it, an A100's 163 KB does not), ~99 KB at 64.
bool decode_mma_whole_fits(int64_t head_dim, size_t smem_per_cta);
// Warps per CTA for a grid of `ctas` CTAs: `want` when it is 4, 2 or 12, else (0) twelve (the
// whole variant, where `whole_fits`) for grids of at most one CTA per kDecodeMmaWholeGridShare
// SMs, two (the narrow variant) where four-warp CTAs would take more than one wave, four
// otherwise. Throws when 12 is asked for and does not fit.
int decode_mma_warps(int64_t ctas, int n_sms, int want, bool whole_fits = true);
// Whether narrow CTAs take three-tile rings (four CTAs per SM instead of five): when `allow`
// and the grid still fits one wave of them.
bool decode_mma_deep(int64_t ctas, int n_sms, int warps, bool allow);
// Shared-memory limits of the kernel's variants that the current device holds (outside any
// graph capture, at set-up).
void decode_attention_mma_init();
// The launch decode_attention checked and shaped (grid: tokens x KV heads x splits).
void decode_attention_mma(const DecodeAttentionParams& p, const LaunchShape& shape,
                          cudaStream_t stream);

}  // namespace tpnode::cuda
