#include "node/backend/cpu/cpu_backend.h"

#include <cstring>
#include <limits>

#include "kernels/cpu/activation.h"
#include "kernels/cpu/elementwise.h"
#include "kernels/cpu/matmul.h"
#include "kernels/cpu/norm.h"
#include "kernels/cpu/rope.h"
#include "node/backend/cpu/synth_weight.h"
#include "node/common/error.h"

namespace tpnode {
namespace {

// a * b * ... in size_t, throwing instead of wrapping.
size_t checked_bytes(std::initializer_list<int64_t> dims, size_t elem, const char* what) {
  size_t total = elem;
  for (int64_t d : dims) {
    TPNODE_CHECK(d >= 0, "{}: negative dimension {}", what, d);
    TPNODE_CHECK_KIND(!__builtin_mul_overflow(total, static_cast<size_t>(d), &total),
                      ErrorKind::kOutOfMemory, "{}: size overflows", what);
  }
  return total;
}

size_t kv_elem_bytes(TensorType type) {
  switch (type) {
    case TensorType::kF32:
      return 4;
    case TensorType::kF16:
      return 2;
    default:
      TPNODE_THROW(ErrorKind::kUnsupported, "cpu backend: KV type {} unsupported (F32 or F16)",
                   type_name(type));
  }
}

}  // namespace

CpuBackend::CpuBackend(const CpuBackendOptions& options)
    : options_(options), pool_(options.n_threads) {
  kv_elem_bytes(options_.kv_type);  // reject a bad KV type at construction
}

CpuBackend::~CpuBackend() = default;

void* CpuBackend::alloc(size_t bytes) {
  allocations_.emplace_back(bytes);
  return allocations_.back().data();
}

void CpuBackend::copy_to_device(void* dst, const void* src, size_t bytes) {
  if (bytes != 0) std::memcpy(dst, src, bytes);
}

void CpuBackend::copy_to_host(void* dst, const void* src, size_t bytes) {
  if (bytes != 0) std::memcpy(dst, src, bytes);
}

Weight CpuBackend::upload_weight(const HostMatrix& m) {
  const size_t stride = row_bytes(m.type, m.cols);
  TPNODE_CHECK(m.rows >= 0 && (m.rows == 0 || m.data != nullptr),
               "upload_weight: {} rows from a null pointer", m.rows);
  TPNODE_CHECK(m.rows <= 1 || m.row_stride >= stride,
               "upload_weight: source row stride {} is shorter than a row ({} bytes)", m.row_stride,
               stride);
  auto* dst = static_cast<uint8_t*>(alloc(checked_bytes({m.rows}, stride, "upload_weight")));
  pool_.parallel_for(
      m.rows,
      [&](int64_t begin, int64_t end) {
        for (int64_t r = begin; r < end; ++r) {
          std::memcpy(dst + static_cast<size_t>(r) * stride,
                      m.data + static_cast<size_t>(r) * m.row_stride, stride);
        }
      },
      /*grain=*/64);
  return Weight{.type = m.type, .rows = m.rows, .cols = m.cols, .row_stride = stride, .data = dst};
}

float* CpuBackend::upload_vector(TensorType type, const void* data, int64_t n) {
  TPNODE_CHECK(n >= 0 && (n == 0 || data != nullptr), "upload_vector: {} elements from null", n);
  auto* dst = static_cast<float*>(alloc(checked_bytes({n}, sizeof(float), "upload_vector")));
  switch (type) {
    case TensorType::kF32:
      copy_to_device(dst, data, static_cast<size_t>(n) * sizeof(float));
      break;
    case TensorType::kF16:
      cpu::fp16_to_f32_row(static_cast<const uint16_t*>(data), dst, n);
      break;
    case TensorType::kBF16:
      cpu::bf16_to_f32_row(static_cast<const uint16_t*>(data), dst, n);
      break;
    default:
      TPNODE_THROW(ErrorKind::kUnsupported, "upload_vector: type {} unsupported (F32/F16/BF16)",
                   type_name(type));
  }
  return dst;
}

Weight CpuBackend::synth_weight(TensorType type, int64_t rows, int64_t cols, uint64_t seed) {
  TPNODE_CHECK(rows >= 0 && cols > 0, "synth_weight: bad shape [{}, {}]", rows, cols);
  const size_t stride = row_bytes(type, cols);
  void* dst = alloc(checked_bytes({rows}, stride, "synth_weight"));
  synth_fill(SynthSpec{.type = type, .rows = rows, .cols = cols, .seed = seed}, dst, pool_);
  return Weight{.type = type, .rows = rows, .cols = cols, .row_stride = stride, .data = dst};
}

float* CpuBackend::synth_vector(int64_t n, float value) {
  auto* dst = static_cast<float*>(alloc(checked_bytes({n}, sizeof(float), "synth_vector")));
  std::fill(dst, dst + n, value);
  return dst;
}

void CpuBackend::init_kv_cache(const KvCacheShape& s) {
  TPNODE_CHECK(
      s.n_layer > 0 && s.n_blocks > 0 && s.block_size > 0 && s.n_head_kv > 0 && s.head_dim > 0,
      "init_kv_cache: bad shape layers={} blocks={} block_size={} kv_heads={} "
      "head_dim={}",
      s.n_layer, s.n_blocks, s.block_size, s.n_head_kv, s.head_dim);
  TPNODE_CHECK(s.n_blocks <= std::numeric_limits<int32_t>::max(),
               "init_kv_cache: {} blocks do not fit 32-bit block ids", s.n_blocks);
  const size_t bytes = checked_bytes({s.n_layer, s.n_blocks, s.block_size, s.n_head_kv, s.head_dim},
                                     kv_elem_bytes(options_.kv_type), "init_kv_cache");
  kv_k_ = AlignedBuffer();  // release the old cache before taking the new one
  kv_v_ = AlignedBuffer();
  kv_shape_ = KvCacheShape{};
  kv_k_ = AlignedBuffer(bytes);
  kv_v_ = AlignedBuffer(bytes);
  // Zeroed so that a slot read before it is written gives zeros, never stale NaNs.
  std::memset(kv_k_.data(), 0, bytes);
  std::memset(kv_v_.data(), 0, bytes);
  kv_shape_ = s;
  blocks_checked_ = false;
}

void CpuBackend::begin_step(const BatchMeta& batch) {
  batch_ = BatchMeta{};  // a rejected batch leaves nothing for the ops to run on
  blocks_checked_ = false;
  const bool have_kv = kv_k_.data() != nullptr;
  checker_.check(batch, have_kv ? &kv_shape_ : nullptr);
  batch_ = batch;
  blocks_checked_ = have_kv;
}

void CpuBackend::embed(const Weight& table, float* x) {
  const int64_t n_tokens = batch_.n_tokens();
  TPNODE_CHECK(table.data != nullptr && table.cols > 0, "embed: empty table");
  for (int64_t t = 0; t < n_tokens; ++t) {
    TPNODE_CHECK(batch_.tokens[t] >= 0 && batch_.tokens[t] < table.rows,
                 "embed: token {} has id {} outside the vocabulary [0, {})", t, batch_.tokens[t],
                 table.rows);
  }
  const auto* base = static_cast<const uint8_t*>(table.data);
  pool_.parallel_for(n_tokens, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const uint8_t* row = base + static_cast<size_t>(batch_.tokens[t]) * table.row_stride;
      dequantize_row(table.type, row, x + t * table.cols, table.cols);
    }
  });
}

void CpuBackend::rmsnorm(const float* x, const float* w, float* y, int64_t rows, int64_t n,
                         float eps) {
  TPNODE_CHECK(rows >= 0 && n > 0, "rmsnorm: bad shape [{}, {}]", rows, n);
  cpu::rmsnorm(cpu::RmsNormArgs{.x = x, .w = w, .y = y, .rows = rows, .n = n, .eps = eps}, pool_);
}

void CpuBackend::matmul(const Weight& w, const float* x, float* y, int64_t m) {
  TPNODE_CHECK(m >= 0 && w.data != nullptr && w.rows > 0 && w.cols > 0,
               "matmul: bad weight [{}, {}] or m = {}", w.rows, w.cols, m);
  if (m == 0) return;
  cpu::matmul(cpu::MatmulArgs{.w_type = w.type,
                              .w = w.data,
                              .w_row_stride = w.row_stride,
                              .n = w.rows,
                              .k = w.cols,
                              .x = x,
                              .m = m,
                              .y = y,
                              .exact = options_.exact_matmul},
              pool_);
}

void CpuBackend::add_bias(float* y, const float* b, int64_t m, int64_t n) {
  TPNODE_CHECK(m >= 0 && n >= 0, "add_bias: bad shape [{}, {}]", m, n);
  cpu::add_bias(y, b, m, n, pool_);
}

void CpuBackend::rope(float* q, float* k, const RopeParams& p) {
  TPNODE_CHECK(p.head_dim > 0 && p.head_dim % 2 == 0, "rope: head_dim {} must be even", p.head_dim);
  TPNODE_CHECK(p.n_head >= 0 && p.n_head_kv >= 0, "rope: bad head counts {} / {}", p.n_head,
               p.n_head_kv);
  TPNODE_CHECK(p.theta > 0.0f, "rope: theta {} must be positive", p.theta);
  const int64_t n_tokens = batch_.n_tokens();
  if (n_tokens == 0) return;
  const std::vector<float> inv_freq = cpu::rope_inv_freq(p.head_dim, p.theta, p.scaling);
  const cpu::RopeTable table = cpu::rope_table(batch_.positions.data(), n_tokens, inv_freq);
  const cpu::RopeRotateArgs base{
      .n_tokens = n_tokens, .head_dim = p.head_dim, .style = p.style, .table = &table};
  if (p.n_head > 0) {
    cpu::RopeRotateArgs a = base;
    a.x = q;
    a.n_heads = p.n_head;
    cpu::rope_rotate(a, pool_);
  }
  if (p.n_head_kv > 0) {
    cpu::RopeRotateArgs a = base;
    a.x = k;
    a.n_heads = p.n_head_kv;
    cpu::rope_rotate(a, pool_);
  }
}

cpu::KvLayerView CpuBackend::kv_layer(int64_t layer) {
  const KvCacheShape& s = kv_shape_;
  const size_t layer_bytes = kv_k_.size() / static_cast<size_t>(s.n_layer);
  const size_t off = static_cast<size_t>(layer) * layer_bytes;
  return cpu::KvLayerView{.k = static_cast<uint8_t*>(kv_k_.data()) + off,
                          .v = static_cast<uint8_t*>(kv_v_.data()) + off,
                          .type = options_.kv_type,
                          .n_blocks = s.n_blocks,
                          .block_size = s.block_size,
                          .n_head_kv = s.n_head_kv,
                          .head_dim = s.head_dim};
}

void CpuBackend::attention(const float* q, const float* k, const float* v, float* out,
                           const AttentionParams& p) {
  TPNODE_CHECK(kv_k_.data() != nullptr, "attention: init_kv_cache was not called");
  TPNODE_CHECK(p.layer >= 0 && p.layer < kv_shape_.n_layer, "attention: layer {} outside [0, {})",
               p.layer, kv_shape_.n_layer);
  TPNODE_CHECK(p.n_head_kv == kv_shape_.n_head_kv && p.head_dim == kv_shape_.head_dim,
               "attention: {} KV heads of {} do not match the cache's {} of {}", p.n_head_kv,
               p.head_dim, kv_shape_.n_head_kv, kv_shape_.head_dim);
  if (!blocks_checked_) {
    checker_.check(batch_, &kv_shape_);
    blocks_checked_ = true;
  }
  if (p.rope != nullptr) {
    TPNODE_CHECK(p.rope->n_head == p.n_head && p.rope->n_head_kv == p.n_head_kv &&
                     p.rope->head_dim == p.head_dim,
                 "attention: RoPE over {} heads / {} KV heads of dim {} for attention over {} / "
                 "{} of dim {}",
                 p.rope->n_head, p.rope->n_head_kv, p.rope->head_dim, p.n_head, p.n_head_kv,
                 p.head_dim);
    // q and k are the caller's writable buffers (AttentionParams::rope): rotated in place.
    rope(const_cast<float*>(q), const_cast<float*>(k), *p.rope);
  }
  const cpu::PagedAttentionArgs args{
      .q = q,
      .k = k,
      .v = v,
      .out = out,
      .n_head = p.n_head,
      .scale = p.scale,
      .cache = kv_layer(p.layer),
      .batch = cpu::PagedBatchView{.n_tokens = batch_.n_tokens(),
                                   .positions = batch_.positions.data(),
                                   .token_seq = batch_.token_seq.data(),
                                   .block_tables = batch_.block_tables.data(),
                                   .n_seqs = batch_.n_seqs(),
                                   .max_blocks = batch_.max_blocks}};
  cpu::paged_attention_step(args, pool_);
}

void CpuBackend::swiglu(const float* gate, const float* up, float* out, int64_t n) {
  TPNODE_CHECK(n >= 0, "swiglu: negative size {}", n);
  cpu::swiglu(gate, up, out, n, pool_);
}

void CpuBackend::add(const float* x, const float* y, float* out, int64_t n) {
  TPNODE_CHECK(n >= 0, "add: negative size {}", n);
  cpu::add(x, y, out, n, pool_);
}

void CpuBackend::gather_rows(const float* x, float* out, int64_t row_len) {
  TPNODE_CHECK(row_len >= 0, "gather_rows: negative row length {}", row_len);
  cpu::gather_rows(x, batch_.logit_rows.data(), static_cast<int64_t>(batch_.logit_rows.size()),
                   row_len, out);
}

std::unique_ptr<Backend> make_cpu_backend(const CpuBackendOptions& options) {
  return std::make_unique<CpuBackend>(options);
}

}  // namespace tpnode
