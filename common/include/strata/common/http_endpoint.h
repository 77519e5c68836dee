// HttpEndpoint: a plain-HTTP side door for a node or an agent — GET /metrics (Prometheus text),
// /healthz (process alive and not broken for good) and /readyz (serving calls; 503 while starting
// or draining). civetweb runs its own threads; the handlers only call the thread-safe functions
// they are given.
#pragma once

#include <functional>
#include <memory>
#include <string>

#include "absl/status/statusor.h"

struct mg_context;
struct mg_connection;

namespace strata {

class HttpEndpoint {
 public:
  struct Handlers {
    std::function<std::string()> metrics;
    std::function<bool()> ready;
    // Why the process cannot recover without a restart ("" when it can): /healthz answers 503
    // with it, so a supervisor (Kubernetes' liveness probe) restarts it. Unset: always 200.
    std::function<std::string()> broken;
  };

  // Listens on HOST:PORT (port 0: any free port). UNAVAILABLE if it cannot bind.
  static absl::StatusOr<std::unique_ptr<HttpEndpoint>> Start(const std::string& listen,
                                                             Handlers handlers);
  ~HttpEndpoint();

  // HOST:PORT actually bound.
  const std::string& address() const { return address_; }

 private:
  HttpEndpoint() = default;
  static int Handle(::mg_connection* conn, void* self);

  ::mg_context* ctx_ = nullptr;
  Handlers handlers_;
  std::string address_;
};

}  // namespace strata
