#include "node/backend/cuda/gemv_bench.h"

#include <cuda_runtime.h>
#include <fmt/format.h>

#include <algorithm>
#include <random>

#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/gemv.h"
#include "kernels/cuda/gemv_float.h"
#include "kernels/cuda/event_timer.h"
#include "kernels/cuda/gemv_stream.h"
#include "kernels/cuda/quant_layout.h"
#include "kernels/cuda/read_probe.h"
#include "kernels/cuda/synth.h"
#include "node/backend/cuda/cuda_backend.h"

namespace tpnode {
namespace {

namespace kc = ::tpnode::cuda;

constexpr size_t kAlign = 256;

size_t round_up(size_t v, size_t to) { return (v + to - 1) / to * to; }

// Microseconds per launch over `launches` calls of launch(i), after one untimed pass over
// every copy.
class LaunchTimer {
 public:
  explicit LaunchTimer(cudaStream_t stream) : events_(stream) {}

  template <typename Launch>
  double us_per_launch(int copies, int launches, Launch&& launch) {
    for (int i = 0; i < copies; ++i) launch(i);
    events_.start();
    for (int i = 0; i < launches; ++i) launch(i % copies);
    return 1000.0 * events_.stop_ms() / launches;
  }

 private:
  kc::EventTimer events_;
};

// The read probes' geometry: the GEMV's pick for the group.
kc::ReadRowsShape probe_geometry(const kc::GemvGroupParams& p) {
  const kc::GemvGeometry g = kc::gemv_group_geometry(p);
  kc::ReadRowsShape s;
  s.rows = p.total_rows;
  s.rows_per_warp = g.rows_per_warp;
  s.warps_per_row = g.warps_per_row;
  return s;
}

std::string shape_label(const GemvBenchShape& s) {
  std::string rows;
  if (s.rows.size() > 1 && std::all_of(s.rows.begin(), s.rows.end(),
                                       [&](int64_t r) { return r == s.rows[0]; })) {
    rows = fmt::format("{}x{}", s.rows.size(), s.rows[0]);
  } else {
    for (size_t i = 0; i < s.rows.size(); ++i) rows += fmt::format("{}{}", i ? "+" : "", s.rows[i]);
  }
  return fmt::format("{} {} {}x{}", s.name, kc::weight_type_label(s.type), rows, s.cols);
}

bool stream_capable(int device) {
  int major = 0;
  TPNODE_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device));
  return major >= 9;
}

// One shape's weights (copies of the group) and the activations they share.
struct ShapeSet {
  std::vector<std::vector<Weight>> copies;
  size_t bytes = 0;  // one copy of the group
};

class GemvBench {
 public:
  GemvBench(Backend& backend, const GemvBenchOptions& o, const GemvBenchProgress& progress)
      : b_(backend), o_(o), progress_(progress),
        stream_(static_cast<cudaStream_t>(cuda_backend_stream(backend))), timer_(stream_) {
    TPNODE_CHECK(o.launches >= 1, "bench-gemv: {} launches", o.launches);
    TPNODE_CHECK(!o.shapes.empty(), "bench-gemv: no shapes");
    TPNODE_CUDA_CHECK(cudaGetDevice(&device_));
    TPNODE_CUDA_CHECK(cudaDeviceGetAttribute(&sms_, cudaDevAttrMultiProcessorCount, device_));
    stream_ok_ = stream_capable(device_);
    if (stream_ok_) kc::gemv_stream_init();
  }

  GemvBenchReport run() {
    GemvBenchReport report;
    report.device = cuda_device_info(b_).name;
    say("measuring the device copy rate");
    report.copy_bytes_per_s = cuda_measure_copy_bandwidth(b_, o_.copy_probe_bytes);
    alloc_shared();
    report.sweep_bytes_per_s = time_large_sweep();
    for (const GemvBenchShape& s : o_.shapes) time_shape(s, report);
    return report;
  }

 private:
  void say(const std::string& line) {
    if (progress_) progress_(line);
  }
  void add(GemvBenchReport& report, GemvBenchRow row) {
    row.bytes_per_s = static_cast<double>(row.bytes) / (row.us * 1e-6);
    report.rows.push_back(std::move(row));
  }

  int copies_for(size_t bytes) const {
    return static_cast<int>(std::max<uint64_t>(2, o_.rotate_bytes / bytes + 1));
  }

  // Activations, outputs, the probe sink and one arena the probes read (the largest
  // shape's rotation), filled with synthetic BF16 values.
  void alloc_shared() {
    int64_t max_cols = 0, max_rows = 0, max_m = 1;
    size_t arena = round_up(o_.rotate_bytes, kAlign);
    for (const GemvBenchShape& s : o_.shapes) {
      TPNODE_CHECK(!s.rows.empty() && s.rows.size() <= kc::kMaxGemvGroup && s.cols > 0,
                   "bench-gemv: shape {} needs 1 to {} matrices", s.name, kc::kMaxGemvGroup);
      const int64_t batch_max = kc::is_quantized(s.type) ? 1 : kc::kFloatGemvBestBatch;
      TPNODE_CHECK(!s.batches.empty(), "bench-gemv: shape {} has no batch", s.name);
      for (int64_t m : s.batches) {
        TPNODE_CHECK(m >= 1 && m <= batch_max, "bench-gemv: shape {} ({}): batch {} outside 1..{}",
                     s.name, kc::weight_type_label(s.type), m, batch_max);
        max_m = std::max(max_m, m);
      }
      int64_t total = 0;
      for (int64_t r : s.rows) total += r;
      max_cols = std::max(max_cols, s.cols);
      max_rows = std::max(max_rows, total);
      const size_t stride = round_up(probe_row_bytes(s) * total, kAlign);
      arena = std::max(arena, stride * copies_for(stride));
    }
    x_ = static_cast<float*>(b_.alloc(max_m * max_cols * sizeof(float)));
    xq_.q = static_cast<int8_t*>(b_.alloc(max_cols));
    xq_.d = static_cast<float*>(b_.alloc(max_cols / 32 * sizeof(float) + sizeof(float)));
    xq_.s = static_cast<float*>(b_.alloc(max_cols / 32 * sizeof(float) + sizeof(float)));
    y_ = static_cast<float*>(b_.alloc(max_m * max_rows * sizeof(float)));
    sink_ = static_cast<uint64_t*>(b_.alloc(2 * sizeof(uint64_t)));
    TPNODE_CUDA_CHECK(cudaMemsetAsync(sink_, 0, 2 * sizeof(uint64_t), stream_));
    constexpr int64_t kArenaCols = 4096;  // BF16: 8 KB rows
    arena = round_up(arena, kArenaCols * 2);
    say(fmt::format("filling a {:.0f} MB probe buffer", arena / 1e6));
    arena_ = static_cast<uint8_t*>(b_.alloc(arena));
    arena_bytes_ = arena;
    kc::synth_matrix({.type = TensorType::kBF16,
                      .rows = static_cast<int64_t>(arena / (kArenaCols * 2)),
                      .cols = kArenaCols,
                      .seed = 5,
                      .out = arena_},
                     stream_);
  }

  // A probe sees the group as rows of equal length: the group's bytes over its rows,
  // rounded up to 16-byte items.
  static size_t probe_row_bytes(const GemvBenchShape& s) {
    int64_t total = 0;
    size_t bytes = 0;
    for (int64_t r : s.rows) {
      total += r;
      bytes += kc::split_matrix_bytes(s.type, r, s.cols);
    }
    return round_up((bytes + total - 1) / total, 16);
  }

  double time_large_sweep() {
    say(fmt::format("read_sweep over {:.0f} MB", arena_bytes_ / 1e6));
    const kc::ReadProbeBuffer buf{.data = arena_, .bytes = arena_bytes_, .sink = sink_};
    const double us = timer_.us_per_launch(1, std::max(3, o_.launches / 10), [&](int) {
      kc::read_sweep(buf, {}, stream_);
    });
    return static_cast<double>(arena_bytes_) / (us * 1e-6);
  }

  // x [m, cols], and its first row quantized for the quantized GEMVs.
  void set_x(int64_t cols, int64_t m) {
    std::mt19937 rng(7);
    std::uniform_real_distribution<float> u(-1.0f, 1.0f);
    std::vector<float> x(m * cols);
    for (float& v : x) v = u(rng);
    b_.copy_to_device(x_, x.data(), x.size() * sizeof(float));
    if (cols % 32 == 0) kc::quantize_acts({.x = x_, .m = 1, .k = cols, .out = xq_}, stream_);
  }

  kc::GemvGroupParams group(const std::vector<Weight>& ws) const {
    const std::vector<kc::DeviceMatrix> mats = matrices(ws);
    return kc::stacked_gemv_group(mats.data(), static_cast<int>(mats.size()), y_, xq_);
  }

  static std::vector<kc::DeviceMatrix> matrices(const std::vector<Weight>& ws) {
    std::vector<kc::DeviceMatrix> mats;
    for (const Weight& w : ws) mats.push_back(kc::device_matrix(w.type, w.rows, w.cols, w.data));
    return mats;
  }

  void time_shape(const GemvBenchShape& s, GemvBenchReport& report) {
    const std::string label = shape_label(s);
    size_t bytes = 0;
    int64_t total_rows = 0;
    for (int64_t r : s.rows) {
      bytes += kc::split_matrix_bytes(s.type, r, s.cols);
      total_rows += r;
    }
    const int copies = copies_for(bytes);
    say(fmt::format("{}: synthesising {} copies of {:.1f} MB", label, copies, bytes / 1e6));
    std::vector<std::vector<Weight>> sets;
    for (int c = 0; c < copies; ++c) {
      std::vector<Weight> set;
      for (int64_t r : s.rows) set.push_back(b_.synth_weight(s.type, r, s.cols, seed_++));
      sets.push_back(std::move(set));
    }
    say(fmt::format("{}: timing", label));
    kc::ReadRowsShape geo;
    std::string group_detail;
    if (kc::is_quantized(s.type)) {
      set_x(s.cols, 1);
      std::vector<kc::GemvGroupParams> groups;
      for (const std::vector<Weight>& set : sets) groups.push_back(group(set));
      geo = probe_geometry(groups[0]);
      group_detail = fmt::format("{} CTAs x {} rows, {} warp(s)/row",
                                 (total_rows + kc::read_rows_per_cta(geo) - 1) / kc::read_rows_per_cta(geo),
                                 kc::read_rows_per_cta(geo), geo.warps_per_row);
      time_quant(label, s.type, groups, bytes, group_detail, report);
    } else {
      for (int64_t m : s.batches) {
        set_x(s.cols, m);
        std::vector<kc::GemvFloatGroupParams> groups;
        for (const std::vector<Weight>& set : sets) {
          const std::vector<kc::DeviceMatrix> mats = matrices(set);
          groups.push_back(kc::stacked_gemv_float_group(mats.data(), static_cast<int>(mats.size()), x_, m, y_));
        }
        time_float(label, groups, bytes, report);
      }
      // The probes read rows as the one-warp-per-row kernel does.
      geo.rows = total_rows;
      group_detail = fmt::format("{} CTAs x {} rows, 1 warp/row", (total_rows + 3) / 4, 4);
    }
    time_probes(label, s, geo, group_detail, total_rows, report);
  }

  void time_quant(const std::string& label, TensorType type,
                  const std::vector<kc::GemvGroupParams>& groups, size_t bytes,
                  const std::string& group_detail, GemvBenchReport& report) {
    const int copies = static_cast<int>(groups.size());
    const int n = o_.launches;
    const kc::GemvGeometry pick = kc::gemv_group_geometry(groups[0]);
    // The pick first, then every other compiled geometry.
    std::vector<kc::GemvGeometry> geometries{pick};
    for (const kc::GemvGeometry& g : kc::gemv_group_geometries(type)) {
      if (g != pick) geometries.push_back(g);
    }
    for (size_t i = 0; i < geometries.size(); ++i) {
      const kc::GemvGeometry g = geometries[i];
      add(report, {label, i == 0 ? "gemv_group" : "gemv_group " + kc::gemv_geometry_label(g),
                   i == 0 ? kc::gemv_geometry_label(g) + ", " + group_detail : "", bytes,
                   timer_.us_per_launch(copies, n, [&](int c) { kc::gemv_group(groups[c], g, stream_); })});
    }
    if (stream_ok_ && kc::gemv_stream_supports(groups[0])) {
      add(report, {label, "gemv_stream", fmt::format("{} CTAs (persistent)", sms_), bytes,
                   timer_.us_per_launch(copies, n, [&](int c) { kc::gemv_stream(groups[c], stream_); })});
    }
  }

  // The pick, the one-warp-per-row kernel (the former float GEMV), then every other
  // compiled geometry, at the groups' batch.
  void time_float(const std::string& label, const std::vector<kc::GemvFloatGroupParams>& groups,
                  size_t bytes, GemvBenchReport& report) {
    const int copies = static_cast<int>(groups.size());
    const int64_t m = groups[0].m;
    const kc::GemvGeometry pick = kc::gemv_float_group_geometry(groups[0]);
    const kc::GemvGeometry rowwise = kc::gemv_float_rowwise_geometry(m);
    std::vector<kc::GemvGeometry> geometries{pick};
    if (rowwise != pick) geometries.push_back(rowwise);
    for (const kc::GemvGeometry& g : kc::gemv_float_group_geometries(m)) {
      if (g != pick && g != rowwise) geometries.push_back(g);
    }
    for (size_t i = 0; i < geometries.size(); ++i) {
      const kc::GemvGeometry g = geometries[i];
      std::string kernel = fmt::format("gemv_float_group m={}", m);
      if (g == rowwise) kernel += " 1 warp/row";
      if (i > 0 && g != rowwise) kernel += " " + kc::gemv_geometry_label(g);
      add(report, {label, kernel, i == 0 ? "pick: " + kc::gemv_geometry_label(g) : kc::gemv_geometry_label(g),
                   bytes, timer_.us_per_launch(copies, o_.launches, [&](int c) {
                     kc::gemv_float_group(groups[c], g, stream_);
                   })});
    }
  }

  void time_probes(const std::string& label, const GemvBenchShape& s, const kc::ReadRowsShape& geo,
                   const std::string& group_detail, int64_t total_rows, GemvBenchReport& report) {
    const int n = o_.launches;
    // The probes read the arena: copy c at c * stride.
    kc::ReadRowsShape rows = geo;
    rows.row_bytes = static_cast<int64_t>(probe_row_bytes(s));
    const size_t probe_bytes = static_cast<size_t>(rows.row_bytes * total_rows);
    const size_t stride = round_up(probe_bytes, kAlign);
    const int probe_copies = copies_for(stride);
    TPNODE_CHECK(stride * probe_copies <= arena_bytes_, "bench-gemv: probe buffer too small");
    auto buf = [&](int c) {
      return kc::ReadProbeBuffer{.data = arena_ + c * stride, .bytes = probe_bytes, .sink = sink_};
    };
    for (int u : o_.probe_items) {
      rows.items_per_lane = u;
      const std::string detail = fmt::format("{}, rows of {} B", group_detail, rows.row_bytes);
      add(report, {label, fmt::format("read_rows U={}", u), detail, probe_bytes,
                   timer_.us_per_launch(probe_copies, n, [&](int c) { kc::read_rows(buf(c), rows, stream_); })});
      add(report, {label, fmt::format("read_rows_interleaved U={}", u), detail, probe_bytes,
                   timer_.us_per_launch(probe_copies, n, [&](int c) {
                     kc::read_rows_interleaved(buf(c), rows, stream_);
                   })});
    }
    add(report, {label, "read_sweep", fmt::format("{} CTAs x 256 threads", 4 * sms_), probe_bytes,
                 timer_.us_per_launch(probe_copies, n, [&](int c) { kc::read_sweep(buf(c), {}, stream_); })});
    TPNODE_CUDA_CHECK(cudaGetLastError());
  }

  Backend& b_;
  const GemvBenchOptions& o_;
  const GemvBenchProgress& progress_;
  cudaStream_t stream_;
  LaunchTimer timer_;
  int device_ = 0;
  int sms_ = 0;
  bool stream_ok_ = false;
  uint64_t seed_ = 1;
  float* x_ = nullptr;
  kc::QuantActs xq_;
  float* y_ = nullptr;
  uint64_t* sink_ = nullptr;
  uint8_t* arena_ = nullptr;
  size_t arena_bytes_ = 0;
};

}  // namespace

std::vector<GemvBenchShape> llama3_8b_decode_shapes() {
  return {
      {"gate+up", TensorType::kQ4_K, {14336, 14336}, 4096},
      {"ffn_down", TensorType::kQ6_K, {4096}, 14336},
      {"q/k/v", TensorType::kQ4_K, {4096, 1024, 1024}, 4096},
      {"attn_output", TensorType::kQ4_K, {4096}, 4096},
  };
}

std::vector<GemvBenchShape> llama3_8b_tp2_decode_shapes() {
  return {
      {"gate+up", TensorType::kQ4_K, {7168, 7168}, 4096},
      {"ffn_down", TensorType::kQ6_K, {4096}, 7168},
      {"q/k/v", TensorType::kQ4_K, {2048, 512, 512}, 4096},
      {"attn_output", TensorType::kQ4_K, {4096}, 2048},
      {"output", TensorType::kQ6_K, {64128}, 4096},
  };
}

std::vector<GemvBenchShape> llama3_70b_tp2_bf16_shapes() {
  const TensorType t = TensorType::kBF16;
  return {
      {"q/k/v", t, {4096, 512, 512}, 8192, {1, 2}},
      {"attn_output", t, {8192}, 4096, {1, 2}},
      {"gate+up", t, {14336, 14336}, 8192, {1, 2}},
      {"ffn_down", t, {8192}, 14336, {1, 2}},
      {"output", t, {64128}, 8192, {1, 2}},
  };
}

std::vector<GemvBenchShape> llama3_8b_bf16_shapes() {
  const TensorType t = TensorType::kBF16;
  return {
      {"q/k/v", t, {4096, 1024, 1024}, 4096, {1, 2}},
      {"attn_output", t, {4096}, 4096, {1, 2}},
      {"gate+up", t, {14336, 14336}, 4096, {1, 2}},
      {"ffn_down", t, {4096}, 14336, {1, 2}},
  };
}

GemvBenchReport run_gemv_bench(Backend& backend, const GemvBenchOptions& options,
                               const GemvBenchProgress& progress) {
  return GemvBench(backend, options, progress).run();
}

}  // namespace tpnode
