// The subcommands of the `strata` command line. Each Add*Command registers one CLI11
// subcommand on `app`; when it runs, its callback stores the process exit code in *exit_code
// (0 success, 1 operation failed, 2 usage error).
#pragma once

#include "CLI/CLI.hpp"

namespace strata::cli {

void AddPlanCommand(CLI::App& app, int* exit_code);
void AddNodeCommands(CLI::App& app, int* exit_code);  // put, get, lookup, stats
void AddDemoCommand(CLI::App& app, int* exit_code);
void AddStatusCommand(CLI::App& app, int* exit_code);        // status --etcd | --node
void AddClusterCommand(CLI::App& app, int* exit_code);       // a local etcd + N nodes
void AddBenchTraceCommand(CLI::App& bench, int* exit_code);  // bench trace

}  // namespace strata::cli
