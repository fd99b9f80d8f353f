#include "kernels/cuda/quant_layout.h"

#include <cstring>

#include "node/common/error.h"

namespace tpnode::cuda {
namespace {

constexpr size_t kScaleAlign = 256;

size_t align_up(size_t x, size_t a) { return (x + a - 1) / a * a; }

// Byte ranges of a GGUF block that go to the quant region, in order; the rest (the halves
// at the block start, or Q6_K's trailing d) go to the scale region.
struct BlockSplit {
  int gguf_bytes;
  int scale_head;  // scale bytes at the block start
  int scale_tail;  // scale bytes at the block end
};

BlockSplit block_split(TensorType type) {
  switch (type) {
    case TensorType::kQ4_0: return {18, 2, 0};
    case TensorType::kQ4_1: return {20, 4, 0};
    case TensorType::kQ5_0: return {22, 2, 0};
    case TensorType::kQ5_1: return {24, 4, 0};
    case TensorType::kQ8_0: return {34, 2, 0};
    case TensorType::kQ4_K: return {144, 0, 0};
    case TensorType::kQ5_K: return {176, 0, 0};
    case TensorType::kQ6_K: return {210, 0, 2};
    default: TPNODE_THROW(ErrorKind::kUnsupported, "no device layout for type {}", weight_type_label(type));
  }
}

}  // namespace

const char* weight_type_label(TensorType type) {
  switch (type) {
    case TensorType::kF32: return "F32";
    case TensorType::kF16: return "F16";
    case TensorType::kBF16: return "BF16";
    case TensorType::kQ4_0: return "Q4_0";
    case TensorType::kQ4_1: return "Q4_1";
    case TensorType::kQ5_0: return "Q5_0";
    case TensorType::kQ5_1: return "Q5_1";
    case TensorType::kQ8_0: return "Q8_0";
    case TensorType::kQ8_1: return "Q8_1";
    case TensorType::kQ4_K: return "Q4_K";
    case TensorType::kQ5_K: return "Q5_K";
    case TensorType::kQ6_K: return "Q6_K";
    case TensorType::kQ8_K: return "Q8_K";
  }
  return "unknown";
}

SplitLayout split_layout(TensorType type) {
  switch (type) {
    case TensorType::kF32: return {1, 4, 0};
    case TensorType::kF16: return {1, 2, 0};
    case TensorType::kBF16: return {1, 2, 0};
    case TensorType::kQ4_0: return {32, 16, 2};
    case TensorType::kQ4_1: return {32, 16, 4};
    case TensorType::kQ5_0: return {32, 20, 2};
    case TensorType::kQ5_1: return {32, 20, 4};
    case TensorType::kQ8_0: return {32, 32, 2};
    case TensorType::kQ4_K: return {256, 144, 0};
    case TensorType::kQ5_K: return {256, 176, 0};
    case TensorType::kQ6_K: return {256, 208, 2};
    default:
      TPNODE_THROW(ErrorKind::kUnsupported, "the CUDA backend has no kernels for type {}",
                   weight_type_label(type));
  }
}

size_t split_scale_offset(TensorType type, int64_t rows, int64_t cols) {
  const SplitLayout l = split_layout(type);
  TPNODE_CHECK(cols % l.block_size == 0, "{} matrix with {} columns: not a multiple of {}",
               weight_type_label(type), cols, l.block_size);
  return align_up(static_cast<size_t>(rows) * (cols / l.block_size) * l.q_bytes, kScaleAlign);
}

size_t split_matrix_bytes(TensorType type, int64_t rows, int64_t cols) {
  const SplitLayout l = split_layout(type);
  return split_scale_offset(type, rows, cols) +
         static_cast<size_t>(rows) * (cols / l.block_size) * l.s_bytes;
}

void repack_to_split(TensorType type, const uint8_t* src, size_t src_stride, int64_t rows,
                     int64_t cols, uint8_t* dst) {
  const SplitLayout l = split_layout(type);
  const int64_t nb = cols / l.block_size;
  const size_t q_row = static_cast<size_t>(nb) * l.q_bytes;
  if (l.s_bytes == 0 && l.block_size == 1) {  // plain floats: rows as they are
    for (int64_t r = 0; r < rows; ++r) std::memcpy(dst + r * q_row, src + r * src_stride, q_row);
    return;
  }
  const BlockSplit bs = block_split(type);
  const size_t s_row = static_cast<size_t>(nb) * l.s_bytes;
  uint8_t* sdst = dst + split_scale_offset(type, rows, cols);
  for (int64_t r = 0; r < rows; ++r) {
    const uint8_t* row = src + r * src_stride;
    uint8_t* q = dst + r * q_row;
    uint8_t* s = sdst + r * s_row;
    for (int64_t b = 0; b < nb; ++b) {
      const uint8_t* blk = row + b * bs.gguf_bytes;
      std::memcpy(s + b * l.s_bytes, blk, bs.scale_head);
      std::memcpy(q + b * l.q_bytes, blk + bs.scale_head, l.q_bytes);
      std::memcpy(s + b * l.s_bytes + bs.scale_head, blk + bs.scale_head + l.q_bytes,
                  bs.scale_tail);
    }
  }
}

DeviceMatrix device_matrix(TensorType type, int64_t rows, int64_t cols, const void* data) {
  const SplitLayout l = split_layout(type);
  const int64_t nb = cols / l.block_size;
  DeviceMatrix m;
  m.type = type;
  m.rows = rows;
  m.cols = cols;
  m.q = static_cast<const uint8_t*>(data);
  m.q_row_bytes = static_cast<size_t>(nb) * l.q_bytes;
  m.s_row_bytes = static_cast<size_t>(nb) * l.s_bytes;
  m.s = l.s_bytes ? m.q + split_scale_offset(type, rows, cols) : nullptr;
  return m;
}

}  // namespace tpnode::cuda
