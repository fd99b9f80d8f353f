// MPI set-up and tear-down for World (parallel/world.cpp), kept apart so that a build without
// MPI compiles world.cpp alone.
#pragma once

#include "parallel/world.h"

namespace tpnode::mpi {

// MPI_Init_thread with MPI_THREAD_MULTIPLE (the heartbeat thread calls MPI) unless MPI is
// already initialised; returns whether it initialised MPI.
bool initialize(int& argc, char**& argv);
Topology query_topology();
std::unique_ptr<Communicator> make_world_communicator(const WorldOptions& options);
// See MpiCommunicator::deferred_abort_in_s (0 for other communicators).
double deferred_abort_in_s(const Communicator& comm);
// See MpiCommunicator::closing_barrier.
bool closing_barrier(Communicator& comm, bool bounded);
void finalize();
[[noreturn]] void abort_job(int exit_code);

}  // namespace tpnode::mpi
