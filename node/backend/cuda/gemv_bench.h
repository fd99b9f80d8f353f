// Kernel-level timing of the batch-1 decode GEMVs against pure-read probes over the same
// bytes (kernels/cuda/read_probe.h): what the GEMV's access pattern alone costs (read_rows),
// the same loads over a k-major tiled layout (read_rows_interleaved), and a copy-like sweep
// (read_sweep). Every kernel rotates over copies of its data totalling >= rotate_bytes, so
// that L2 (60 MB on an H200) holds none of it between launches. Needs no CUDA headers.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "node/engine/backend.h"
#include "node/model/tensor_type.h"

namespace tpnode {

// Matrices of one type and width sharing x, as one gemv_group (quantized) or
// gemv_float_group (F32/F16/BF16) launch takes them.
struct GemvBenchShape {
  std::string name;
  TensorType type = TensorType::kQ4_K;
  std::vector<int64_t> rows;  // per matrix, 1 to 3 of them
  int64_t cols = 0;
  std::vector<int64_t> batches = {1};  // float types: each m (1..kFloatGemvBestBatch) timed
};
// The decode GEMVs of Llama-3-8B Q4_K_M: gate+up, ffn_down, q/k/v, attn_output.
std::vector<GemvBenchShape> llama3_8b_decode_shapes();
// The same on one of two tensor-parallel ranks, with the output layer's vocabulary slice.
std::vector<GemvBenchShape> llama3_8b_tp2_decode_shapes();
// The decode GEMVs of Llama-3-70B BF16 on one of two tensor-parallel ranks (q/k/v,
// attn_output, gate+up, ffn_down, the output layer's vocabulary slice), at m = 1 and 2.
std::vector<GemvBenchShape> llama3_70b_tp2_bf16_shapes();
// Llama-3-8B BF16 on one GPU (q/k/v, attn_output, gate+up, ffn_down), at m = 1 and 2.
std::vector<GemvBenchShape> llama3_8b_bf16_shapes();

struct GemvBenchOptions {
  std::vector<GemvBenchShape> shapes = llama3_8b_decode_shapes();
  int launches = 60;                        // timed back-to-back launches per kernel
  uint64_t rotate_bytes = uint64_t{256} << 20;
  std::vector<int> probe_items = {1, 2, 4, 8};  // read_rows loads in flight per lane, each timed
  uint64_t copy_probe_bytes = uint64_t{1} << 30;  // buffer of the copy roofline
};

struct GemvBenchRow {
  std::string shape;   // e.g. "gate+up Q4_K 2x14336x4096"
  std::string kernel;  // e.g. "gemv_group", "gemv_float_group m=2", "read_rows U=4"
  std::string detail;  // geometry: CTAs, rows per CTA, ...
  uint64_t bytes = 0;  // read per launch
  double us = 0;       // per launch
  double bytes_per_s = 0;
};

struct GemvBenchReport {
  std::string device;
  double copy_bytes_per_s = 0;   // device copy, read + write counted
  double sweep_bytes_per_s = 0;  // read_sweep in one launch over rotate_bytes: no ramp or tail
  std::vector<GemvBenchRow> rows;
};

// Status lines (synthesising weights, timing ...) for a progress display.
using GemvBenchProgress = std::function<void(const std::string&)>;

// `backend` must come from make_cuda_backend. Allocates about rotate_bytes of weights per
// shape plus one probe buffer of about rotate_bytes from the backend's budget, and never
// frees them: run it in a process of its own. `progress` may be empty.
GemvBenchReport run_gemv_bench(Backend& backend, const GemvBenchOptions& options,
                               const GemvBenchProgress& progress);

}  // namespace tpnode
