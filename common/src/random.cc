#include "strata/common/random.h"

#include <openssl/err.h>
#include <openssl/rand.h>

#include <limits>

#include "absl/strings/str_cat.h"

namespace strata {

absl::Status RandomFill(void* out, size_t n) {
  if (n > static_cast<size_t>(std::numeric_limits<int>::max())) {
    return absl::InvalidArgumentError(absl::StrCat("RandomFill: ", n, " bytes at once"));
  }
  if (RAND_bytes(static_cast<unsigned char*>(out), static_cast<int>(n)) == 1) {
    return absl::OkStatus();
  }
  char reason[256] = "no reason given";
  if (unsigned long e = ERR_get_error(); e != 0) ERR_error_string_n(e, reason, sizeof(reason));
  ERR_clear_error();
  return absl::UnavailableError(
      absl::StrCat("the system's random source failed (OpenSSL RAND_bytes: ", reason, ")"));
}

absl::StatusOr<uint64_t> RandomU64() {
  uint64_t v = 0;
  if (absl::Status s = RandomFill(&v, sizeof(v)); !s.ok()) return s;
  return v;
}

absl::Status CheckRandomSource() {
  absl::StatusOr<uint64_t> probe = RandomU64();
  if (probe.ok()) return absl::OkStatus();
  return absl::FailedPreconditionError(
      absl::StrCat(probe.status().message(),
                   ": ids that are capabilities (data channels, leases, reservations) would be "
                   "guessable; fix the random source (OPENSSL_CONF, /dev/urandom)"));
}

}  // namespace strata
