#include "client/cli/client_flags.h"

#include <string>

#include "absl/flags/flag.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"

ABSL_FLAG(bool, tls, false, "Connect with TLS (implied by --tls_ca / --tls_cert)");
ABSL_FLAG(std::string, tls_ca, "", "PEM CA that the server's certificate must chain to (default: system roots)");
ABSL_FLAG(std::string, tls_cert, "", "PEM client certificate for mutual TLS (with --tls_key)");
ABSL_FLAG(std::string, tls_key, "", "PEM private key of --tls_cert");
ABSL_FLAG(std::string, tls_server_name, "", "Name to check in the server's certificate instead of the target's host");
ABSL_FLAG(std::string, auth_token_file, "", "File holding the bearer token to send");

namespace lmhead::client {

absl::StatusOr<ClientOptions> SecureClientOptionsFromFlags(ClientOptions o) {
  const std::string ca = absl::GetFlag(FLAGS_tls_ca), cert = absl::GetFlag(FLAGS_tls_cert),
                    key = absl::GetFlag(FLAGS_tls_key);
  if (cert.empty() != key.empty()) return absl::InvalidArgumentError("--tls_cert and --tls_key go together");
  o.use_tls = absl::GetFlag(FLAGS_tls) || !ca.empty() || !cert.empty();
  o.tls_server_name = absl::GetFlag(FLAGS_tls_server_name);
  auto read = [](const std::string& path, const char* flag, std::string* out) -> absl::Status {
    if (path.empty()) return absl::OkStatus();
    auto text = ReadTextFile(path);
    if (!text.ok()) return absl::Status(text.status().code(), absl::StrCat("--", flag, ": ", text.status().message()));
    *out = *text;
    return absl::OkStatus();
  };
  if (auto s = read(ca, "tls_ca", &o.tls_root_pem); !s.ok()) return s;
  if (auto s = read(cert, "tls_cert", &o.tls_cert_pem); !s.ok()) return s;
  if (auto s = read(key, "tls_key", &o.tls_key_pem); !s.ok()) return s;
  std::string token;
  if (auto s = read(absl::GetFlag(FLAGS_auth_token_file), "auth_token_file", &token); !s.ok()) return s;
  o.auth_token = std::string(absl::StripAsciiWhitespace(token));
  return o;
}

}  // namespace lmhead::client
