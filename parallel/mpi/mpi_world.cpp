#include "parallel/mpi/mpi_world.h"

#include <mpi.h>
#include <unistd.h>

#include <cstdlib>

#include "node/common/error.h"
#include "parallel/mpi/mpi_check.h"
#include "parallel/mpi/mpi_communicator.h"

namespace tpnode::mpi {

bool initialize(int& argc, char**& argv) {
  int initialized = 0;
  TPNODE_MPI_CHECK(MPI_Initialized(&initialized));
  int provided = MPI_THREAD_SINGLE;
  bool owns = false;
  if (!initialized) {
    TPNODE_MPI_CHECK(MPI_Init_thread(&argc, &argv, MPI_THREAD_MULTIPLE, &provided));
    owns = true;
  } else {
    TPNODE_MPI_CHECK(MPI_Query_thread(&provided));
  }
  TPNODE_MPI_CHECK(MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN));
  TPNODE_CHECK_KIND(provided >= MPI_THREAD_MULTIPLE, ErrorKind::kUnsupported,
                    "this MPI library provides thread level {}, but tpnode's heartbeat thread "
                    "needs MPI_THREAD_MULTIPLE ({})",
                    provided, MPI_THREAD_MULTIPLE);
  return owns;
}

Topology query_topology() {
  Topology t;
  TPNODE_MPI_CHECK(MPI_Comm_rank(MPI_COMM_WORLD, &t.rank));
  TPNODE_MPI_CHECK(MPI_Comm_size(MPI_COMM_WORLD, &t.size));
  // Ranks that share memory share a host: their order there picks the local GPU.
  MPI_Comm local = MPI_COMM_NULL;
  TPNODE_MPI_CHECK(
      MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, t.rank, MPI_INFO_NULL, &local));
  TPNODE_MPI_CHECK(MPI_Comm_rank(local, &t.local_rank));
  TPNODE_MPI_CHECK(MPI_Comm_size(local, &t.local_size));
  TPNODE_MPI_CHECK(MPI_Comm_free(&local));
  char name[256] = {};
  t.hostname = gethostname(name, sizeof(name) - 1) == 0 ? name : "unknown-host";
  return t;
}

std::unique_ptr<Communicator> make_world_communicator(const WorldOptions& options) {
  MpiCommunicatorOptions o;
  o.timeout_s = options.collective_timeout_s;
  o.heartbeat_interval_s = options.heartbeat_interval_s;
  o.abort_grace_s = options.abort_grace_s;
  return std::make_unique<MpiCommunicator>(MPI_COMM_WORLD, o);
}

double deferred_abort_in_s(const Communicator& comm) {
  const auto* mpi_comm = dynamic_cast<const MpiCommunicator*>(&comm);
  return mpi_comm == nullptr ? 0.0 : mpi_comm->deferred_abort_in_s();
}

bool closing_barrier(Communicator& comm, bool bounded) {
  auto* mpi_comm = dynamic_cast<MpiCommunicator*>(&comm);
  return mpi_comm == nullptr || mpi_comm->closing_barrier(bounded);
}

void finalize() {
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (!finalized) MPI_Finalize();
}

void abort_job(int exit_code) {
  MPI_Abort(MPI_COMM_WORLD, exit_code);
  std::_Exit(exit_code);  // MPI_Abort does not return; this keeps [[noreturn]] honest
}

}  // namespace tpnode::mpi
