#include "strata/common/config.h"

#include <cstdio>
#include <fstream>
#include <map>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "strata/testutil/status_matchers.h"

namespace strata {
namespace {

using ::strata::testutil::IsOk;
using ::strata::testutil::StatusIs;
using ::testing::HasSubstr;

struct Fixture {
  std::string listen = "127.0.0.1:7070";
  uint64_t warm_bytes = 1 << 20;
  uint64_t max_keys = 4096;
  uint64_t ttl_ms = 30000;
  bool fault = false;
  ConfigSchema schema{"prog", "test program"};
  std::map<std::string, std::string> env;

  Fixture() {
    schema.AddString("listen", &listen, "gRPC address");
    schema.AddBytes("warm_bytes", &warm_bytes, "arena size");
    schema.AddUint("max_keys_per_call", &max_keys, "keys per call");
    schema.AddDurationMs("reservation_ttl", &ttl_ms, "reservation lifetime");
    schema.AddBool("debug_fault_injection", &fault, "test only");
  }
  absl::StatusOr<ConfigSchema::Outcome> Parse(std::vector<const char*> args) {
    args.insert(args.begin(), "prog");
    return schema.Parse(static_cast<int>(args.size()), args.data(),
                        [this](const std::string& n) -> std::optional<std::string> {
                          auto it = env.find(n);
                          if (it == env.end()) return std::nullopt;
                          return it->second;
                        });
  }
};

std::string WriteTemp(const std::string& text) {
  char path[] = "/tmp/strata_config_test_XXXXXX";
  int fd = mkstemp(path);
  close(fd);
  std::ofstream(path) << text;
  return path;
}

TEST(ConfigSchemaTest, DefaultsStayWithoutInput) {
  Fixture f;
  ASSERT_THAT(f.Parse({}), IsOk());
  EXPECT_EQ(f.warm_bytes, 1u << 20);
  EXPECT_EQ(f.listen, "127.0.0.1:7070");
}

TEST(ConfigSchemaTest, FlagBeatsEnvBeatsFile) {
  Fixture f;
  std::string path = WriteTemp("warm_bytes: 2GiB\nmax_keys_per_call: 10\nlisten: 0.0.0.0:1\n");
  f.env["STRATA_WARM_BYTES"] = "3GiB";
  f.env["STRATA_MAX_KEYS_PER_CALL"] = "20";
  ASSERT_THAT(f.Parse({"--config", path.c_str(), "--warm-bytes=4GiB"}), IsOk());
  EXPECT_EQ(f.warm_bytes, 4ull << 30);  // flag
  EXPECT_EQ(f.max_keys, 20u);           // env over file
  EXPECT_EQ(f.listen, "0.0.0.0:1");     // file over default
  std::remove(path.c_str());
}

TEST(ConfigSchemaTest, ParsesEveryKind) {
  Fixture f;
  ASSERT_THAT(
      f.Parse({"--reservation-ttl", "2s", "--debug-fault-injection", "--listen", "[::1]:9"}),
      IsOk());
  EXPECT_EQ(f.ttl_ms, 2000u);
  EXPECT_TRUE(f.fault);
  EXPECT_EQ(f.listen, "[::1]:9");
}

TEST(ConfigSchemaTest, HelpIsAnOutcomeAndDocumentsEveryOption) {
  Fixture f;
  auto r = f.Parse({"--help"});
  ASSERT_THAT(r, IsOk());
  EXPECT_EQ(*r, ConfigSchema::Outcome::kHelp);
  std::string help = f.schema.Help();
  EXPECT_THAT(help, HasSubstr("--warm-bytes"));
  EXPECT_THAT(help, HasSubstr("STRATA_RESERVATION_TTL"));
  EXPECT_THAT(help, HasSubstr("arena size"));
}

TEST(ConfigSchemaTest, ErrorsNameTheOptionAndSource) {
  Fixture f;
  EXPECT_THAT(f.Parse({"--no-such-flag", "1"}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("no_such_flag")));
  Fixture g;
  g.env["STRATA_WARM_BYTES"] = "lots";
  EXPECT_THAT(g.Parse({}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("STRATA_WARM_BYTES")));
  Fixture h;
  std::string path = WriteTemp("warm_byte: 1GiB\n");
  EXPECT_THAT(h.Parse({"--config", path.c_str()}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("unknown key 'warm_byte'")));
  std::remove(path.c_str());
  Fixture i;
  std::string bad = WriteTemp("warm_bytes: [1, 2\n");
  EXPECT_THAT(i.Parse({"--config", bad.c_str()}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr(bad)));
  std::remove(bad.c_str());
  Fixture j;
  EXPECT_THAT(j.Parse({"--config", "/nonexistent/strata.yaml"}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("cannot read")));
  // The directory a ConfigMap is mounted at, given for the file in it: before, it read as an
  // empty file and the node started on its defaults.
  Fixture dir;
  EXPECT_THAT(dir.Parse({"--config", "/tmp"}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("'/tmp' is a directory")));
  Fixture k;
  EXPECT_THAT(k.Parse({"--reservation-ttl", "soon"}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("reservation_ttl")));
  // Longer than a year is refused: "inf" used to become INT64_MAX ms, whose deadline
  // overflowed into the past.
  for (const char* forever : {"inf", "100000000h", "99999999999999"}) {
    Fixture l;
    EXPECT_THAT(l.Parse({"--reservation-ttl", forever}),
                StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("longer than a year")))
        << forever;
  }
}

}  // namespace
}  // namespace strata
