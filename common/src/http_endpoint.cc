#include "strata/common/http_endpoint.h"

#include <civetweb.h>

#include <cstring>

#include "absl/strings/str_cat.h"

namespace strata {
namespace {

void Reply(mg_connection* conn, int code, const char* reason, const char* type,
           const std::string& body) {
  mg_printf(conn,
            "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n"
            "Connection: close\r\n\r\n",
            code, reason, type, body.size());
  mg_write(conn, body.data(), body.size());
}

}  // namespace

absl::StatusOr<std::unique_ptr<HttpEndpoint>> HttpEndpoint::Start(const std::string& listen,
                                                                  Handlers handlers) {
  size_t colon = listen.rfind(':');
  if (colon == std::string::npos) {
    return absl::InvalidArgumentError(absl::StrCat("http_listen: '", listen, "' is not HOST:PORT"));
  }
  std::string host = listen.substr(0, colon);
  std::unique_ptr<HttpEndpoint> ep(new HttpEndpoint());
  ep->handlers_ = std::move(handlers);
  // A connection that sends no request holds a worker until request_timeout_ms (civetweb's
  // default: 30 s): with the 2 workers this had, two idle connections (no auth needed) kept
  // /healthz and /readyz from answering within a probe's timeout, and Kubernetes restarted
  // the node. Now such connections hold 8 workers for at most 2 s each.
  const char* options[] = {"listening_ports",    listen.c_str(), "num_threads", "8",
                           "request_timeout_ms", "2000",         nullptr};
  mg_callbacks callbacks;
  std::memset(&callbacks, 0, sizeof(callbacks));
  // Silence civetweb's own stderr logging; a failed bind is reported by mg_start's result.
  callbacks.log_message = [](const mg_connection*, const char*) { return 1; };
  ep->ctx_ = mg_start(&callbacks, ep.get(), options);
  if (ep->ctx_ == nullptr) {
    return absl::UnavailableError(absl::StrCat("http_listen: cannot listen on ", listen));
  }
  mg_set_request_handler(ep->ctx_, "/", &HttpEndpoint::Handle, ep.get());
  mg_server_port ports[1];
  int n = mg_get_server_ports(ep->ctx_, 1, ports);
  if (n < 1) return absl::InternalError("http_listen: no listening port after start");
  ep->address_ = absl::StrCat(host, ":", ports[0].port);
  return ep;
}

HttpEndpoint::~HttpEndpoint() {
  if (ctx_ != nullptr) mg_stop(ctx_);
}

int HttpEndpoint::Handle(mg_connection* conn, void* self_ptr) {
  auto* self = static_cast<HttpEndpoint*>(self_ptr);
  const mg_request_info* info = mg_get_request_info(conn);
  std::string uri = info->local_uri != nullptr ? info->local_uri : "";
  if (uri == "/metrics") {
    Reply(conn, 200, "OK", "text/plain; version=0.0.4", self->handlers_.metrics());
  } else if (uri == "/healthz") {
    const std::string why = self->handlers_.broken ? self->handlers_.broken() : std::string();
    if (why.empty()) {
      Reply(conn, 200, "OK", "text/plain", "ok\n");
    } else {
      Reply(conn, 503, "Service Unavailable", "text/plain", "broken: " + why + "\n");
    }
  } else if (uri == "/readyz") {
    if (self->handlers_.ready()) {
      Reply(conn, 200, "OK", "text/plain", "ready\n");
    } else {
      Reply(conn, 503, "Service Unavailable", "text/plain", "not ready\n");
    }
  } else {
    Reply(conn, 404, "Not Found", "text/plain", "not found: try /metrics /healthz /readyz\n");
  }
  return 1;
}

}  // namespace strata
