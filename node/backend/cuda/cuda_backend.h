// The CUDA implementation of tpnode::Backend on one GPU. This header needs no CUDA headers:
// the command line and the engine include it whether or not CUDA is built.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "node/engine/backend.h"

namespace tpnode {

enum class KvCacheDtype { kBF16, kF16 };

struct CudaBackendOptions {
  int device = 0;
  double gpu_memory_fraction = 0.90;  // of the device's memory; allocations past it throw
  KvCacheDtype kv_dtype = KvCacheDtype::kBF16;
  int64_t max_batch_tokens = 512;     // sizes the step scratch buffers up front
  // Decode steps are padded to graph shapes (Backend::decode_graphs) either way; with graphs
  // each shape is captured once (on its second step) and replayed, without they run op by op.
  bool use_cuda_graphs = true;
  // Quantized weights also get a BF16 copy for prefill / large-batch GEMMs while the copies
  // fit in this fraction of the budget; without a copy the GEMM dequantizes into scratch.
  double bf16_copy_fraction = 0.5;
  // Programmatic dependent launch between decode kernels (compute capability >= 9.0 only):
  // a kernel's CTAs start while the previous one finishes and load their weights before
  // waiting for its output (docs/BENCHMARKS.md has the measured gain).
  bool pdl = true;
  // Quantized matmuls with at most this many rows (decode batches) read the quantized weights
  // on int8 tensor cores (Q4_K from gemm_kq_min_batch on gemm_kq instead); larger ones run
  // GEMMs (gemm_kq for Q4_K, gemm_dq or cuBLASLt on BF16), which are faster there: on an H200
  // (8B Q4_K_M) from batch 9 on (docs/BENCHMARKS.md). At most 64.
  int64_t quant_gemv_max_batch = 8;
  // Q4_K/Q5_K/Q6_K matmuls of 2 up to this many rows (at most 64) that gemm_kq does not take
  // run on int8 tensor cores with activations quantized per 256 values, so that each weight
  // block's chunk products add up in integers before one conversion
  // (gemv_mma_block_accumulates); 0 or 1: off. On an H200 (8B Q4_K_M) batches 2 and 8 gained 7%
  // over per-chunk conversions; from batch 16 on it is slower than the BF16 GEMMs
  // (docs/BENCHMARKS.md).
  int64_t kquant_mma_max_batch = 8;
  // Those matmuls' work split (GemvMmaPlan) forced for measurements: 16-row tiles per warp
  // (1 or 2) and k splits (1, 2, 4 or 8); 0 keeps the planner's choice.
  int mma_row_tiles = 0;
  int mma_k_splits = 0;
  // Quantized matmuls with more rows than those, up to this many (at most 128), of weights
  // without a BF16 copy dequantize inside a tensor-core GEMM (gemm_dq); 0: off (the GEMM then
  // dequantizes the weights into a staging buffer first). Weights with a copy use cuBLASLt
  // above dq_gemm_over_copies_max_batch.
  int64_t dq_gemm_max_batch = 128;
  // Decode batches up to this many rows run gemm_dq on the quantized bytes even where a BF16
  // copy exists: on an H200 (8B Q4_K_M) it is faster up to batch 32 and slower at 64
  // (docs/BENCHMARKS.md). 0: weights with a copy always use it.
  int64_t dq_gemm_over_copies_max_batch = 32;
  // Q4_K matmuls of more rows than kquant_mma_max_batch, up to this many (at most 128), run on
  // int8 warpgroup MMAs straight from the quantized blocks (gemm_kq: compute capability 9.0,
  // an sm_90a build), ahead of gemm_dq and the BF16 copies; 0: off.
  int64_t gemm_kq_max_batch = 64;
  // The smallest batch on gemm_kq (at least 2): its Q4_K matrices skip the int8 GEMVs above
  // (kquant_mma_max_batch keeps the other K-quant types there). On an H200 (8B Q4_K_M, two
  // CTAs per SM) batches 2-8 gained 7-9% over those GEMVs (docs/BENCHMARKS.md).
  int64_t gemm_kq_min_batch = 2;
  // gemm_kq's shape (kc::GemmKqTuning): at most this many tokens per CTA (32 or 64), and CTAs per
  // SM for 32-token tiles (1 or 2; two gained 7-10% at batches 9-32 on an H200).
  int gemm_kq_tile_tokens = 64;
  int gemm_kq_ctas_per_sm = 2;
  // gemm_kq's stream-K launches where its tiles make partial waves (kc::GemmKqTuning::stream_k).
  bool gemm_kq_stream_k = true;
  // Where gemm_kq follows an RMSNorm (q/k/v, gate/up), the norm also writes its 8-bit records
  // (one gemm_kq_acts launch fewer per norm); off: gemm_kq_acts makes them.
  bool norm_kq_records = true;
  // Likewise decode attention for attn_output, where a CTA's heads are one 256-value stage and
  // no cluster merges them (kc::decode_kq_records_supports).
  bool attention_kq_records = true;
  // Likewise SwiGLU for ffn_down: with llama.cpp's Q4_K_M half the layers' ffn_down are Q4_K
  // (gemm_kq) and half Q6_K, so its records are written beside the other copies.
  bool swiglu_kq_records = true;
  // cuBLASLt GEMMs of at most this many rows (decode batches) use the fastest of the
  // heuristic's first candidates for their shape, timed the first time it runs
  // (kernels/cuda/gemm_lt.h), instead of its first: on an H200 batch 64 gained 2%, while
  // prefill of 2048 tokens lost 1% (docs/BENCHMARKS.md). 0: never.
  int64_t gemm_autotune_max_rows = 128;
  // Batch-1 quantized GEMVs stream the weights through shared memory (gemv_stream, compute
  // capability >= 9.0) instead of loading them into registers (gemv_group). Off by default:
  // it is no faster on an H200 (docs/BENCHMARKS.md).
  bool gemv_stream = false;
  // Most key splits of decode attention (0: as many as fill the GPU, up to the kernel's cap).
  int decode_max_splits = 0;
  // Decode attention's key splits may merge inside a thread-block cluster (compute capability
  // >= 9.0); off: every split merges through global memory.
  bool decode_clusters = true;
  // Query heads per decode attention CTA (1, 2, 4 or 8, at most the KV head's group; 0: the
  // kernel's pick by grid size, DecodeAttentionParams::heads_per_cta).
  int decode_heads_per_cta = 0;
  // Decode batches of at least this many tokens run attention on tensor cores
  // (kernels/cuda/decode_attention_mma.h: a KV head's whole query group per CTA, groups of at
  // most 8 heads, head_dim 64 or 128, compute capability >= 8.0); smaller ones, 0 or other
  // shapes, the CUDA-core kernel. On an H200 (Llama-3-8B Q4_K_M, context 128) every batch
  // measured faster on tensor cores: batch 1 2.8%, 32 3%, 64 3.4% (docs/BENCHMARKS.md).
  int64_t decode_mma_min_batch = 1;
  // Warps per tensor-core decode attention CTA: 4, 2 (five CTAs per SM instead of three), 12
  // (one CTA per SM), or 0: twelve for grids of at most one CTA per eight SMs (batch 1 of
  // Llama-3-8B on an H200: attention 212 -> 152 us per step at context 128, 410 -> 303 at
  // 2048), two where four-warp CTAs would take more than one wave, four otherwise
  // (kc::decode_mma_warps).
  int decode_mma_warps = 0;
  // Narrow CTAs take three-tile rings where four of them per SM still hold the grid (batch 64
  // of Llama-3-8B on an H200: ~0.8% shorter steps, docs/BENCHMARKS.md).
  bool decode_mma_deep = true;
  // Batch 1: the RMSNorm in front of a large group (gate/up) runs inside its GEMV (each CTA
  // normalizes and quantizes the row itself) instead of as its own launch, for the groups
  // that gemv_norm_group_supports accepts. Off by default: with gate/up on three rows per warp
  // the TP1 step is ~1% shorter with the norm as its own launch (docs/BENCHMARKS.md,
  // thirteenth session; it had won in the eleventh).
  bool fuse_norm_gemv = false;
  // Tensor parallelism: the one-shot all-reduce of a row-parallel matmul's output runs inside
  // the residual add + RMSNorm after it (Backend::folds_reduce) for decode-sized messages, one
  // kernel instead of two.
  bool fold_all_reduce = true;
  // With fold_all_reduce, a batch-1 int8 GEMV whose output that norm reduces next (o, down)
  // sends each output to the peers itself as the all-reduce's LL word, so the norm only waits.
  bool gemv_push = true;
  // The matrices of a shared group (q/k/v, gate/up) that its grouped kernel does not take,
  // such as the Q6_K attn_v beside the Q4_K q and k of a Q4_K_M model, run on a second stream
  // beside that kernel (a parallel branch of the decode graph) instead of after it: on an H200
  // (8B, llama.cpp's Q4_K_M mix) batches 8-64 ran 0.6-1.4% faster (docs/BENCHMARKS.md).
  bool side_stream = true;
};

// Number of usable CUDA devices; 0 when there is no driver or no GPU (never throws).
int cuda_device_count();

// Throws tpnode::Error(kRuntime) when the device cannot be used.
std::unique_ptr<Backend> make_cuda_backend(const CudaBackendOptions& options);

// Figures a benchmark wants from the device.
struct CudaDeviceInfo {
  std::string name;
  int sm_count = 0;
  uint64_t total_bytes = 0;
  uint64_t budget_bytes = 0;
  uint64_t used_bytes = 0;
};
// `backend` must come from make_cuda_backend.
CudaDeviceInfo cuda_device_info(const Backend& backend);

// The backend's one stream (a cudaStream_t), for collectives that must be ordered with its
// ops (NCCL). `backend` must come from make_cuda_backend.
void* cuda_backend_stream(Backend& backend);

// Device-to-device copy bandwidth in bytes/s (read + write counted), measured on
// `bytes`-sized buffers: the HBM roofline of memory-bound kernels.
double cuda_measure_copy_bandwidth(Backend& backend, uint64_t bytes);
// Starts (on) or stops what a profiler run with "profile from start off" records
// (cudaProfilerStart / cudaProfilerStop): `ncu --profile-from-start off` then sees only the
// work in between.
void cuda_profiler_capture(bool on);
// Dense BF16 GEMM rate in FLOP/s (m = n = k = `dim`, through cuBLASLt, random data).
double cuda_measure_bf16_gemm_flops(Backend& backend, int64_t dim);

}  // namespace tpnode
