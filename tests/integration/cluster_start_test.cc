// Starting and stopping around etcd: a node started before etcd waits for it (and stops at
// once on SIGTERM meanwhile), and a cluster client whose nodes all left answers UNAVAILABLE.
#include <signal.h>

#include <string>
#include <thread>

#include "cluster_fixture.h"

namespace strata::cluster_test {
namespace {

// etcd and the nodes often start together: a node started while etcd is down waits up to
// etcd_startup for it and joins once it is up; with too short a wait it exits, naming etcd.
// A cluster client whose last node left (SIGTERM deregisters it) answers UNAVAILABLE for every
// call. Before, Stats read member 0 of an empty set and a Lookup divided by the member count:
// both killed the process (the Lookup found in review, Stats by this test).
TEST(ClusterStartTest, AClientWhoseNodesAllLeftAnswersUnavailable) {
  auto etcd = cluster::LocalEtcd::Start({});
  ASSERT_TRUE(etcd.ok()) << etcd.status();
  auto node = testutil::StartNode({"--node-id", "last", "--cluster-mode", "etcd",
                                   "--etcd-endpoints", (*etcd)->endpoint(), "--cluster-name",
                                   "last", "--warm-bytes", "64MiB", "--ucx-tls", ""});
  ASSERT_THAT(node, IsOk());
  ClientOptions o;
  o.etcd_endpoints = (*etcd)->endpoint();
  o.cluster_name = "last";
  o.default_deadline = absl::Seconds(5);
  auto c = StoreClient::Connect(o);
  ASSERT_THAT(c, IsOk());
  auto ns = (*c)->RegisterNamespace(Spec());
  ASSERT_THAT(ns, IsOk());
  const std::vector<ChainHash> chain = testutil::PromptChain(*ns, 12, 4);
  ASSERT_THAT((*c)->Lookup(*ns, "", chain), IsOk());
  ASSERT_THAT((*node)->Stop(absl::Seconds(20)), IsOk());
  for (absl::Time end = absl::Now() + absl::Seconds(15); absl::Now() < end;) {
    auto st = (*c)->Stats();
    if (!st.ok() || st->members == 0) break;
    absl::SleepFor(absl::Milliseconds(50));
  }
  EXPECT_THAT((*c)->Stats(), StatusIs(absl::StatusCode::kUnavailable));
  EXPECT_THAT((*c)->Lookup(*ns, "", chain), StatusIs(absl::StatusCode::kUnavailable));
  EXPECT_THAT((*c)->LookupEach(*ns, "", chain), StatusIs(absl::StatusCode::kUnavailable));
  std::vector<uint8_t> buf(kBlock, 1);
  BlockWrite write{chain[0], buf.data(), kBlock};
  EXPECT_THAT((*c)->Put(*ns, "", {&write, 1}), StatusIs(absl::StatusCode::kUnavailable));
  BlockRead read{chain[0], buf.data(), kBlock};
  EXPECT_THAT((*c)->Get(*ns, "", {&read, 1}), StatusIs(absl::StatusCode::kUnavailable));
  EXPECT_THAT((*c)->Delete(*ns, "", chain), StatusIs(absl::StatusCode::kUnavailable));
}

TEST(ClusterStartTest, ANodeStartedBeforeEtcdWaitsForIt) {
  auto etcd = cluster::LocalEtcd::Start({});
  ASSERT_TRUE(etcd.ok()) << etcd.status();
  ASSERT_THAT((*etcd)->Stop(), IsOk());
  auto args = [&](const std::string& wait_ms) {
    return std::vector<std::string>{"--node-id",        "early",
                                    "--cluster-mode",   "etcd",
                                    "--etcd-endpoints", (*etcd)->endpoint(),
                                    "--cluster-name",   "early",
                                    "--etcd-startup",   wait_ms,
                                    "--warm-bytes",     "64MiB",
                                    "--ucx-tls",        ""};
  };
  auto impatient = testutil::StartNode(args("1000"));
  EXPECT_THAT(impatient, StatusIs(absl::StatusCode::kUnavailable));
  // etcd comes up 3 s after the node. The thread that restarts it stays until the end: etcd
  // dies with the thread that started it (PR_SET_PDEATHSIG).
  absl::Status restarted;
  absl::Notification restarted_done, test_done;
  std::thread starter([&] {
    absl::SleepFor(absl::Seconds(3));
    restarted = (*etcd)->Restart();
    restarted_done.Notify();
    test_done.WaitForNotification();
  });
  auto patient = testutil::StartNode(args("30000"), absl::Seconds(40));
  restarted_done.WaitForNotification();
  EXPECT_THAT(restarted, IsOk());
  EXPECT_THAT(patient, IsOk());
  if (patient.ok()) {
    auto client = cluster::EtcdClient::Create({.endpoints = {(*etcd)->endpoint()}});
    ASSERT_TRUE(client.ok());
    auto registered = (*client)->GetPrefix("/strata/early/nodes/");
    ASSERT_TRUE(registered.ok()) << registered.status();
    EXPECT_EQ(registered->kvs.size(), 1u);
  }
  patient = absl::CancelledError("done");  // the node goes before etcd
  test_done.Notify();
  starter.join();
}

// A node still waiting for etcd stops at once on SIGTERM (exit code 0, as a drain), instead of
// holding a pod's termination for the rest of etcd_startup.
TEST(ClusterStartTest, ANodeWaitingForEtcdStopsAtOnceOnSigterm) {
  auto etcd = cluster::LocalEtcd::Start({});
  ASSERT_TRUE(etcd.ok()) << etcd.status();
  ASSERT_THAT((*etcd)->Stop(), IsOk());
  absl::StatusOr<std::unique_ptr<LocalNode>> node = absl::UnknownError("not started");
  std::thread starting([&] {
    node = testutil::StartNode(
        {"--node-id", "stopped-early", "--cluster-mode", "etcd", "--etcd-endpoints",
         (*etcd)->endpoint(), "--cluster-name", "stopped-early", "--etcd-startup", "600000",
         "--warm-bytes", "64MiB", "--ucx-tls", ""},
        absl::Seconds(30));
  });
  // The node process is this process's child with --node-id stopped-early.
  pid_t pid = 0;
  for (int i = 0; i < 500 && pid == 0; ++i) {
    absl::SleepFor(absl::Milliseconds(10));
    std::error_code ec;
    for (auto it = std::filesystem::directory_iterator("/proc", ec);
         !ec && it != std::filesystem::directory_iterator(); it.increment(ec)) {
      std::ifstream stat(it->path() / "stat"), cmdline(it->path() / "cmdline");
      std::string line, args;
      std::getline(stat, line);
      std::getline(cmdline, args, '\x01');  // the NUL-separated arguments, whole
      const size_t comm_end = line.rfind(") ");
      if (comm_end == std::string::npos) continue;  // not a process, or gone
      std::vector<std::string> f = absl::StrSplit(line.substr(comm_end + 2), ' ');
      if (f.size() > 1 && f[1] == std::to_string(getpid()) &&
          args.find("stopped-early") != std::string::npos) {
        pid = static_cast<pid_t>(std::strtol(it->path().filename().c_str(), nullptr, 10));
      }
    }
  }
  EXPECT_NE(pid, 0) << "node process not found";
  if (pid != 0) {
    absl::SleepFor(absl::Seconds(2));  // well into its wait for etcd
    kill(pid, SIGTERM);
  }
  starting.join();
  // Exit code 0: the node's own handler ended it (an unhandled SIGTERM reads 143), and it did
  // not wait out the 600 s.
  EXPECT_THAT(node.status(), StatusIs(absl::StatusCode::kUnavailable,
                                      ::testing::HasSubstr("exited with code 0 ")));
}

}  // namespace
}  // namespace strata::cluster_test
