#include "parallel/rank_log.h"

#include <spdlog/sinks/basic_file_sink.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include <filesystem>
#include <system_error>

#include "node/common/error.h"

namespace tpnode {

std::string setup_rank_logging(const Topology& topology, const RankLogOptions& options) {
  const std::string pattern =
      fmt::format("[%Y-%m-%d %H:%M:%S.%e] [rank {}] [%^%l%$] %v", topology.rank);
  if (topology.rank == 0) {
    // stderr: stdout may carry the command's output (generated text).
    auto logger = std::make_shared<spdlog::logger>(
        "rank0", std::make_shared<spdlog::sinks::stderr_color_sink_mt>());
    if (topology.size > 1) logger->set_pattern(pattern);
    logger->set_level(options.level);
    spdlog::set_default_logger(logger);
    return "";
  }
  std::error_code ec;
  std::filesystem::create_directories(options.dir, ec);
  TPNODE_CHECK(!ec, "cannot create the log folder {}: {}", options.dir, ec.message());
  const std::string path =
      (std::filesystem::path(options.dir) / fmt::format("tpnode-rank{}.log", topology.rank))
          .string();
  auto file = std::make_shared<spdlog::sinks::basic_file_sink_mt>(path, /*truncate=*/true);
  file->set_level(options.level);
  auto console = std::make_shared<spdlog::sinks::stderr_color_sink_mt>();
  console->set_level(spdlog::level::err);
  auto logger = std::make_shared<spdlog::logger>(fmt::format("rank{}", topology.rank),
                                                 spdlog::sinks_init_list{file, console});
  logger->set_pattern(pattern);
  logger->set_level(options.level);
  // Ranks can be killed at any moment (that is what the logs are for): write through.
  logger->flush_on(spdlog::level::info);
  spdlog::set_default_logger(logger);
  return path;
}

}  // namespace tpnode
