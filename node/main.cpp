// The tpnode command: serve, generate, inspect, bench, ... (see node/cli/).
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <exception>
#include <map>

#include "node/cli/command.h"
#include "node/common/error.h"

namespace tpnode::cli {
std::vector<Command>& command_registry() {
  static std::vector<Command> commands;
  return commands;
}
}  // namespace tpnode::cli

int main(int argc, char** argv) {
  using namespace tpnode::cli;
  // Logs go to stderr: stdout carries generated text and command output.
  spdlog::set_default_logger(spdlog::stderr_color_mt("tpnode"));
  CLI::App app{"tpnode: a tensor-parallel LLM serving node"};
  app.require_subcommand(1);
  app.set_version_flag("--version", "tpnode 0.1.0");
  auto& commands = command_registry();
  std::sort(commands.begin(), commands.end(),
            [](const Command& a, const Command& b) { return a.name < b.name; });
  std::map<CLI::App*, std::function<int()>> runners;
  for (auto& c : commands) {
    CLI::App* sub = app.add_subcommand(c.name, c.help);
    runners[sub] = c.setup(*sub);
  }
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  for (auto& [sub, run] : runners) {
    if (sub->parsed()) {
      try {
        return run();
      } catch (const tpnode::Error& e) {
        spdlog::error("{}", e.what());
        return 1;
      } catch (const std::exception& e) {
        spdlog::error("internal error: {}", e.what());
        return 1;
      }
    }
  }
  return 1;
}
