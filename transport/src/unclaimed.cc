// UCX's unexpected queue: two-sided messages that arrived before any receive was posted for
// them. UCX keeps an eager message's bytes (and a rendezvous message's header) there until a
// receive matches it, for as long as the worker lives; these run Worker's commands that look
// at and empty it for messages no call will claim, on the progress thread.
#include <ucp/api/ucp.h>

#include <algorithm>
#include <cstdint>
#include <optional>

#include "worker_state.h"

namespace strata::transport::worker_state {
namespace {

std::optional<uint64_t> Oldest(ucp_worker_h worker, uint64_t tag, uint64_t mask) {
  ucp_tag_recv_info_t info{};
  // Without removing: UCX matches in arrival order, so this is the oldest matching message.
  if (ucp_tag_probe_nb(worker, tag, mask, /*remove=*/0, &info) == nullptr) return std::nullopt;
  return info.sender_tag;
}

uint64_t Drop(ucp_worker_h worker, uint64_t tag, uint64_t mask) {
  // A zero-byte receive: an eager message's bytes are released, a rendezvous message is
  // answered as truncated without its payload being pulled; the request ends with
  // MESSAGE_TRUNCATED (or OK for an empty message), which nobody needs to see.
  static uint8_t nowhere[1];
  uint64_t dropped = 0;
  for (;;) {
    ucp_tag_recv_info_t info{};
    ucp_tag_message_h msg = ucp_tag_probe_nb(worker, tag, mask, /*remove=*/1, &info);
    if (msg == nullptr) return dropped;
    ucp_request_param_t param{};
    ucs_status_ptr_t req = ucp_tag_msg_recv_nbx(worker, nowhere, 0, msg, &param);
    if (UCS_PTR_IS_PTR(req)) ucp_request_free(req);  // UCX completes and releases it
    ++dropped;
  }
}

}  // namespace

void RunUnclaimed(ucp_worker_h worker, Command* cmd) {
  const uint64_t mask = cmd->tag_mask;
  switch (cmd->type) {
    case Command::Type::kOldestUnclaimed:
      for (uint64_t tag : cmd->tags) cmd->oldest.push_back(Oldest(worker, tag, mask));
      break;
    case Command::Type::kDropUnclaimed:
      for (uint64_t tag : cmd->tags) cmd->dropped += Drop(worker, tag, mask);
      break;
    case Command::Type::kDropUnclaimedUnless:
      for (;;) {
        const std::optional<uint64_t> first = Oldest(worker, 0, 0);
        if (!first.has_value()) break;
        const uint64_t key = *first & mask;
        auto kept = [&](uint64_t k) { return (k & mask) == key; };
        if (std::any_of(cmd->tags.begin(), cmd->tags.end(), kept)) break;
        cmd->dropped += Drop(worker, key, mask);
      }
      break;
    default:
      break;
  }
}

}  // namespace strata::transport::worker_state
