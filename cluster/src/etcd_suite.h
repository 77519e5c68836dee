// The etcd test suites' fixture (etcd_client_test.cc, membership_history_test.cc): a real etcd
// (LocalEtcd, /usr/bin/etcd on free loopback ports) started once per suite, and a client of
// it per test.
#pragma once

#include <memory>

#include "absl/time/time.h"
#include "gtest/gtest.h"
#include "strata/cluster/etcd_client.h"
#include "strata/cluster/local_etcd.h"
#include "strata/testutil/status_matchers.h"

namespace strata::cluster {

class EtcdSuite : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    absl::StatusOr<std::unique_ptr<LocalEtcd>> etcd = LocalEtcd::Start({});
    ASSERT_THAT(etcd, testutil::IsOk());
    etcd_ = std::move(*etcd);
  }
  static void TearDownTestSuite() { etcd_.reset(); }

  void SetUp() override {
    ASSERT_NE(etcd_, nullptr) << "etcd did not start";
    auto client =
        EtcdClient::Create({.endpoints = {etcd_->endpoint()}, .request_timeout = absl::Seconds(2)});
    ASSERT_THAT(client, testutil::IsOk());
    client_ = std::move(*client);
  }

  // One suite runs at a time: each starts and stops its own etcd here.
  inline static std::unique_ptr<LocalEtcd> etcd_;
  std::unique_ptr<EtcdClient> client_;
};

}  // namespace strata::cluster
