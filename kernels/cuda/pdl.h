// Host side of programmatic dependent launch (kernels/cuda/pdl.cuh has the device side):
// whether launch_pdl() sets the attribute. On only for devices of compute capability >= 9.0,
// chosen once by the backend that owns the device.
#pragma once

namespace tpnode::cuda {

bool pdl_enabled();
void set_pdl_enabled(bool on);

}  // namespace tpnode::cuda
