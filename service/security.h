// Transport security and authentication of the gRPC endpoint: TLS, mutual TLS and an optional
// bearer token. The health service stays reachable without a token (Kubernetes' gRPC probes send
// none); the LmHead RPCs require it.
#ifndef LMHEAD_SERVICE_SECURITY_H_
#define LMHEAD_SERVICE_SECURITY_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "grpcpp/security/server_credentials.h"

namespace lmhead {

struct SecurityOptions {
  // PEM files. cert + key enable TLS; client_ca additionally requires and verifies client
  // certificates signed by that CA (mutual TLS).
  std::string tls_cert_file;
  std::string tls_key_file;
  std::string tls_client_ca_file;
  // A file holding the bearer token clients must send ("authorization: Bearer <token>").
  // Surrounding whitespace is ignored. Without TLS it is refused unless the server listens on
  // loopback only (a token in clear text on a network is a leaked token).
  std::string auth_token_file;
};

// What the server needs, read and checked at startup.
struct ServerSecurity {
  std::shared_ptr<grpc::ServerCredentials> credentials;
  std::string token;  // empty = no authentication
  bool mutual_tls = false;
  std::string Describe() const;  // "plaintext", "TLS" or "mutual TLS", plus " + bearer token"
};

// Reads the files and checks that the flags fit together: cert and key both or neither; a client
// CA only with TLS; a readable, non-empty token file; a token without TLS only on loopback.
// Errors are INVALID_ARGUMENT naming the flag (never the token).
absl::StatusOr<ServerSecurity> LoadServerSecurity(const SecurityOptions& options, const std::string& listen_address);

// Constant-time comparison of a presented credential with the expected one (time depends only
// on the expected length).
bool ConstantTimeEquals(const std::string& presented, const std::string& expected);

}  // namespace lmhead

#endif  // LMHEAD_SERVICE_SECURITY_H_
