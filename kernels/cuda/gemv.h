// Decode matrix-vector products y[m, rows] = x[m, cols] · Wᵀ for small batches (m <= 16):
// every weight byte is read once for all m columns. Quantized W uses 8-bit activations
// (quantize_acts) and dp4a; F32/F16/BF16 W uses F32 activations.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <string>
#include <vector>

#include "kernels/cuda/gemv_mma.h"  // gemv_mma: the quantized path for m >= 2
#include "kernels/cuda/quant_layout.h"

namespace tpnode::cuda {

inline constexpr int64_t kGemvMaxBatch = 16;
// Float W: the GEMV beats a cuBLASLt GEMM only for the smallest batches (it re-reads x from
// L1 once per column and weight item).
inline constexpr int64_t kFloatGemvBestBatch = 2;

// x[m, k] in 8 bits: q [m, k], per 32-value chunk the scale d and s = d * sum(q). With
// group = 256 every chunk of a 256-value group shares the group's d (amax over the group), so
// that K-quant products can add a block's integer dot products before one conversion
// (gemv_mma); the layout is the same, so every reader of group 32 reads group 256 as well.
struct QuantActs {
  int8_t* q = nullptr;
  float* d = nullptr;
  float* s = nullptr;
  int group = 32;  // 32 or 256
};

struct QuantizeActsParams {
  const float* x = nullptr;  // [m, k]
  int64_t m = 0;
  int64_t k = 0;             // a multiple of out.group
  QuantActs out;
};
void quantize_acts(const QuantizeActsParams& p, cudaStream_t stream);

struct GemvParams {
  DeviceMatrix w;            // [rows, cols]
  const float* x = nullptr;  // [m, cols], for float W
  QuantActs xq;              // for quantized W
  float* y = nullptr;        // [m, rows]
  int64_t m = 0;             // 1..kGemvMaxBatch (float W), 1..kGemvMmaMaxBatch (quantized W)
};
void gemv(const GemvParams& p, cudaStream_t stream);

// m = 1 against several quantized matrices of one type and width that share x (q/k/v,
// gate/up): one launch, outs[i].y[outs[i].w.rows] = x · W_iᵀ.
inline constexpr int kMaxGemvGroup = 3;
struct GemvOut {
  DeviceMatrix w;
  float* y = nullptr;
};
// A batch-1 GEMV's outputs also sent to the peer ranks as LL words of the one-shot all-reduce
// folded into the norm after it (allreduce.h), so that the norm only waits for them: output
// row e goes to dst[q] + e in half 0, dst[q] + half_stride + e in half 1, with the epoch of
// the norm's next call, *epoch + 1 (read before pdl_wait: the norm's previous call is complete
// by then, and its next one starts only after this launch).
inline constexpr int kGemvMaxPeers = 7;
struct GemvLlPush {
  uint2* dst[kGemvMaxPeers] = {};
  int peers = 0;  // 0: no push
  int64_t half_stride = 0;
  const uint32_t* epoch = nullptr;
};
struct GemvGroupParams {
  GemvOut outs[kMaxGemvGroup];
  int n = 0;
  int64_t cols = 0;
  int64_t total_rows = 0;  // sum of outs[i].w.rows
  QuantActs xq;            // x quantized, [cols]
  GemvLlPush push;         // one matrix (n == 1) only
};
void gemv_group(const GemvGroupParams& p, cudaStream_t stream);

// How the batch-1 quantized GEMV lays rows over a CTA's four warps. gemv_group picks one per
// shape (gemv_group_geometry); the others are compiled for Q4_K and Q6_K so that bench-gemv
// can time them against the pick.
struct GemvGeometry {
  int rows_per_warp = 1;    // rows a warp (or a CTA's warps together) accumulates at once
  int warps_per_row = 1;    // 1, or 4: a CTA's warps share its rows (long rows)
  int items_per_lane = 2;   // work items a lane loads before computing any
  int min_ctas_per_sm = 0;  // > 0 caps registers through __launch_bounds__
  bool pipelined = false;   // a resident grid; each warp loads its next step before computing
};
inline bool operator==(const GemvGeometry& a, const GemvGeometry& b) {
  return a.rows_per_warp == b.rows_per_warp && a.warps_per_row == b.warps_per_row &&
         a.items_per_lane == b.items_per_lane && a.min_ctas_per_sm == b.min_ctas_per_sm &&
         a.pipelined == b.pipelined;
}
inline bool operator!=(const GemvGeometry& a, const GemvGeometry& b) { return !(a == b); }
// "R=2 W=1 U=2", then " min 8 CTAs/SM" and " pipelined" where they apply.
std::string gemv_geometry_label(const GemvGeometry& g);
GemvGeometry gemv_group_geometry(const GemvGroupParams& p);
// Every geometry compiled for `type` (the pick's three for most types).
std::vector<GemvGeometry> gemv_group_geometries(TensorType type);
// Throws when `g` is not compiled for the group's type.
void gemv_group(const GemvGroupParams& p, const GemvGeometry& g, cudaStream_t stream);
// The group over mats[0..n) (one quantized type and width, n <= kMaxGemvGroup) whose outputs
// follow each other from y: the rows of mats[0] first.
GemvGroupParams stacked_gemv_group(const DeviceMatrix* mats, int n, float* y, QuantActs xq);

// The RMSNorm folded into the batch-1 group GEMV: outs[i].y = W_i · (rmsnorm(x [+ r]) * w).
// Every CTA normalizes and quantizes the whole row into its shared memory before its dot
// products (p.xq is unused); with r, x + r is written to x_out, a slice by each of the first
// CTAs. The unfused equivalent is rmsnorm (with its 8-bit copy) and then gemv_group.
struct GemvNorm {
  const float* x = nullptr;   // [cols] F32
  const float* r = nullptr;   // [cols] residual to add first, or null
  float* x_out = nullptr;     // [cols] x + r, with r; not x (the other CTAs still read x)
  const float* w = nullptr;   // [cols] norm weights
  float eps = 1e-5f;
};
inline constexpr int64_t kNormColsMultiple = 512;  // whole passes of a CTA over the row
inline constexpr int64_t kNormMaxCols = 16384;     // the 8-bit copy fits shared memory
// Q4_K or Q6_K groups of at least 8192 rows (e.g. gate/up), whose picked geometries
// (gemv_group_geometry) are compiled with the norm, cols a multiple of kNormColsMultiple up to
// kNormMaxCols.
bool gemv_norm_group_supports(const GemvGroupParams& p);
void gemv_norm_group(const GemvGroupParams& p, const GemvNorm& norm, cudaStream_t stream);

// Whether gemv() handles this matrix (float W needs cols % 8 == 0).
bool gemv_supports(const DeviceMatrix& w);

}  // namespace tpnode::cuda
