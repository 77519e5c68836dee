#include "strata/common/threads.h"

#include <system_error>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace strata {

absl::StatusOr<std::thread> StartThread(absl::string_view what, std::function<void()> body) {
  try {
    return std::thread(std::move(body));
  } catch (const std::system_error& e) {
    return absl::ResourceExhaustedError(
        absl::StrCat("no thread could be started for ", what, ": ", e.what()));
  }
}

}  // namespace strata
