// gRPC TLS credentials from PEM files, as the store node, the client and the GPU agent's peer
// server configure them (docs/design/security.md, "Transport security").
#pragma once

#include <grpcpp/security/server_credentials.h>

#include <fstream>
#include <memory>
#include <sstream>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"

namespace strata::proto {

// The whole file; INVALID_ARGUMENT "<field>: cannot read <path>" when it cannot be opened.
inline absl::StatusOr<std::string> ReadPemFile(const std::string& path, const char* field) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::InvalidArgumentError(absl::StrCat(field, ": cannot read ", path));
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

// Insecure without `cert`; TLS with cert + key; with `client_ca` also mutual TLS: client
// certificates requested (required with `require_client_cert`) and verified against it.
// `fields` names the settings in errors, e.g. "tls" gives "tls_cert", "tls_key".
inline absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> ServerTlsCredentials(
    const std::string& cert, const std::string& key, const std::string& client_ca,
    bool require_client_cert, const std::string& fields = "tls") {
  if (cert.empty() != key.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat(fields, "_cert / ", fields, "_key: give both or neither"));
  }
  if (cert.empty()) return grpc::InsecureServerCredentials();
  const std::string cert_field = fields + "_cert", key_field = fields + "_key";
  absl::StatusOr<std::string> cert_pem = ReadPemFile(cert, cert_field.c_str());
  if (!cert_pem.ok()) return cert_pem.status();
  absl::StatusOr<std::string> key_pem = ReadPemFile(key, key_field.c_str());
  if (!key_pem.ok()) return key_pem.status();
  grpc::SslServerCredentialsOptions o(
      client_ca.empty()     ? GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE
      : require_client_cert ? GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY
                            : GRPC_SSL_REQUEST_CLIENT_CERTIFICATE_AND_VERIFY);
  if (!client_ca.empty()) {
    const std::string ca_field = fields + "_client_ca";
    absl::StatusOr<std::string> ca = ReadPemFile(client_ca, ca_field.c_str());
    if (!ca.ok()) return ca.status();
    o.pem_root_certs = *ca;
  }
  o.pem_key_cert_pairs.push_back({*key_pem, *cert_pem});
  return grpc::SslServerCredentials(o);
}

}  // namespace strata::proto
