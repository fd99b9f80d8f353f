// Activation kernels over F32 activations.
#pragma once

#include <cstdint>

#include "kernels/cpu/thread_pool.h"

namespace tpnode::cpu {

// silu(x) = x / (1 + exp(-x)), as torch.nn.functional.silu
float silu(float x);

// out[i] = silu(gate[i]) * up[i], i < n. out may alias gate or up.
void swiglu(const float* gate, const float* up, float* out, int64_t n, ThreadPool& pool);

}  // namespace tpnode::cpu
