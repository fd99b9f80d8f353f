// Device layout of weight matrices ("split layout"). GGUF blocks interleave half-precision
// scales with quants, so Q8_0 (34 B), Q4_0 (18 B) and Q6_K (210 B) blocks are only 2-byte
// aligned. At upload every row is split into a quant region whose blocks are 4- or 16-byte
// aligned, and a scale region holding the per-block halves; the byte count is unchanged.
//
//   type   q bytes/block                       s bytes/block
//   Q4_0   qs[16]                              d
//   Q4_1   qs[16]                              d, m
//   Q5_0   qh[4] qs[16]                        d
//   Q5_1   qh[4] qs[16]                        d, m
//   Q8_0   qs[32]                              d
//   Q4_K   the whole 144-byte block            -
//   Q5_K   the whole 176-byte block            -
//   Q6_K   ql[128] qh[64] scales[16]           d
//   F32/F16/BF16: plain rows, no scale region.
//
// A matrix is [rows][q row bytes] followed (at a 256-byte boundary) by [rows][s row bytes].
#pragma once

#include <cstddef>
#include <cstdint>

#include "node/model/tensor_type.h"

namespace tpnode::cuda {

struct SplitLayout {
  int64_t block_size = 1;  // elements per block
  int q_bytes = 0;         // quant bytes per block (element bytes for plain types)
  int s_bytes = 0;         // scale bytes per block
};

// Throws tpnode::Error(kUnsupported) for a type without a device layout.
SplitLayout split_layout(TensorType type);
inline bool is_quantized(TensorType type) { return split_layout(type).block_size > 1; }
// The type's name for messages (kernels do not depend on the model library).
const char* weight_type_label(TensorType type);

// Bytes of a [rows, cols] matrix in split layout, scale region included.
size_t split_matrix_bytes(TensorType type, int64_t rows, int64_t cols);
// Offset of the scale region from the start of the matrix.
size_t split_scale_offset(TensorType type, int64_t rows, int64_t cols);

// Converts `rows` GGUF rows (src_stride bytes apart) into split layout at dst
// (split_matrix_bytes bytes, host memory).
void repack_to_split(TensorType type, const uint8_t* src, size_t src_stride, int64_t rows,
                     int64_t cols, uint8_t* dst);

// A weight matrix in split layout on the device: y = x · Wᵀ, W [rows, cols].
struct DeviceMatrix {
  TensorType type = TensorType::kF32;
  int64_t rows = 0;
  int64_t cols = 0;
  const uint8_t* q = nullptr;  // [rows][q_row_bytes]
  const uint8_t* s = nullptr;  // [rows][s_row_bytes]; null for plain types
  size_t q_row_bytes = 0;
  size_t s_row_bytes = 0;
};

DeviceMatrix device_matrix(TensorType type, int64_t rows, int64_t cols, const void* data);

}  // namespace tpnode::cuda
