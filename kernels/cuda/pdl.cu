#include "kernels/cuda/pdl.cuh"

#include <atomic>

namespace tpnode::cuda {
namespace {
std::atomic<bool> g_pdl{false};
}  // namespace

bool pdl_enabled() { return g_pdl.load(std::memory_order_relaxed); }
void set_pdl_enabled(bool on) { g_pdl.store(on, std::memory_order_relaxed); }

}  // namespace tpnode::cuda
