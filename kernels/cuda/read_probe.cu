#include "kernels/cuda/read_probe.h"

#include "kernels/cuda/cuda_check.h"

namespace tpnode::cuda {
namespace {

constexpr int kSweepThreads = 256;
constexpr int kSweepItems = 4;  // 16-byte loads in flight per thread
constexpr int kRowsCtaWarps = 4;
// The store that keeps the loads alive compares against this; equality is a 2^-128 event.
constexpr unsigned long long kNever = 0x9e3779b97f4a7c15ull;

struct Fold {
  unsigned long long x = 0;  // XOR of the 64-bit halves
  unsigned long long s = 0;  // their sum mod 2^64
  __device__ __forceinline__ void add(const ulonglong2& v) {
    x ^= v.x ^ v.y;
    s += v.x + v.y;
  }
};

__device__ __forceinline__ ulonglong2 ld_u128(const ulonglong2* p) { return *p; }

__device__ __forceinline__ void finish(const Fold& f, const ReadProbeBuffer& buf) {
  if (!buf.checksum) {
    if (f.x == kNever && f.s == kNever) buf.sink[0] = f.x;
    return;
  }
  unsigned long long x = f.x, s = f.s;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    x ^= __shfl_xor_sync(0xffffffffu, x, o);
    s += __shfl_xor_sync(0xffffffffu, s, o);
  }
  if (threadIdx.x % 32 == 0) {
    atomicXor(reinterpret_cast<unsigned long long*>(buf.sink), x);
    atomicAdd(reinterpret_cast<unsigned long long*>(buf.sink + 1), s);
  }
}

__global__ void __launch_bounds__(kSweepThreads, 4) read_sweep_kernel(ReadProbeBuffer buf) {
  const auto* w = reinterpret_cast<const ulonglong2*>(buf.data);
  const int64_t n = static_cast<int64_t>(buf.bytes / 16);
  const int64_t threads = static_cast<int64_t>(gridDim.x) * kSweepThreads;
  Fold f;
  for (int64_t base = static_cast<int64_t>(blockIdx.x) * kSweepThreads + threadIdx.x; base < n;
       base += threads * kSweepItems) {
    ulonglong2 v[kSweepItems];
#pragma unroll
    for (int u = 0; u < kSweepItems; ++u) {
      const int64_t i = base + u * threads;
      v[u] = i < n ? ld_u128(w + i) : make_ulonglong2(0, 0);
    }
#pragma unroll
    for (int u = 0; u < kSweepItems; ++u) f.add(v[u]);
  }
  finish(f, buf);
}

// The 16-byte item j (of row_items) of the CTA's row q (of cta_rows), as an index from the
// CTA's first item. A step is L items of a row (one per lane); with `interleaved` the CTA's
// rows are stored step by step: step i of rows 0..cta_rows-1, then step i+1; the partial
// last steps (rem items each) close the tile. Tiles are small (a few rows): 32-bit indices.
template <bool kInterleaved, int L>
__device__ __forceinline__ int tile_item(int q, int j, int row_items, int cta_rows) {
  if constexpr (!kInterleaved) {
    return q * row_items + j;
  } else {
    const int full = row_items / L, i = j / L, t = j % L;
    if (i < full) return (i * cta_rows + q) * L + t;
    return full * cta_rows * L + q * (row_items - full * L) + t;
  }
}

// R rows per group of W warps, U items of each row in flight per lane. The minimum of 4
// CTAs per SM lets ptxas keep all R x U loads in flight (with no minimum it trades them for
// occupancy, issuing about four at a time).
template <int R, int W, int U, bool kInterleaved>
__global__ void __launch_bounds__(kRowsCtaWarps * 32, 4)
    read_rows_kernel(ReadProbeBuffer buf, ReadRowsShape shape) {
  constexpr int L = 32 * W;  // lanes sharing a row
  constexpr int kRowsPerCta = (kRowsCtaWarps / W) * R;
  const int t = threadIdx.x % L;
  const int g = threadIdx.x / L;
  const int row_items = static_cast<int>(shape.row_bytes / 16);
  const int64_t row0 = static_cast<int64_t>(blockIdx.x) * kRowsPerCta;
  const int cta_rows = static_cast<int>(min(static_cast<int64_t>(kRowsPerCta), shape.rows - row0));
  const int steps = (row_items + L - 1) / L;
  const auto* tile = reinterpret_cast<const ulonglong2*>(buf.data) + row0 * row_items;
  Fold f;
  for (int i0 = 0; i0 < steps; i0 += U) {
    ulonglong2 v[R][U];
    bool ok[R][U];
#pragma unroll
    for (int r = 0; r < R; ++r) {
      const int q = g * R + r;
#pragma unroll
      for (int u = 0; u < U; ++u) {
        // Past the end of its row (or past the last row) a lane loads its row's last item
        // again (an L1/L2 hit, as gemv_group's clamped items are) and drops it, so that the
        // loads carry no predicate and all issue before the first use.
        const int j = (i0 + u) * L + t;
        ok[r][u] = q < cta_rows && j < row_items;
        v[r][u] = ld_u128(tile + tile_item<kInterleaved, L>(min(q, cta_rows - 1),
                                                            min(j, row_items - 1), row_items,
                                                            cta_rows));
      }
    }
#pragma unroll
    for (int r = 0; r < R; ++r) {
#pragma unroll
      for (int u = 0; u < U; ++u) {
        if (ok[r][u]) f.add(v[r][u]);
      }
    }
  }
  finish(f, buf);
}

template <int R, int W, int U, bool kInterleaved>
void launch_rows(const ReadProbeBuffer& buf, const ReadRowsShape& shape, cudaStream_t stream) {
  const int64_t per_cta = (kRowsCtaWarps / W) * R;
  const int64_t ctas = (shape.rows + per_cta - 1) / per_cta;
  read_rows_kernel<R, W, U, kInterleaved>
      <<<static_cast<unsigned>(ctas), kRowsCtaWarps * 32, 0, stream>>>(buf, shape);
  TPNODE_CUDA_CHECK_LAUNCH();
}

template <int R, int W, bool kInterleaved>
void dispatch_items(const ReadProbeBuffer& buf, const ReadRowsShape& shape, cudaStream_t stream) {
  switch (shape.items_per_lane) {
    case 1: launch_rows<R, W, 1, kInterleaved>(buf, shape, stream); break;
    case 2: launch_rows<R, W, 2, kInterleaved>(buf, shape, stream); break;
    case 4: launch_rows<R, W, 4, kInterleaved>(buf, shape, stream); break;
    case 8: launch_rows<R, W, 8, kInterleaved>(buf, shape, stream); break;
    default:
      TPNODE_THROW(ErrorKind::kUnsupported, "read_rows: items_per_lane {} (1, 2, 4 or 8)",
                   shape.items_per_lane);
  }
}

template <bool kInterleaved>
void dispatch_rows(const ReadProbeBuffer& buf, const ReadRowsShape& shape, cudaStream_t stream) {
  TPNODE_CHECK(buf.data != nullptr && buf.sink != nullptr, "read_rows: null buffer or sink");
  TPNODE_CHECK(reinterpret_cast<uintptr_t>(buf.data) % 16 == 0, "read_rows: buffer not 16-byte aligned");
  TPNODE_CHECK(shape.rows > 0 && shape.row_bytes > 0 && shape.row_bytes % 16 == 0,
               "read_rows: {} rows of {} bytes (rows > 0, row_bytes a positive multiple of 16)",
               shape.rows, shape.row_bytes);
  TPNODE_CHECK(shape.row_bytes / 16 * read_rows_per_cta(shape) < (int64_t{1} << 31),
               "read_rows: rows of {} bytes too long", shape.row_bytes);
  TPNODE_CHECK(static_cast<size_t>(shape.rows * shape.row_bytes) == buf.bytes,
               "read_rows: {} rows of {} bytes != buffer of {} bytes", shape.rows,
               shape.row_bytes, buf.bytes);
  const int r = shape.rows_per_warp, w = shape.warps_per_row;
  if (r == 1 && w == 1) {
    dispatch_items<1, 1, kInterleaved>(buf, shape, stream);
  } else if (r == 2 && w == 1) {
    dispatch_items<2, 1, kInterleaved>(buf, shape, stream);
  } else if (r == 1 && w == kRowsCtaWarps) {
    dispatch_items<1, kRowsCtaWarps, kInterleaved>(buf, shape, stream);
  } else if (r == 2 && w == kRowsCtaWarps) {
    dispatch_items<2, kRowsCtaWarps, kInterleaved>(buf, shape, stream);
  } else if (r == 3 && w == 1) {
    dispatch_items<3, 1, kInterleaved>(buf, shape, stream);
  } else if (r == 4 && w == 1) {
    dispatch_items<4, 1, kInterleaved>(buf, shape, stream);
  } else {
    TPNODE_THROW(ErrorKind::kUnsupported,
                 "read_rows: rows_per_warp {} and warps_per_row {} (1 or 2 rows with 1 or {} "
                 "warps per row, or 3 or 4 rows with 1)",
                 r, w, kRowsCtaWarps);
  }
}

}  // namespace

void read_sweep(const ReadProbeBuffer& buf, const ReadSweepShape& shape, cudaStream_t stream) {
  TPNODE_CHECK(buf.data != nullptr && buf.sink != nullptr, "read_sweep: null buffer or sink");
  TPNODE_CHECK(reinterpret_cast<uintptr_t>(buf.data) % 16 == 0 && buf.bytes % 16 == 0,
               "read_sweep: buffer of {} bytes not 16-byte aligned or sized", buf.bytes);
  TPNODE_CHECK(shape.ctas >= 0, "read_sweep: {} CTAs", shape.ctas);
  if (buf.bytes == 0) return;
  int ctas = shape.ctas;
  if (ctas == 0) {
    int dev = 0, sms = 0;
    TPNODE_CUDA_CHECK(cudaGetDevice(&dev));
    TPNODE_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
    ctas = 4 * sms;
  }
  read_sweep_kernel<<<static_cast<unsigned>(ctas), kSweepThreads, 0, stream>>>(buf);
  TPNODE_CUDA_CHECK_LAUNCH();
}

int64_t read_rows_per_cta(const ReadRowsShape& shape) {
  return shape.warps_per_row > 0 ? kRowsCtaWarps / shape.warps_per_row * shape.rows_per_warp : 0;
}

void read_rows(const ReadProbeBuffer& buf, const ReadRowsShape& shape, cudaStream_t stream) {
  dispatch_rows<false>(buf, shape, stream);
}

void read_rows_interleaved(const ReadProbeBuffer& buf, const ReadRowsShape& shape,
                           cudaStream_t stream) {
  dispatch_rows<true>(buf, shape, stream);
}

}  // namespace tpnode::cuda
