// TLS, mutual TLS and bearer-token authentication of the server, with certificates made by the
// openssl command line in each test run; plus the startup checks of the security flags.
#include "service/security.h"

#include <gtest/gtest.h>

#include <cstdlib>
#include <string>

#include "client/lmhead_client.h"
#include "prometheus/text_serializer.h"
#include "service/server.h"
#include "tests/test_util.h"

namespace lmhead {
namespace {

using client::ClientOptions;
using client::HiddenStates;
using client::LmHeadClient;

constexpr int64_t kVocab = 500, kHidden = 32;

// A CA, a server certificate for localhost / 127.0.0.1, a client certificate from that CA, and a
// second CA with its own client certificate (the "wrong" ones).
class Pki {
 public:
  explicit Pki(const testing::TempDir& dir) : dir_(dir) {
    Run("openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout ca.key -out ca.pem "
        "-days 2 -subj /CN=lmhead-test-ca");
    Run("openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout other_ca.key "
        "-out other_ca.pem -days 2 -subj /CN=other-ca");
    testing::WriteFile(dir_.File("server.ext"), "subjectAltName=DNS:localhost,IP:127.0.0.1\n");
    Issue("server", "localhost", "ca", "-extfile server.ext");
    Issue("client", "lmhead-client", "ca", "");
    Issue("intruder", "intruder", "other_ca", "");
  }
  std::string Path(const std::string& name) const { return dir_.File(name); }
  std::string Pem(const std::string& name) const { return *client::ReadTextFile(dir_.File(name)); }
  bool ok() const { return ok_; }

 private:
  void Run(const std::string& command) {
    const std::string full = "cd '" + dir_.path() + "' && " + command + " > /dev/null 2>&1";
    if (std::system(full.c_str()) != 0) {
      ok_ = false;
      ADD_FAILURE() << "failed: " << command;
    }
  }
  void Issue(const std::string& name, const std::string& cn, const std::string& ca, const std::string& extra) {
    Run("openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout " + name + ".key -out " + name +
        ".csr -subj /CN=" + cn);
    Run("openssl x509 -req -in " + name + ".csr -CA " + ca + ".pem -CAkey " + ca + ".key -CAcreateserial -out " +
        name + ".pem -days 2 " + extra);
  }
  const testing::TempDir& dir_;
  bool ok_ = true;
};

class SecurityTest : public ::testing::Test {
 protected:
  void SetUp() override {
    testing::WriteBf16Checkpoint(ckpt_.path(), testing::RandomWeights(kVocab, kHidden, 4), kVocab, kHidden);
    options_.listen_address = "127.0.0.1:0";
    options_.metrics_address = "";
    options_.head.checkpoint_dir = ckpt_.path();
    options_.head.log_progress = false;
    options_.backend.kind = BackendKind::kCpu;
    options_.backend.cpu_threads = 1;
  }

  void Start() {
    auto s = LmHeadServer::Start(options_);
    ASSERT_TRUE(s.ok()) << s.status();
    server_ = std::move(*s);
    ASSERT_TRUE(server_->LoadAndServe().ok());
  }

  std::unique_ptr<LmHeadClient> Connect(ClientOptions o) {
    o.timeout = absl::Seconds(5);
    return LmHeadClient::Connect("127.0.0.1:" + std::to_string(server_->port()), o);
  }

  ClientOptions Tls(const std::string& ca = "ca.pem") {
    ClientOptions o;
    o.use_tls = true;
    o.tls_root_pem = pki_.Pem(ca);
    o.tls_server_name = "localhost";
    return o;
  }

  absl::StatusCode CallCode(LmHeadClient& c) {
    std::vector<float> x(kHidden, 0.5f);
    return c.ComputeLogits(HiddenStates::FromFloats(x, 1, DType::kFp32), {}).status().code();
  }

  void UseTls(bool mutual) {
    options_.security.tls_cert_file = pki_.Path("server.pem");
    options_.security.tls_key_file = pki_.Path("server.key");
    if (mutual) options_.security.tls_client_ca_file = pki_.Path("ca.pem");
  }

  testing::TempDir ckpt_, certs_;
  Pki pki_{certs_};
  ServerOptions options_;
  std::unique_ptr<LmHeadServer> server_;
};

TEST_F(SecurityTest, TlsServesTrustingClientsAndRefusesOthers) {
  ASSERT_TRUE(pki_.ok());
  UseTls(false);
  Start();
  EXPECT_EQ(CallCode(*Connect(Tls())), absl::StatusCode::kOk);
  EXPECT_EQ(*Connect(Tls())->IsServing(), true);
  // A client trusting another CA rejects the server; a plaintext client gets no answer.
  EXPECT_EQ(CallCode(*Connect(Tls("other_ca.pem"))), absl::StatusCode::kUnavailable);
  EXPECT_EQ(CallCode(*Connect(ClientOptions{})), absl::StatusCode::kUnavailable);
}

TEST_F(SecurityTest, MutualTlsRequiresAClientCertificateFromTheCa) {
  ASSERT_TRUE(pki_.ok());
  UseTls(true);
  Start();
  ClientOptions good = Tls();
  good.tls_cert_pem = pki_.Pem("client.pem");
  good.tls_key_pem = pki_.Pem("client.key");
  EXPECT_EQ(CallCode(*Connect(good)), absl::StatusCode::kOk);
  // No client certificate, or one from another CA: the handshake fails.
  EXPECT_EQ(CallCode(*Connect(Tls())), absl::StatusCode::kUnavailable);
  ClientOptions intruder = Tls();
  intruder.tls_cert_pem = pki_.Pem("intruder.pem");
  intruder.tls_key_pem = pki_.Pem("intruder.key");
  EXPECT_EQ(CallCode(*Connect(intruder)), absl::StatusCode::kUnavailable);
}

TEST_F(SecurityTest, BearerTokenIsRequiredAndNeverExposed) {
  ASSERT_TRUE(pki_.ok());
  const std::string token = "s3cret-token-0123456789";
  testing::WriteFile(certs_.File("token"), token + "\n");
  UseTls(false);
  options_.security.auth_token_file = certs_.File("token");
  Start();
  ClientOptions right = Tls();
  right.auth_token = token;
  EXPECT_EQ(CallCode(*Connect(right)), absl::StatusCode::kOk);
  EXPECT_TRUE(Connect(right)->GetModelInfo().ok());
  ClientOptions wrong = Tls();
  wrong.auth_token = "s3cret-token-0123456788";
  EXPECT_EQ(CallCode(*Connect(wrong)), absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(Connect(wrong)->GetModelInfo().status().code(), absl::StatusCode::kUnauthenticated);
  ClientOptions none = Tls();
  EXPECT_EQ(CallCode(*Connect(none)), absl::StatusCode::kUnauthenticated);
  // Streams are refused up front.
  auto stream = Connect(none)->OpenStream();
  EXPECT_EQ(stream->Close().code(), absl::StatusCode::kUnauthenticated);
  // Health stays open (probes carry no token).
  EXPECT_EQ(*Connect(none)->IsServing(), true);
  // Refusals are counted; the token appears nowhere in the metrics or the model info.
  const std::string metrics = prometheus::TextSerializer().Serialize(server_->registry().Collect());
  EXPECT_NE(metrics.find("lmhead_rejected_requests_total{reason=\"unauthenticated\"} 4"), std::string::npos) << metrics;
  EXPECT_EQ(metrics.find(token), std::string::npos);
  EXPECT_EQ(Connect(right)->GetModelInfo()->model_path.find(token), std::string::npos);
}

TEST_F(SecurityTest, TokenOverPlaintextOnlyOnLoopback) {
  testing::WriteFile(certs_.File("token"), "abc");
  options_.security.auth_token_file = certs_.File("token");
  Start();  // 127.0.0.1: allowed without TLS
  ClientOptions o;
  o.auth_token = "abc";
  EXPECT_EQ(CallCode(*Connect(o)), absl::StatusCode::kOk);
  EXPECT_EQ(CallCode(*Connect(ClientOptions{})), absl::StatusCode::kUnauthenticated);
}

TEST(SecurityFlagsTest, InconsistentFlagsAreRefusedAtStartup) {
  testing::TempDir dir;
  testing::WriteFile(dir.File("blank"), "  \n");
  testing::WriteFile(dir.File("token"), "t");
  testing::WriteFile(dir.File("pem"), "not really a pem");
  auto error = [](const SecurityOptions& o, const std::string& listen = "0.0.0.0:1") {
    auto s = LoadServerSecurity(o, listen);
    EXPECT_EQ(s.status().code(), absl::StatusCode::kInvalidArgument);
    return std::string(s.status().message());
  };
  SecurityOptions o;
  o.tls_cert_file = dir.File("pem");
  EXPECT_EQ(error(o), "--tls_cert and --tls_key go together: TLS needs both the certificate and its key");
  o = {};
  o.tls_client_ca_file = dir.File("pem");
  EXPECT_EQ(error(o), "--tls_client_ca (mutual TLS) needs --tls_cert and --tls_key");
  o = {};
  o.tls_cert_file = dir.File("missing.pem");
  o.tls_key_file = dir.File("pem");
  EXPECT_EQ(error(o), "--tls_cert=" + dir.File("missing.pem") + ": cannot read the file");
  o = {};
  o.auth_token_file = dir.File("blank");
  EXPECT_EQ(error(o), "--auth_token_file=" + dir.File("blank") + ": the token is blank");
  o.auth_token_file = dir.File("token");
  EXPECT_NE(error(o).find("would send the token in clear text"), std::string::npos);
  EXPECT_TRUE(LoadServerSecurity(o, "127.0.0.1:5").ok());
  EXPECT_TRUE(ConstantTimeEquals("Bearer x", "Bearer x"));
  EXPECT_FALSE(ConstantTimeEquals("Bearer y", "Bearer x"));
  EXPECT_FALSE(ConstantTimeEquals("Bearer", "Bearer x"));
  EXPECT_FALSE(ConstantTimeEquals("Bearer xx", "Bearer x"));
}

}  // namespace
}  // namespace lmhead
