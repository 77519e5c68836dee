#include "ucx_status.h"

#include <string_view>

#include "absl/strings/cord.h"
#include "absl/strings/str_cat.h"
#include "strata/transport/worker.h"

namespace strata::transport {
namespace {

absl::StatusCode CodeFor(ucs_status_t status) {
  // Link and endpoint failures are ranges of codes, not single values.
  if ((status <= UCS_ERR_FIRST_LINK_FAILURE && status >= UCS_ERR_LAST_LINK_FAILURE) ||
      (status <= UCS_ERR_FIRST_ENDPOINT_FAILURE && status >= UCS_ERR_LAST_ENDPOINT_FAILURE)) {
    return absl::StatusCode::kUnavailable;
  }
  switch (status) {
    case UCS_OK:
      return absl::StatusCode::kOk;
    case UCS_ERR_NO_MEMORY:
    case UCS_ERR_NO_RESOURCE:
    case UCS_ERR_EXCEEDS_LIMIT:
      return absl::StatusCode::kResourceExhausted;
    case UCS_ERR_OUT_OF_RANGE:
      return absl::StatusCode::kOutOfRange;
    case UCS_ERR_INVALID_PARAM:
    case UCS_ERR_INVALID_ADDR:
    case UCS_ERR_BUFFER_TOO_SMALL:
    case UCS_ERR_MESSAGE_TRUNCATED:
      return absl::StatusCode::kInvalidArgument;
    case UCS_ERR_UNREACHABLE:
    case UCS_ERR_CONNECTION_RESET:
    case UCS_ERR_ENDPOINT_TIMEOUT:
    case UCS_ERR_NOT_CONNECTED:
    case UCS_ERR_REJECTED:
    case UCS_ERR_IO_ERROR:
    case UCS_ERR_SOME_CONNECTS_FAILED:
    case UCS_ERR_BUSY:
    case UCS_ERR_NO_PROGRESS:
    case UCS_ERR_SHMEM_SEGMENT:
      return absl::StatusCode::kUnavailable;
    case UCS_ERR_TIMED_OUT:
      return absl::StatusCode::kDeadlineExceeded;
    case UCS_ERR_CANCELED:
      return absl::StatusCode::kCancelled;
    case UCS_ERR_UNSUPPORTED:
    case UCS_ERR_NOT_IMPLEMENTED:
      return absl::StatusCode::kUnimplemented;
    case UCS_ERR_NO_DEVICE:
    case UCS_ERR_NO_ELEM:
    case UCS_ERR_ALREADY_EXISTS:
      return absl::StatusCode::kFailedPrecondition;
    case UCS_ERR_NO_MESSAGE:
    case UCS_INPROGRESS:
    default:
      return absl::StatusCode::kInternal;
  }
}

}  // namespace

absl::Status UcsToStatus(ucs_status_t status, absl::string_view what) {
  if (status == UCS_OK) return absl::OkStatus();
  return absl::Status(CodeFor(status),
                      absl::StrCat(what, ": ", ucs_status_string(status), " (ucs_status_t ",
                                   static_cast<int>(status), ")"));
}

constexpr absl::string_view kAbandonedPayload = "strata.transport/requests-abandoned";

absl::Status RequestsAbandonedError(std::string_view message) {
  absl::Status s = absl::DeadlineExceededError(absl::string_view(message.data(), message.size()));
  s.SetPayload(kAbandonedPayload, absl::Cord("1"));
  return s;
}

bool RequestsAbandoned(const absl::Status& status) {
  return status.GetPayload(kAbandonedPayload).has_value();
}

}  // namespace strata::transport
