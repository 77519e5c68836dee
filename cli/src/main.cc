// `strata`: the command line — capacity planning, debugging calls against a node, the demo.
#include <cstdio>

#include "CLI/CLI.hpp"
#include "commands.h"
#include "strata/common/logging.h"
#include "strata/common/malloc_tuning.h"

int main(int argc, char** argv) {
  strata::TuneMalloc(strata::MallocTuning::Client());  // the demo and the bench commands make many
                                                       // calls (malloc_tuning.h)
  // Library log lines go to stderr, warnings and worse only: stdout carries the output.
  if (!strata::InitLogging("warn", "strata").ok()) return 2;
  CLI::App app{"strata: command line for the Strata KV-cache store"};
  app.require_subcommand(1);
  int exit_code = 0;
  strata::cli::AddPlanCommand(app, &exit_code);
  strata::cli::AddNodeCommands(app, &exit_code);
  strata::cli::AddStatusCommand(app, &exit_code);
  strata::cli::AddClusterCommand(app, &exit_code);
  strata::cli::AddDemoCommand(app, &exit_code);
  CLI::App* bench = app.add_subcommand("bench", "Offline benchmarks: replay request traces");
  bench->require_subcommand(1);
  strata::cli::AddBenchTraceCommand(*bench, &exit_code);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    // CLI11 reports usage errors by exception; this is the one boundary where we catch them.
    int rc = app.exit(e);
    return rc == 0 ? 0 : 2;
  }
  return exit_code;
}
