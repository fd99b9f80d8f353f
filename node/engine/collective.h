// The two collectives a tensor-parallel forward needs. parallel/ implements this with MPI,
// NCCL, or a single rank; node/ never includes parallel/.
#pragma once

#include <cstddef>
#include <vector>

namespace tpnode {

class Collective {
 public:
  virtual ~Collective() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;

  // In-place sum over ranks of n floats in backend memory. Every rank ends with
  // bit-identical values (fixed summation order).
  virtual void all_reduce_sum(float* data, size_t n) = 0;

  // Whether an all_reduce_sum of n floats may be captured in a CUDA graph. The engine replays
  // decode steps from graphs only when it is (NCCL calls captured in its decode graphs hung).
  virtual bool all_reduce_capturable(size_t n) const {
    (void)n;
    return true;
  }

  // The all-reduce of n floats at `data`, for a backend op to run itself (Backend::NormIn::
  // reduce) instead of a separate all_reduce_sum: the same sum, with the same bits. Null when
  // this collective has no such form for n. The plan is the implementation's own (for
  // NcclCommunicator, a kernels/cuda OneShotParams); it stays valid until the next call.
  virtual const void* device_reduce_plan(float* data, size_t n) {
    (void)data;
    (void)n;
    return nullptr;
  }

  // Gathers counts[r] floats of host memory from each rank r into recv on rank 0, in rank
  // order. recv may be null on other ranks.
  virtual void gather_host(const float* send, size_t n, float* recv,
                           const std::vector<size_t>& counts) = 0;
};

}  // namespace tpnode
