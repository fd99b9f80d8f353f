// Logging per rank: rank 0 logs to stderr; every other rank writes <dir>/tpnode-rank<N>.log
// and sends only errors to the console, prefixed with its rank, so that N ranks do not
// interleave N copies of every message while a lost-rank error still shows where mpirun runs.
#pragma once

#include <spdlog/common.h>

#include <string>

#include "parallel/world.h"

namespace tpnode {

struct RankLogOptions {
  std::string dir = "logs";
  spdlog::level::level_enum level = spdlog::level::info;
};

// Replaces the default logger; returns the log file's path ("" on rank 0).
std::string setup_rank_logging(const Topology& topology, const RankLogOptions& options);

}  // namespace tpnode
