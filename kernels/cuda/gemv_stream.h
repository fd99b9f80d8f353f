// Batch-1 quantized GEMV that streams the weights through shared memory: the same products
// as gemv_group (y_i = x · W_iᵀ for up to three matrices sharing x), up to float summation
// order. A persistent grid (one CTA per SM) gives every warp an equal contiguous range of
// rows; each warp keeps a ring of shared-memory slots filled by TMA bulk copies, so the
// bytes in flight do not depend on registers and no tail wave idles the GPU.
#pragma once

#include <cuda_runtime.h>

#include "kernels/cuda/gemv.h"

namespace tpnode::cuda {

// Sets the kernels' shared-memory limits on the current device. Call once at set-up (never
// during graph capture); gemv_stream calls it itself outside capture, and throws when a
// capture starts before it was called.
void gemv_stream_init();

// Whether gemv_stream handles this group: a supported type (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0,
// Q4_K, Q5_K, Q6_K), aligned pointers, and a row width whose activations fit in shared
// memory. Callers fall back to gemv_group otherwise.
bool gemv_stream_supports(const GemvGroupParams& p);

// No host synchronisation; capturable in a CUDA graph; deterministic.
void gemv_stream(const GemvGroupParams& p, cudaStream_t stream);

}  // namespace tpnode::cuda
