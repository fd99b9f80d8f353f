// A CUDA injection library that records every kernel's start and end on the GPU through
// CUPTI's activity API, for a timeline of decode steps as they really run: replayed from CUDA
// graphs, with programmatic dependent launch letting a kernel start before the one it depends
// on ends. Nsight Compute serialises kernels and so cannot show that overlap.
//
//   CUDA_INJECTION64_PATH=build/bench/libtpnode_kernel_trace.so TPNODE_KERNEL_TRACE=trace
//     build/tpnode bench ... --profile-decode
//
// writes trace.<pid>.csv (one row per kernel: start and end in ns, device, stream, graph id,
// correlation id of the launch, grid and block size, demangled name, kind "kernel"; one per
// memory copy, kind "memcpy": its bytes in the grid column, its direction in the name; one per
// CUDA runtime call on the host, kind "api": its name, device -1), all on CUPTI's one clock;
// bench/kernel_trace.py turns it into a per-kernel table of the steps replayed from graphs and,
// with --gaps, what happens between two of them. When the program calls cudaProfilerStart/Stop
// (tpnode bench --profile-decode: around each batch's timed decode steps), only what runs
// between them is kept.
#include <cupti.h>
#include <cxxabi.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <string>

namespace {

std::mutex g_mutex;
FILE* g_out = nullptr;
bool g_started = false;  // a cudaProfilerStart was seen
bool g_discard = false;  // records flushed now are from before the first start

void fail(const char* what, CUptiResult r) {
  const char* msg = nullptr;
  cuptiGetResultString(r, &msg);
  std::fprintf(stderr, "kernel_trace: %s failed: %s\n", what, msg ? msg : "?");
}

#define TRACE_CUPTI(call)                        \
  do {                                           \
    const CUptiResult r_ = (call);               \
    if (r_ != CUPTI_SUCCESS) fail(#call, r_);    \
  } while (0)

std::string demangle(const char* name) {
  int status = 0;
  char* d = abi::__cxa_demangle(name, nullptr, nullptr, &status);
  std::string s = status == 0 && d ? d : name;
  std::free(d);
  for (char& c : s) {
    if (c == ',') c = ';';  // keep the CSV's columns
  }
  return s;
}

const char* copy_kind(uint8_t k) {
  switch (k) {
    case CUPTI_ACTIVITY_MEMCPY_KIND_HTOD: return "HtoD";
    case CUPTI_ACTIVITY_MEMCPY_KIND_DTOH: return "DtoH";
    case CUPTI_ACTIVITY_MEMCPY_KIND_DTOD: return "DtoD";
    case CUPTI_ACTIVITY_MEMCPY_KIND_PTOP: return "PtoP";
    default: return "other";
  }
}

// What the tracer records: kernels, memory copies and the host's CUDA runtime calls.
constexpr CUpti_ActivityKind kKinds[] = {CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL,
                                         CUPTI_ACTIVITY_KIND_MEMCPY, CUPTI_ACTIVITY_KIND_RUNTIME};

void CUPTIAPI buffer_requested(uint8_t** buffer, size_t* size, size_t* max_records) {
  *size = 16u << 20;
  *buffer = static_cast<uint8_t*>(std::aligned_alloc(8, *size));
  *max_records = 0;
}

void CUPTIAPI buffer_completed(CUcontext, uint32_t, uint8_t* buffer, size_t, size_t valid) {
  std::lock_guard<std::mutex> lock(g_mutex);
  CUpti_Activity* rec = nullptr;
  while (cuptiActivityGetNextRecord(buffer, valid, &rec) == CUPTI_SUCCESS) {
    if (g_out == nullptr || g_discard) continue;
    if (rec->kind == CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL) {
      const auto* k = reinterpret_cast<const CUpti_ActivityKernel10*>(rec);
      std::fprintf(g_out, "%llu,%llu,%u,%u,%u,%u,%d,%d,%d,%d,%s,kernel\n",
                   static_cast<unsigned long long>(k->start), static_cast<unsigned long long>(k->end),
                   k->deviceId, k->streamId, k->graphId, k->correlationId,
                   k->gridX * k->gridY * k->gridZ, k->blockX * k->blockY * k->blockZ,
                   k->registersPerThread,
                   static_cast<int>(k->dynamicSharedMemory + k->staticSharedMemory),
                   demangle(k->name).c_str());
    } else if (rec->kind == CUPTI_ACTIVITY_KIND_MEMCPY) {
      const auto* m = reinterpret_cast<const CUpti_ActivityMemcpy6*>(rec);
      std::fprintf(g_out, "%llu,%llu,%u,%u,%u,%u,%llu,0,0,0,memcpy %s,memcpy\n",
                   static_cast<unsigned long long>(m->start), static_cast<unsigned long long>(m->end),
                   m->deviceId, m->streamId, m->graphId, m->correlationId,
                   static_cast<unsigned long long>(m->bytes), copy_kind(m->copyKind));
    } else if (rec->kind == CUPTI_ACTIVITY_KIND_RUNTIME) {
      const auto* a = reinterpret_cast<const CUpti_ActivityAPI*>(rec);
      const char* name = nullptr;
      if (cuptiGetCallbackName(CUPTI_CB_DOMAIN_RUNTIME_API, a->cbid, &name) != CUPTI_SUCCESS) {
        name = "?";
      }
      std::fprintf(g_out, "%llu,%llu,-1,0,0,%u,0,0,0,0,%s,api\n",
                   static_cast<unsigned long long>(a->start), static_cast<unsigned long long>(a->end),
                   a->correlationId, name);
    }
  }
  std::free(buffer);
}

// cudaProfilerStart drops what was recorded before the first start and records again;
// cudaProfilerStop writes out what was recorded and pauses.
void CUPTIAPI on_api(void*, CUpti_CallbackDomain domain, CUpti_CallbackId id, const void* data) {
  const auto* info = static_cast<const CUpti_CallbackData*>(data);
  if (domain != CUPTI_CB_DOMAIN_RUNTIME_API || info->callbackSite != CUPTI_API_EXIT) return;
  if (id == CUPTI_RUNTIME_TRACE_CBID_cudaProfilerStart_v4000) {
    if (!g_started) {
      g_discard = true;
      TRACE_CUPTI(cuptiActivityFlushAll(CUPTI_ACTIVITY_FLAG_FLUSH_FORCED));
      g_discard = false;
      g_started = true;
    }
    for (CUpti_ActivityKind k : kKinds) TRACE_CUPTI(cuptiActivityEnable(k));
  } else if (id == CUPTI_RUNTIME_TRACE_CBID_cudaProfilerStop_v4000) {
    TRACE_CUPTI(cuptiActivityFlushAll(CUPTI_ACTIVITY_FLAG_FLUSH_FORCED));
    for (CUpti_ActivityKind k : kKinds) TRACE_CUPTI(cuptiActivityDisable(k));
  }
}

void at_exit() {
  cuptiActivityFlushAll(CUPTI_ACTIVITY_FLAG_FLUSH_FORCED);
  std::lock_guard<std::mutex> lock(g_mutex);
  if (g_out != nullptr) std::fclose(g_out);
  g_out = nullptr;
}

}  // namespace

// Called by the CUDA driver at initialisation when CUDA_INJECTION64_PATH names this library.
extern "C" int InitializeInjection(void) {
  const char* base = std::getenv("TPNODE_KERNEL_TRACE");
  const std::string path =
      std::string(base && *base ? base : "kernel_trace") + "." + std::to_string(getpid()) + ".csv";
  g_out = std::fopen(path.c_str(), "w");
  if (g_out == nullptr) {
    std::fprintf(stderr, "kernel_trace: cannot write %s\n", path.c_str());
    return 0;
  }
  std::fprintf(g_out,
               "start_ns,end_ns,device,stream,graph,correlation,grid,block,regs,smem,name,kind\n");
  TRACE_CUPTI(cuptiActivityRegisterCallbacks(buffer_requested, buffer_completed));
  CUpti_SubscriberHandle sub;
  TRACE_CUPTI(cuptiSubscribe(&sub, on_api, nullptr));
  TRACE_CUPTI(cuptiEnableCallback(1, sub, CUPTI_CB_DOMAIN_RUNTIME_API,
                                  CUPTI_RUNTIME_TRACE_CBID_cudaProfilerStart_v4000));
  TRACE_CUPTI(cuptiEnableCallback(1, sub, CUPTI_CB_DOMAIN_RUNTIME_API,
                                  CUPTI_RUNTIME_TRACE_CBID_cudaProfilerStop_v4000));
  for (CUpti_ActivityKind k : kKinds) TRACE_CUPTI(cuptiActivityEnable(k));
  std::atexit(at_exit);
  std::fprintf(stderr, "kernel_trace: recording kernels, copies and runtime calls into %s\n",
               path.c_str());
  return 1;
}
