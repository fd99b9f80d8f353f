// Row-wise and element-wise activation kernels: RMSNorm, RoPE, SwiGLU, residual add,
// bias, row gather. RMSNorm and SwiGLU can also write their output quantized to 8 bits
// (QuantActs) so the next GEMV needs no separate quantization pass.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/cuda/gemv.h"
#include "node/model/hparams.h"

namespace tpnode::cuda {

struct RmsNormParams {
  const float* x = nullptr;  // [rows, n]
  const float* w = nullptr;  // [n]
  float* y = nullptr;        // [rows, n]
  int64_t rows = 0;
  int64_t n = 0;
  float eps = 1e-5f;
  QuantActs quant;           // optional (q == null: off); needs n % 32 == 0
  // Optional residual add first: x + r is what gets normalised, and is written to x_out
  // (null: nowhere; x itself: in place; or another buffer, which must not partly overlap x).
  const float* r = nullptr;  // [rows, n]
  float* x_out = nullptr;
  // Optional BF16 copy of y (n % 4 == 0): what a BF16 GEMM after the norm reads, written here
  // instead of by a conversion launch.
  __nv_bfloat16* y_bf16 = nullptr;  // [rows, n]
  // Optional gemm_kq records of y (gemm_kq_acts' bytes for m = rows, gemm_kq_acts_bytes(rows,
  // n); n % 256 == 0, n <= kRmsNormMaxKqCols): what gemm_kq after the norm reads.
  uint8_t* kq = nullptr;
};
inline constexpr int64_t kRmsNormMaxKqCols = 12288;  // three passes of 1024 threads (tested)
void rmsnorm(const RmsNormParams& p, cudaStream_t stream);

struct RopeKernelParams {
  float* q = nullptr;                // [n_tokens, n_head, head_dim]
  float* k = nullptr;                // [n_tokens, n_head_kv, head_dim]
  const int32_t* positions = nullptr;  // [n_tokens] device
  int64_t n_tokens = 0;
  int64_t n_head = 0;
  int64_t n_head_kv = 0;
  int64_t head_dim = 0;
  RopeStyle style = RopeStyle::kNeox;
  const float* inv_freq = nullptr;     // [head_dim / 2] device, scaling applied
};
void rope(const RopeKernelParams& p, cudaStream_t stream);

struct SwigluParams {
  const float* gate = nullptr;  // [n]
  const float* up = nullptr;    // [n]
  float* out = nullptr;         // [n]
  int64_t n = 0;
  // Optional 8-bit copy: quant.group 32 needs n % 32 == 0, 256 (one scale per 256 values, as
  // quantize_acts writes it) n % 256 == 0.
  QuantActs quant;
  __nv_bfloat16* out_bf16 = nullptr;  // optional BF16 copy of out (for a BF16 GEMM next)
  // Optional BF16 copy in gemm_dq_acts' layout (gemm_dq next) of out as [n / cols, cols]
  // (cols % 256 == 0), padding tokens zero.
  __nv_bfloat16* out_dq = nullptr;
  int64_t cols = 0;
  // Optional gemm_kq records of out as [n / cols, cols] (gemm_kq_acts' bytes; cols % 256 == 0),
  // so that a Q4_K matmul on gemm_kq next needs no gemm_kq_acts launch. With it the 8-bit copy
  // can only be in groups of 256.
  uint8_t* kq = nullptr;
};
void swiglu(const SwigluParams& p, cudaStream_t stream);

struct AddParams {
  const float* x = nullptr;  // [n]
  const float* y = nullptr;  // [n]
  float* out = nullptr;      // [n] x + y; may be x
  int64_t n = 0;
};
void add(const AddParams& p, cudaStream_t stream);

struct BiasParams {
  float* y = nullptr;        // [m, n] in place: y += b
  const float* b = nullptr;  // [n]
  int64_t m = 0;
  int64_t n = 0;
};
void add_bias(const BiasParams& p, cudaStream_t stream);

struct GatherActRowsParams {
  const float* x = nullptr;        // [*, row_len]
  const int32_t* rows = nullptr;   // [n] device
  int64_t n = 0;
  int64_t row_len = 0;
  float* out = nullptr;            // [n, row_len]
};
void gather_act_rows(const GatherActRowsParams& p, cudaStream_t stream);

}  // namespace tpnode::cuda
