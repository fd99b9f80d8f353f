// tpnode bench-gemv: why the decode GEMVs stop short of the copy rate. For each Llama-3-8B
// Q4_K_M decode shape it times gemv_group and gemv_stream, for each BF16 shape (Llama-3-70B
// on two tensor-parallel ranks, Llama-3-8B on one GPU) every gemv_float_group geometry at
// m = 1 and 2 against the one-warp-per-row kernel, and pure-read probes
// over the same number of bytes: the GEMV's access pattern without the math (read_rows),
// the same loads over a k-major tiled layout (read_rows_interleaved), and a copy-like
// sweep (read_sweep); the fraction column is against the device copy rate measured at start.
#include <fmt/format.h>

#include <cstdio>
#include <memory>
#include <string>

#include <unistd.h>

#include "node/cli/command.h"
#include "node/common/error.h"
#ifdef TPNODE_HAVE_CUDA
#include "node/backend/cuda/cuda_backend.h"
#include "node/backend/cuda/gemv_bench.h"
#endif

namespace tpnode::cli {
namespace {

struct GemvBenchCliOptions {
  int launches = 60;
  int device = 0;
  std::vector<int> items = {1, 2, 4, 8};
  int rotate_mb = 256;
  std::vector<std::string> sets = {"q4k-8b", "bf16-70b-tp2", "bf16-8b"};
};

#ifdef TPNODE_HAVE_CUDA

std::vector<GemvBenchShape> shapes_of(const std::vector<std::string>& sets) {
  std::vector<GemvBenchShape> out;
  for (const std::string& set : sets) {
    std::vector<GemvBenchShape> add;
    if (set == "q4k-8b") add = llama3_8b_decode_shapes();
    if (set == "q4k-8b-tp2") add = llama3_8b_tp2_decode_shapes();
    if (set == "bf16-70b-tp2") add = llama3_70b_tp2_bf16_shapes();
    if (set == "bf16-8b") add = llama3_8b_bf16_shapes();
    TPNODE_CHECK(!add.empty(), "bench-gemv: unknown shape set '{}'", set);
    out.insert(out.end(), add.begin(), add.end());
  }
  return out;
}

// One status line on stderr, rewritten in place on a terminal.
class Status {
 public:
  Status() : tty_(isatty(fileno(stderr)) != 0) {}
  void show(const std::string& s) {
    std::fprintf(stderr, tty_ ? "\r\033[K[bench-gemv] %s" : "[bench-gemv] %s\n", s.c_str());
    std::fflush(stderr);
  }
  void clear() {
    if (tty_) std::fprintf(stderr, "\r\033[K");
    std::fflush(stderr);
  }

 private:
  bool tty_;
};

int run_gemv_bench_command(const GemvBenchCliOptions& o) {
  TPNODE_CHECK(cuda_device_count() > o.device,
               "bench-gemv: no CUDA device {} ({} visible): this benchmark needs a GPU", o.device,
               cuda_device_count());
  CudaBackendOptions bo;
  bo.device = o.device;
  bo.gpu_memory_fraction = 0.5;
  bo.bf16_copy_fraction = 0.0;
  std::unique_ptr<Backend> backend = make_cuda_backend(bo);

  GemvBenchOptions go;
  go.shapes = shapes_of(o.sets);
  go.launches = o.launches;
  go.probe_items = o.items;
  go.rotate_bytes = static_cast<uint64_t>(o.rotate_mb) << 20;
  Status status;
  const GemvBenchReport r = run_gemv_bench(*backend, go, [&](const std::string& line) { status.show(line); });
  status.clear();
  const CudaDeviceInfo info = cuda_device_info(*backend);
  const double copy = r.copy_bytes_per_s;
  std::printf("device: %s, %d SMs; copy rate %.3f TB/s (read+write, %llu MiB buffers); "
              "%d launches per kernel over >= %d MiB of copies; frac = TB/s / copy rate\n",
              info.name.c_str(), info.sm_count, copy / 1e12,
              static_cast<unsigned long long>(go.copy_probe_bytes >> 20), o.launches, o.rotate_mb);
  std::printf("read_sweep over one %.0f MB buffer per launch (ramp and tail negligible): "
              "%.3f TB/s, frac %.3f\n\n",
              go.rotate_bytes / 1e6, r.sweep_bytes_per_s / 1e12, r.sweep_bytes_per_s / copy);
  std::printf("%-40s %-46s %9s %7s %6s  %s\n", "shape", "kernel", "us", "TB/s", "frac",
              "geometry");
  std::string last;
  for (const GemvBenchRow& row : r.rows) {
    if (!last.empty() && row.shape != last) std::printf("\n");
    last = row.shape;
    std::printf("%-40s %-46s %9.2f %7.3f %6.3f  %s\n", row.shape.c_str(), row.kernel.c_str(),
                row.us, row.bytes_per_s / 1e12, row.bytes_per_s / copy, row.detail.c_str());
  }
  return 0;
}

#else

int run_gemv_bench_command(const GemvBenchCliOptions&) {
  TPNODE_THROW(ErrorKind::kUnsupported,
               "bench-gemv: this tpnode was built without CUDA (TPNODE_CUDA=OFF)");
}

#endif

const RegisterCommand kRegister{Command{
    "bench-gemv",
    "batch-1 decode GEMV kernels against pure-read probes over the same bytes (one GPU)",
    [](CLI::App& sub) -> std::function<int()> {
      auto o = std::make_shared<GemvBenchCliOptions>();
      sub.add_option("--launches", o->launches, "timed back-to-back launches per kernel")
          ->check(CLI::Range(1, 100000));
      sub.add_option("--device", o->device, "CUDA device")->check(CLI::Range(0, 64));
      sub.add_option("--items", o->items,
                     "read_rows probes: 16-byte loads in flight per lane, each timed (1, 2, 4, 8)")
          ->delimiter(',')
          ->check(CLI::IsMember({1, 2, 4, 8}));
      sub.add_option("--shapes", o->sets,
                     "shape sets: q4k-8b (Llama-3-8B Q4_K_M), q4k-8b-tp2 (the same and its output "
                     "layer, one of two TP ranks), bf16-70b-tp2 (Llama-3-70B BF16, one of two TP "
                     "ranks), bf16-8b (Llama-3-8B BF16)")
          ->delimiter(',')
          ->check(CLI::IsMember({"q4k-8b", "q4k-8b-tp2", "bf16-70b-tp2", "bf16-8b"}));
      sub.add_option("--rotate-mb", o->rotate_mb,
                     "each kernel rotates over copies of its data totalling at least this")
          ->check(CLI::Range(64, 16384));
      return [o] { return run_gemv_bench_command(*o); };
    }}};

}  // namespace
}  // namespace tpnode::cli
