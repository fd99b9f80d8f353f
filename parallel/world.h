// This process's place in the tensor-parallel group, and the communicator that joins it to the
// others. Built once at start-up: under mpirun (or srun) MPI is initialised and every rank
// gets an MpiCommunicator; otherwise the process is a single rank and MPI is never touched.
//
// Ending: ~World finalizes MPI after a barrier when the group is healthy; when the
// communicator failed (a lost rank, or a rank that left mid-step) it calls MPI_Abort, which
// makes mpirun kill every rank and exit non-zero; after SIGINT/SIGTERM (mpirun's Ctrl-C) it
// leaves without MPI_Finalize, which would wait for ranks already gone.
#pragma once

#include <memory>
#include <string>

#include "parallel/communicator.h"

namespace tpnode {

struct Topology {
  int rank = 0, size = 1;              // in the tensor-parallel group (MPI_COMM_WORLD)
  int local_rank = 0, local_size = 1;  // among the ranks on this host (one per GPU)
  std::string hostname;
};

struct WorldOptions {
  // A peer silent this long (no heartbeat), or alive but absent from a collective inside a
  // step this long, is declared lost. With the abort that follows, every rank is gone about
  // timeout + 2 s after a rank dies or stops.
  double collective_timeout_s = 5.0;
  double heartbeat_interval_s = 0;  // 0: timeout / 10, at most 0.5 s
  // After a loss or any other failure of the group, how long the heartbeat thread leaves the
  // rank's own code to act on it (rank 0 answering its clients with errors) before it aborts
  // the job itself.
  double abort_grace_s = 1.0;
};

class World {
 public:
  // argc/argv go to MPI_Init_thread (which may remove MPI's own arguments).
  static std::unique_ptr<World> init(int& argc, char**& argv, const WorldOptions& options);
  ~World();
  World(const World&) = delete;
  World& operator=(const World&) = delete;

  const Topology& topology() const { return topology_; }
  Communicator& comm() { return *comm_; }
  bool uses_mpi() const { return mpi_; }

  // Ends every rank of the job now (MPI_Abort), or this process when there is no MPI. For a
  // rank's main after an error it cannot recover from.
  [[noreturn]] void abort(int exit_code);

 private:
  World() = default;
  Topology topology_;
  std::unique_ptr<Communicator> comm_;
  bool mpi_ = false;
  bool owns_mpi_ = false;  // this World initialised MPI, so it finalizes it
};

// True when a process manager (mpirun, srun, hydra) started this process as an MPI rank.
bool started_by_mpi_launcher();

}  // namespace tpnode
