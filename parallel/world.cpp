#include "parallel/world.h"

#include <spdlog/spdlog.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <exception>
#include <thread>

#include "node/common/error.h"
#include "parallel/local_communicator.h"
#include "parallel/stop_signal.h"
#ifdef TPNODE_HAVE_MPI
#include "parallel/mpi/mpi_world.h"
#endif

namespace tpnode {

bool started_by_mpi_launcher() {
  // The launcher's own variables are the only way to know before MPI_Init, which must not
  // run in a plain `tpnode` process (it would need an MPI runtime for nothing). Read once,
  // at start-up. Open MPI's mpirun; PMIx (srun --mpi=pmix, prrte); PMI/PMI2 (MPICH hydra,
  // srun --mpi=pmi2).
  for (const char* var : {"OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_RANK", "PMI_SIZE"}) {
    if (std::getenv(var) != nullptr) return true;
  }
  return false;
}

std::unique_ptr<World> World::init(int& argc, char**& argv, const WorldOptions& options) {
  TPNODE_CHECK(options.collective_timeout_s > 0, "collective timeout must be positive (got {} s)",
               options.collective_timeout_s);
  std::unique_ptr<World> world(new World());
  if (!started_by_mpi_launcher()) {
    char name[256] = {};
    world->topology_.hostname = gethostname(name, sizeof(name) - 1) == 0 ? name : "unknown-host";
    world->comm_ = std::make_unique<LocalCommunicator>();
    return world;
  }
#ifdef TPNODE_HAVE_MPI
  world->owns_mpi_ = mpi::initialize(argc, argv);
  world->mpi_ = true;
  world->topology_ = mpi::query_topology();
  world->comm_ = mpi::make_world_communicator(options);
  return world;
#else
  TPNODE_THROW(ErrorKind::kUnsupported,
               "started by an MPI launcher, but this tpnode was built without MPI "
               "(-DTPNODE_MPI=OFF); run it without mpirun for a single rank");
#endif
}

World::~World() {
  if (!mpi_) return;
#ifdef TPNODE_HAVE_MPI
  if (stop_requested()) {
    // mpirun is already ending the job; MPI_Finalize would wait for ranks that are gone.
    spdlog::info("rank {}: stopped by signal {}", topology_.rank, stop_signal());
    spdlog::default_logger()->flush();
    comm_.reset();
    return;
  }
  if (comm_ && comm_->failed()) {
    // Peers may be inside a collective that will never complete; only the launcher can end
    // them.
    const double defer_s = mpi::deferred_abort_in_s(*comm_);
    if (defer_s > 0) {
      // Rank 0 saw the same loss and answers its clients before it ends the job.
      spdlog::info("rank {}: leaving the abort to rank 0 for {:.1f} s", topology_.rank, defer_s);
      std::this_thread::sleep_for(std::chrono::duration<double>(defer_s + 0.5));
    }
    spdlog::error("rank {}: aborting the job: {}", topology_.rank, comm_->failure());
    spdlog::default_logger()->flush();
    mpi::abort_job(1);
  }
  // Leaving on an exception, this rank cannot know where the others are (still loading,
  // inside a step, or leaving on the same error): wait for them a bounded time only.
  const bool unwinding = std::uncaught_exceptions() > 0;
  if (comm_ && !mpi::closing_barrier(*comm_, unwinding)) {
    spdlog::error("rank {}: {}: aborting the job", topology_.rank,
                  unwinding ? "leaving on an error, and the other ranks did not follow"
                            : "not every rank reached the end");
    spdlog::default_logger()->flush();
    mpi::abort_job(1);
  }
  comm_.reset();
  if (owns_mpi_) mpi::finalize();
#endif
}

void World::abort(int exit_code) {
  spdlog::default_logger()->flush();
#ifdef TPNODE_HAVE_MPI
  if (mpi_) mpi::abort_job(exit_code);
#endif
  std::exit(exit_code);
}

}  // namespace tpnode
