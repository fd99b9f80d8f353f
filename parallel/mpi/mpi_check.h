// TPNODE_MPI_CHECK(call): runs an MPI call and throws tpnode::Error(kRuntime) naming the call,
// MPI's error string and the source line when it does not return MPI_SUCCESS. Communicators
// are set to MPI_ERRORS_RETURN so that failures come back here instead of aborting inside MPI.
#pragma once

#include <mpi.h>

namespace tpnode::mpi {

[[noreturn]] void raise_mpi_error(const char* call, int code, const char* file, int line);

}  // namespace tpnode::mpi

#define TPNODE_MPI_CHECK(call)                                                   \
  do {                                                                           \
    const int tpnode_mpi_rc_ = (call);                                           \
    if (tpnode_mpi_rc_ != MPI_SUCCESS)                                           \
      ::tpnode::mpi::raise_mpi_error(#call, tpnode_mpi_rc_, __FILE__, __LINE__); \
  } while (0)
