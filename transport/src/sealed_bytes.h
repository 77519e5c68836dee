// Envelopes for the opaque UCX blobs that cross the network: worker addresses and packed
// rkeys. UCX parses both without a length (ucp_ep_create, ucp_ep_rkey_unpack), so garbage or
// truncated bytes from a peer could make it read out of bounds; sealing adds a tag, the length
// and an xxh3-64 checksum, checked before UCX sees a byte.
//
// Layout (little-endian): tag[4] | payload_len u32 | payload | xxh3-64(tag..payload) u64.
// This catches corruption and mix-ups (an address where an rkey belongs), not forgery: the
// blobs come from peers authenticated by the control plane (DESIGN.md §7).
//
// Stateless; thread-safe.
#pragma once

#include <cstddef>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace strata::transport {

// 4-byte tags.
inline constexpr absl::string_view kRkeyTag = "SRK1";
inline constexpr absl::string_view kWorkerAddressTag = "SWA1";

// Wraps `payload` under `tag` (4 bytes). REQUIRES: tag.size() == 4, payload < 4 GiB.
std::string Seal(absl::string_view tag, const void* payload, size_t payload_len);

// The payload of `sealed` (a view into it). INVALID_ARGUMENT naming `what` when the bytes are
// too short, carry another tag, a length that does not match, or a wrong checksum.
absl::StatusOr<absl::string_view> Unseal(absl::string_view tag, absl::string_view sealed,
                                         absl::string_view what);

// Whether an unsealed rkey holds what ucp_ep_rkey_unpack will read (UCX 1.13's layout: md_map
// u64 | memory type u8 | per bit of md_map: size u8 + that many bytes | optional device
// tail): the seal catches corruption, not a peer that seals a crafted blob whose md_map
// claims more memory domains than it carries, over which UCX would read past the end.
// INVALID_ARGUMENT naming what does not fit.
absl::Status CheckPackedRkeyLayout(absl::string_view packed);

// `packed` followed by zeros: each memory domain's unpack reads its own fixed layout (up to
// 255 bytes) whatever size the blob declares for it, so a blob that declares less is read
// into the zeros, not past the buffer.
std::string PadForUcx(absl::string_view packed);

}  // namespace strata::transport
