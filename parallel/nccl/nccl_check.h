// TPNODE_NCCL_CHECK(call): runs an NCCL call and throws tpnode::Error(kRuntime) naming the
// call, NCCL's error string and the source line when it does not return ncclSuccess.
#pragma once

#include <nccl.h>

#include "node/common/error.h"

#define TPNODE_NCCL_CHECK(call)                                                           \
  do {                                                                                    \
    const ncclResult_t tpnode_nccl_rc_ = (call);                                          \
    if (tpnode_nccl_rc_ != ncclSuccess)                                                   \
      ::tpnode::raise_api_error("NCCL", #call, ncclGetErrorString(tpnode_nccl_rc_), __FILE__, \
                                __LINE__);                                                \
  } while (0)
