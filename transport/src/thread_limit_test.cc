// A process at its thread limit (RLIMIT_NPROC, a container's pids.max) gets an error from the
// transport, not the end of the process: std::thread's std::system_error used to escape the
// worker's constructor. The limit is real: a re-executed child of this binary (gtest's
// "threadsafe" death test) takes an unused uid, whose only tasks are its own, and an
// RLIMIT_NPROC it has already reached.

#include "strata/testutil/thread_limit.h"

#include <cstdlib>
#include <memory>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "strata/transport/context.h"
#include "strata/transport/worker.h"

namespace strata::transport {
namespace {

// Whether `s` says that no thread could be started for `what` (not another shortage UCX
// reports as RESOURCE_EXHAUSTED).
bool NoThread(const absl::Status& s, absl::string_view what) {
  return s.code() == absl::StatusCode::kResourceExhausted &&
         absl::StrContains(s.message(), absl::StrCat("no thread could be started for ", what));
}

// Exits 0 when a second worker, whose progress thread cannot start, is RESOURCE_EXHAUSTED;
// 1 when it is created anyway (the limit did not hold), 2 for any other status.
[[noreturn]] void CreateAWorkerAtTheLimit() {
  absl::StatusOr<std::unique_ptr<Context>> context = Context::Create({.tls = "tcp"});
  if (!context.ok()) std::_Exit(3);
  // The context and a first worker have started what threads UCX keeps (its async thread).
  absl::StatusOr<std::unique_ptr<Worker>> first = (*context)->CreateWorker();
  if (!first.ok()) std::_Exit(3);
  testutil::ReachTheThreadLimit();
  absl::StatusOr<std::unique_ptr<Worker>> second = (*context)->CreateWorker();
  if (second.ok()) std::_Exit(1);
  std::_Exit(NoThread(second.status(), "a UCX worker") ? 0 : 2);
}

// Exits 0 when the process's first context is RESOURCE_EXHAUSTED: ucp_init would start UCX's
// async thread and, failing, abort the process (UCX 1.13 asserts).
[[noreturn]] void CreateAContextAtTheLimit() {
  testutil::ReachTheThreadLimit();
  absl::StatusOr<std::unique_ptr<Context>> context = Context::Create({.tls = "tcp"});
  if (context.ok()) std::_Exit(1);
  std::_Exit(NoThread(context.status(), "UCX's async thread") ? 0 : 2);
}

TEST(ThreadLimitTest, AContextWhoseUcxThreadCannotStartIsResourceExhausted) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_EXIT(CreateAContextAtTheLimit(), testing::ExitedWithCode(0), "");
}

TEST(ThreadLimitTest, AWorkerWhoseThreadCannotStartIsResourceExhausted) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_EXIT(CreateAWorkerAtTheLimit(), testing::ExitedWithCode(0), "");
}

}  // namespace
}  // namespace strata::transport
