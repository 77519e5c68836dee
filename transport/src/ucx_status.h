// Conversion of UCX status codes (ucs_status_t) into absl::Status, done once where a UCX call
// returns. Stateless; thread-safe.
#pragma once

#include <ucs/type/status.h>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace strata::transport {

// OK for UCS_OK; otherwise the most specific absl code for `status` with a message
// "<what>: <UCX's text> (ucs_status_t <n>)". Peer and connection failures map to UNAVAILABLE,
// UCS_ERR_TIMED_OUT to DEADLINE_EXCEEDED, memory and resource shortage to RESOURCE_EXHAUSTED,
// bad parameters and addresses to INVALID_ARGUMENT, unsupported features to UNIMPLEMENTED,
// missing devices/transports to FAILED_PRECONDITION, UCS_ERR_CANCELED to CANCELLED and the
// rest to INTERNAL.
absl::Status UcsToStatus(ucs_status_t status, absl::string_view what);

}  // namespace strata::transport
