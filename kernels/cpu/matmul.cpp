#include "kernels/cpu/matmul.h"

#include <vector>

#include "kernels/cpu/dequantize.h"
#include "kernels/cpu/matmul_path.h"
#include "kernels/cpu/quants.h"
#include "kernels/cpu/vec_dot.h"
#include "node/common/error.h"

namespace tpnode::cpu {
namespace {

// W rows per chunk at least: keeps a chunk's weight bytes large against the wake-up cost.
constexpr int64_t kRowGrain = 16;
// x rows quantized per parallel chunk when there are many.
constexpr int64_t kQuantGrain = 16;

bool detect_avx2() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
         __builtin_cpu_supports("f16c");
#else
  return false;
#endif
}

bool detect_avx512_vnni() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  return detect_avx2() && __builtin_cpu_supports("avx512vl") &&
         __builtin_cpu_supports("avx512vnni");
#else
  return false;
#endif
}

GemmRowsFn pick_kernel(TensorType type, MatmulPath path) {
  GemmRowsFn fn = nullptr;
  switch (path) {
    case MatmulPath::kScalar: break;
    case MatmulPath::kAvx2:
      TPNODE_CHECK_KIND(cpu_has_avx2(), ErrorKind::kUnsupported,
                        "matmul: AVX2 path requested but the CPU lacks AVX2/FMA/F16C");
      fn = avx2_gemm_rows(type);
      break;
    case MatmulPath::kAvx512Vnni:
      TPNODE_CHECK_KIND(cpu_has_avx512_vnni(), ErrorKind::kUnsupported,
                        "matmul: AVX512-VNNI path requested but the CPU lacks it");
      fn = vnni_gemm_rows(type);
      break;
    case MatmulPath::kAuto:
      if (cpu_has_avx512_vnni()) {
        fn = vnni_gemm_rows(type);
      } else if (cpu_has_avx2()) {
        fn = avx2_gemm_rows(type);
      }
      break;
  }
  return fn != nullptr ? fn : scalar_gemm_rows(type);
}

// Scratch for the quantized x rows: a per-calling-thread buffer that only grows, so decode
// steps allocate nothing. A matmul nested inside another's use of it (a pool chunk calling
// matmul on this thread) gets a buffer of its own.
class ActScratch {
 public:
  ActScratch() : owner_(!busy_) { busy_ = true; }
  ~ActScratch() {
    if (owner_) busy_ = false;
  }
  ActScratch(const ActScratch&) = delete;
  ActScratch& operator=(const ActScratch&) = delete;

  uint8_t* get(size_t bytes) {
    std::vector<uint8_t>& buf = owner_ ? shared_ : own_;
    if (buf.size() < bytes) buf.resize(bytes);
    return buf.data();
  }

 private:
  static thread_local std::vector<uint8_t> shared_;
  static thread_local bool busy_;
  std::vector<uint8_t> own_;
  bool owner_;
};

thread_local std::vector<uint8_t> ActScratch::shared_;
thread_local bool ActScratch::busy_ = false;

void validate(const MatmulArgs& a) {
  const BlockGeometry g = block_geometry(a.w_type);
  TPNODE_CHECK_KIND(g.block_size != 0, ErrorKind::kUnsupported,
                    "matmul: no CPU kernel for weight type {}", static_cast<uint32_t>(a.w_type));
  TPNODE_CHECK(a.m >= 0 && a.n >= 0 && a.k >= 0, "matmul: negative shape m={} n={} k={}", a.m,
               a.n, a.k);
  TPNODE_CHECK(a.k % g.block_size == 0,
               "matmul: k={} is not a multiple of the block size {} of weight type {}", a.k,
               g.block_size, static_cast<uint32_t>(a.w_type));
  const size_t row = static_cast<size_t>(a.k / g.block_size) * g.block_bytes;
  TPNODE_CHECK(a.w_row_stride >= row, "matmul: W row stride {} is below the row size {}",
               a.w_row_stride, row);
  TPNODE_CHECK(a.m * a.n == 0 || (a.w != nullptr && a.x != nullptr && a.y != nullptr),
               "matmul: null buffer (m={} n={} k={})", a.m, a.n, a.k);
}

}  // namespace

bool cpu_has_avx2() {
  static const bool has = detect_avx2();
  return has;
}

bool cpu_has_avx512_vnni() {
  static const bool has = detect_avx512_vnni();
  return has;
}

const char* cpu_matmul_isa() {
  if (cpu_has_avx512_vnni()) return "avx512vnni";
  return cpu_has_avx2() ? "avx2" : "scalar";
}

void matmul(const MatmulArgs& args, ThreadPool& pool) { matmul(args, pool, MatmulPath::kAuto); }

namespace {

void matmul_exact(const MatmulArgs& a, ThreadPool& pool) {
  const size_t k = static_cast<size_t>(a.k);
  pool.parallel_for(
      a.n,
      [&](int64_t r0, int64_t r1) {
        std::vector<float> w(k);
        for (int64_t r = r0; r < r1; ++r) {
          cpu::dequantize_row(a.w_type, static_cast<const uint8_t*>(a.w) + r * a.w_row_stride,
                         w.data(), a.k);
          for (int64_t i = 0; i < a.m; ++i) {
            const float* x = a.x + i * a.k;
            float acc = 0.0f;
            for (size_t j = 0; j < k; ++j) acc += w[j] * x[j];
            a.y[i * a.n + r] = acc;
          }
        }
      },
      kRowGrain);
}

}  // namespace

void matmul(const MatmulArgs& a, ThreadPool& pool, MatmulPath path) {
  validate(a);
  if (a.m == 0 || a.n == 0) return;
  const ActFormat format = act_format(a.w_type);
  if (a.exact && format != ActFormat::kF32) return matmul_exact(a, pool);
  const GemmRowsFn kernel = pick_kernel(a.w_type, path);

  GemmTask task;
  task.w = static_cast<const uint8_t*>(a.w);
  task.w_stride = a.w_row_stride;
  task.k = a.k;
  task.m = a.m;
  task.y = a.y;
  task.ldy = a.n;

  ActScratch scratch;
  if (format == ActFormat::kF32) {
    task.x = reinterpret_cast<const uint8_t*>(a.x);
    task.x_stride = static_cast<size_t>(a.k) * sizeof(float);
  } else {
    const size_t stride = act_row_bytes(format, a.k);
    uint8_t* dst = scratch.get(stride * static_cast<size_t>(a.m));
    const auto quantize = path != MatmulPath::kScalar && cpu_has_avx2() ? avx2_quantize_act_row
                                                                        : quantize_act_row;
    const auto quantize_rows = [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) {
        quantize(format, a.x + i * a.k, dst + static_cast<size_t>(i) * stride, a.k);
      }
    };
    if (a.m >= 2 * kQuantGrain) {
      pool.parallel_for(a.m, quantize_rows, kQuantGrain);
    } else {
      quantize_rows(0, a.m);
    }
    task.x = dst;
    task.x_stride = stride;
  }

  pool.parallel_for(a.n, [&](int64_t r0, int64_t r1) { kernel(task, r0, r1); }, kRowGrain);
}

}  // namespace tpnode::cpu
