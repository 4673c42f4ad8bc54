// lmhead-echo-server: the LmHead API with no head behind it, as a transport ceiling for
// benchmarks. Each request is answered at once with a fixed response of the size a real one has
// (one RowResult with top-k ids and logprobs per row), so load against it measures gRPC and
// protobuf alone.
#include <mutex>
#include <string>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "grpcpp/grpcpp.h"
#include "lmhead/v1/lmhead.grpc.pb.h"
#include "service/util/log.h"
#include "service/util/stop_signal.h"

ABSL_FLAG(std::string, listen, "127.0.0.1:50052", "gRPC listen address");
ABSL_FLAG(int, hidden_size, 5120, "hidden_size reported by GetModelInfo (what clients send)");
ABSL_FLAG(int, vocab_size, 131072, "vocab_size reported by GetModelInfo");
ABSL_FLAG(int, top_k, 5, "top-k entries in each canned row");

namespace {

using lmhead::v1::LogitsRequest;
using lmhead::v1::LogitsResponse;

// The answer for a request of `rows` rows.
void Canned(const LogitsRequest& request, LogitsResponse* response) {
  response->Clear();
  response->set_request_id(request.request_id());
  for (uint32_t r = 0; r < request.hidden().rows(); ++r) {
    auto* row = response->add_rows();
    row->set_argmax_id(7);
    row->set_logsumexp(10.5f);
    for (int k = 0; k < absl::GetFlag(FLAGS_top_k); ++k) {
      row->add_top_ids(k);
      row->add_top_logits(5.0f - k);
      row->add_top_logprobs(-1.0f - k);
    }
  }
}

// Ping-pong: read one message, write its answer, read the next.
class EchoStream final : public grpc::ServerBidiReactor<LogitsRequest, LogitsResponse> {
 public:
  EchoStream() { StartRead(&request_); }
  void OnReadDone(bool ok) override {
    if (!ok) {
      Finish(grpc::Status::OK);
      return;
    }
    Canned(request_, &response_);
    StartWrite(&response_);
  }
  void OnWriteDone(bool ok) override {
    if (!ok) {
      Finish(grpc::Status::CANCELLED);
      return;
    }
    StartRead(&request_);
  }
  void OnDone() override { delete this; }

 private:
  LogitsRequest request_;
  LogitsResponse response_;
};

class EchoService final : public lmhead::v1::LmHead::CallbackService {
  grpc::ServerUnaryReactor* ComputeLogits(grpc::CallbackServerContext* context, const LogitsRequest* request,
                                          LogitsResponse* response) override {
    Canned(*request, response);
    auto* reactor = context->DefaultReactor();
    reactor->Finish(grpc::Status::OK);
    return reactor;
  }
  grpc::ServerBidiReactor<LogitsRequest, LogitsResponse>* StreamLogits(grpc::CallbackServerContext*) override {
    return new EchoStream();
  }
  grpc::ServerUnaryReactor* GetModelInfo(grpc::CallbackServerContext* context, const lmhead::v1::ModelInfoRequest*,
                                         lmhead::v1::ModelInfo* info) override {
    info->set_vocab_size(absl::GetFlag(FLAGS_vocab_size));
    info->set_hidden_size(absl::GetFlag(FLAGS_hidden_size));
    info->set_backend("echo");
    auto* reactor = context->DefaultReactor();
    reactor->Finish(grpc::Status::OK);
    return reactor;
  }
};

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage("lmhead-echo-server [--listen=host:port --hidden_size=H]");
  absl::ParseCommandLine(argc, argv);
  lmhead::BlockStopSignals();
  EchoService service;
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort(absl::GetFlag(FLAGS_listen), grpc::InsecureServerCredentials(), &port);
  builder.SetMaxReceiveMessageSize(256 << 20);
  builder.RegisterService(&service);
  auto server = builder.BuildAndStart();
  if (server == nullptr || port == 0) {
    LOG_ERROR() << "cannot listen on " << absl::GetFlag(FLAGS_listen);
    return 2;
  }
  LOG_INFO() << "echo server listening on port " << port;
  lmhead::WaitForStopSignal();
  server->Shutdown();
  return 0;
}
