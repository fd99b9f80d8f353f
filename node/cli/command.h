// Subcommands of the tpnode binary register themselves here, one file each
// (node/cli/<name>_command.cpp), so main.cpp never changes when a command is added.
#pragma once

#include <CLI/CLI.hpp>

#include <functional>
#include <string>
#include <vector>

namespace tpnode::cli {

// setup() adds the subcommand's options to `sub` and returns the function run when the
// subcommand is chosen; that function returns the process exit code.
struct Command {
  std::string name;
  std::string help;
  std::function<std::function<int()>(CLI::App& sub)> setup;
};

std::vector<Command>& command_registry();

struct RegisterCommand {
  explicit RegisterCommand(Command c) { command_registry().push_back(std::move(c)); }
};

}  // namespace tpnode::cli
