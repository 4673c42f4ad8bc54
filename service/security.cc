#include "service/security.h"

#include <fstream>
#include <sstream>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "grpcpp/security/server_credentials.h"

namespace lmhead {
namespace {

absl::StatusOr<std::string> ReadFile(const std::string& path, const char* flag) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::InvalidArgumentError(absl::StrCat("--", flag, "=", path, ": cannot read the file"));
  std::ostringstream text;
  text << in.rdbuf();
  if (text.str().empty()) return absl::InvalidArgumentError(absl::StrCat("--", flag, "=", path, ": the file is empty"));
  return text.str();
}

bool IsLoopback(const std::string& address) {
  return absl::StartsWith(address, "127.") || absl::StartsWith(address, "localhost:") ||
         absl::StartsWith(address, "[::1]:");
}

}  // namespace

std::string ServerSecurity::Describe() const {
  return absl::StrCat(credentials == nullptr ? "plaintext" : mutual_tls ? "mutual TLS" : "TLS",
                      token.empty() ? "" : " + bearer token");
}

bool ConstantTimeEquals(const std::string& presented, const std::string& expected) {
  volatile unsigned char diff = presented.size() == expected.size() ? 0 : 1;
  for (size_t i = 0; i < expected.size(); ++i) {
    const unsigned char p = i < presented.size() ? static_cast<unsigned char>(presented[i]) : 0;
    diff = diff | (p ^ static_cast<unsigned char>(expected[i]));
  }
  return diff == 0;
}

absl::StatusOr<ServerSecurity> LoadServerSecurity(const SecurityOptions& o, const std::string& listen_address) {
  ServerSecurity s;
  const bool cert = !o.tls_cert_file.empty(), key = !o.tls_key_file.empty();
  if (cert != key) {
    return absl::InvalidArgumentError("--tls_cert and --tls_key go together: TLS needs both the certificate and its key");
  }
  if (!o.tls_client_ca_file.empty() && !cert) {
    return absl::InvalidArgumentError("--tls_client_ca (mutual TLS) needs --tls_cert and --tls_key");
  }
  if (cert) {
    grpc::SslServerCredentialsOptions ssl;
    grpc::SslServerCredentialsOptions::PemKeyCertPair pair;
    auto pem_cert = ReadFile(o.tls_cert_file, "tls_cert");
    if (!pem_cert.ok()) return pem_cert.status();
    auto pem_key = ReadFile(o.tls_key_file, "tls_key");
    if (!pem_key.ok()) return pem_key.status();
    pair.cert_chain = *pem_cert;
    pair.private_key = *pem_key;
    ssl.pem_key_cert_pairs.push_back(pair);
    if (!o.tls_client_ca_file.empty()) {
      auto ca = ReadFile(o.tls_client_ca_file, "tls_client_ca");
      if (!ca.ok()) return ca.status();
      ssl.pem_root_certs = *ca;
      ssl.client_certificate_request = GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY;
      s.mutual_tls = true;
    }
    s.credentials = grpc::SslServerCredentials(ssl);
  }
  if (!o.auth_token_file.empty()) {
    auto token = ReadFile(o.auth_token_file, "auth_token_file");
    if (!token.ok()) return token.status();
    s.token = std::string(absl::StripAsciiWhitespace(*token));
    if (s.token.empty()) {
      return absl::InvalidArgumentError(absl::StrCat("--auth_token_file=", o.auth_token_file, ": the token is blank"));
    }
    if (!cert && !IsLoopback(listen_address)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "--auth_token_file without TLS would send the token in clear text; add --tls_cert/--tls_key or "
          "listen on loopback (--listen=", listen_address, ")"));
    }
  }
  return s;
}

}  // namespace lmhead
