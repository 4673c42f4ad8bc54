#include "client/lmhead_client.h"

#include <chrono>
#include <cstring>
#include <fstream>
#include <sstream>
#include <mutex>
#include <utility>

#include "absl/strings/str_cat.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "grpcpp/grpcpp.h"
#include "kernels/half.h"
#include "lmhead/v1/lmhead.grpc.pb.h"
#include "proto/dtype_codec.h"

namespace lmhead::client {
namespace {

absl::Status FromGrpc(const grpc::Status& s) {
  if (s.ok()) return absl::OkStatus();
  return absl::Status(static_cast<absl::StatusCode>(s.error_code()), s.error_message());
}

void SamplingToProto(const SamplingOptions& o, v1::SamplingParams* p) {
  if (o.temperature) p->set_temperature(*o.temperature);
  p->set_top_k(o.top_k);
  if (o.top_p) p->set_top_p(*o.top_p);
  p->set_min_p(o.min_p);
  if (o.seed) p->set_seed(*o.seed);
  p->set_step(o.step);
  for (const auto& [id, bias] : o.logit_bias) (*p->mutable_logit_bias())[id] = bias;
  for (uint32_t id : o.allowed_token_ids) p->add_allowed_token_ids(id);
  for (uint32_t id : o.banned_token_ids) p->add_banned_token_ids(id);
  if (o.repetition_penalty) p->set_repetition_penalty(*o.repetition_penalty);
  p->set_presence_penalty(o.presence_penalty);
  p->set_frequency_penalty(o.frequency_penalty);
  for (uint32_t id : o.previous_token_ids) p->add_previous_token_ids(id);
  if (o.keep_above) {
    p->set_keep_above(*o.keep_above);
    p->set_keep_tie_max_id(o.keep_tie_max_id);
  }
}

v1::LogitsRequest MakeRequest(const HiddenStates& hidden, const OutputOptions& output,
                              const std::string& request_id) {
  v1::LogitsRequest req;
  req.set_request_id(request_id);
  req.mutable_hidden()->set_rows(static_cast<uint32_t>(hidden.rows));
  req.mutable_hidden()->set_dtype(ToProto(hidden.dtype));
  req.mutable_hidden()->set_data(hidden.data);
  v1::OutputSpec* spec = req.mutable_output();
  spec->set_top_k(output.top_k);
  for (uint32_t id : output.logprob_token_ids) spec->add_logprob_token_ids(id);
  spec->set_return_logits(output.return_logits);
  if (output.return_logits) spec->set_logits_dtype(ToProto(output.logits_dtype));
  spec->set_logprobs_mode(output.processed_logprobs ? v1::LOGPROBS_MODE_PROCESSED : v1::LOGPROBS_MODE_RAW);
  if (output.sampling) SamplingToProto(*output.sampling, req.mutable_sampling());
  for (const SamplingOptions& o : output.row_sampling) SamplingToProto(o, req.add_row_sampling());
  return req;
}

LogitsResult ResultFromProto(const v1::LogitsResponse& resp) {
  LogitsResult out;
  out.request_id = resp.request_id();
  out.wire_bytes = static_cast<int64_t>(resp.ByteSizeLong());
  if (resp.error().code() != 0) {
    out.error = absl::Status(static_cast<absl::StatusCode>(resp.error().code()), resp.error().message());
    return out;
  }
  for (const v1::RowResult& r : resp.rows()) {
    RowResult row;
    row.argmax_id = r.argmax_id();
    row.max_logit = r.max_logit();
    row.logsumexp = r.logsumexp();
    row.top_ids.assign(r.top_ids().begin(), r.top_ids().end());
    row.top_logits.assign(r.top_logits().begin(), r.top_logits().end());
    row.top_logprobs.assign(r.top_logprobs().begin(), r.top_logprobs().end());
    row.token_logprobs.assign(r.token_logprobs().begin(), r.token_logprobs().end());
    if (r.has_sampled_id()) row.sampled_id = r.sampled_id();
    row.sampled_logprob = r.sampled_logprob();
    row.seed = r.seed();
    row.logprob_logsumexp = r.logprob_logsumexp();
    row.sampled_score = r.sampled_score();
    out.rows.push_back(std::move(row));
  }
  const std::string& bytes = resp.logits();
  const uint8_t* p = reinterpret_cast<const uint8_t*>(bytes.data());
  if (resp.logits_dtype() == v1::DTYPE_FP32) {
    out.logits.resize(bytes.size() / 4);
    std::memcpy(out.logits.data(), p, out.logits.size() * 4);
  } else if (resp.logits_dtype() == v1::DTYPE_BF16 || resp.logits_dtype() == v1::DTYPE_FP16) {
    out.logits.resize(bytes.size() / 2);
    for (size_t i = 0; i < out.logits.size(); ++i) {
      const uint16_t h = static_cast<uint16_t>(p[2 * i] | (p[2 * i + 1] << 8));
      out.logits[i] = resp.logits_dtype() == v1::DTYPE_BF16 ? Bf16ToFloat(h) : HalfToFloat(h);
    }
  }
  out.queue_us = static_cast<int64_t>(resp.timing().queue_us());
  out.compute_us = static_cast<int64_t>(resp.timing().compute_us());
  out.batch_rows = resp.timing().batch_rows();
  return out;
}

class GrpcStreamSession final : public StreamSession {
 public:
  GrpcStreamSession(v1::LmHead::Stub* stub, const std::string& auth_token) {
    if (!auth_token.empty()) context_.AddMetadata("authorization", "Bearer " + auth_token);
    stream_ = stub->StreamLogits(&context_);
  }
  ~GrpcStreamSession() override {
    if (!closed_) {
      context_.TryCancel();
      stream_->Finish();
    }
  }

  absl::Status Send(const HiddenStates& hidden, const OutputOptions& output,
                    const std::string& request_id) override {
    std::lock_guard<std::mutex> lock(send_mu_);
    if (writes_done_) return absl::FailedPreconditionError("stream is closed for sending");
    if (!stream_->Write(MakeRequest(hidden, output, request_id))) {
      return absl::UnavailableError("stream broken: the server is gone or the call ended");
    }
    return absl::OkStatus();
  }

  absl::StatusOr<LogitsResult> Receive() override {
    v1::LogitsResponse resp;
    if (!stream_->Read(&resp)) {
      std::lock_guard<std::mutex> lock(send_mu_);
      if (!closed_) {
        final_status_ = FromGrpc(stream_->Finish());
        closed_ = true;
      }
      if (final_status_.ok()) return absl::OutOfRangeError("stream finished");
      return final_status_;
    }
    return ResultFromProto(resp);
  }

  absl::Status CloseSend() override {
    std::lock_guard<std::mutex> lock(send_mu_);
    if (!writes_done_) {
      writes_done_ = true;
      stream_->WritesDone();
    }
    return absl::OkStatus();
  }

  absl::Status Close() override {
    CloseSend().IgnoreError();
    v1::LogitsResponse drain;
    while (!closed_ && stream_->Read(&drain)) {}
    std::lock_guard<std::mutex> lock(send_mu_);
    if (!closed_) {
      final_status_ = FromGrpc(stream_->Finish());
      closed_ = true;
    }
    return final_status_;
  }

 private:
  grpc::ClientContext context_;
  std::unique_ptr<grpc::ClientReaderWriter<v1::LogitsRequest, v1::LogitsResponse>> stream_;
  std::mutex send_mu_;
  bool writes_done_ = false;
  bool closed_ = false;
  absl::Status final_status_;
};

}  // namespace

HiddenStates HiddenStates::FromFloats(const std::vector<float>& values, int64_t rows, DType dtype) {
  HiddenStates h;
  h.rows = rows;
  h.dtype = dtype;
  if (dtype == DType::kFp32) {
    h.data.assign(reinterpret_cast<const char*>(values.data()), values.size() * 4);
    return h;
  }
  h.data.resize(values.size() * 2);
  for (size_t i = 0; i < values.size(); ++i) {
    const uint16_t b = dtype == DType::kBf16 ? FloatToBf16(values[i]) : FloatToHalf(values[i]);
    h.data[2 * i] = static_cast<char>(b & 0xff);
    h.data[2 * i + 1] = static_cast<char>(b >> 8);
  }
  return h;
}

struct LmHeadClient::Stubs {
  std::shared_ptr<grpc::Channel> channel;
  std::unique_ptr<v1::LmHead::Stub> lmhead;
  std::unique_ptr<grpc::health::v1::Health::Stub> health;
};

LmHeadClient::LmHeadClient(std::shared_ptr<grpc::Channel> channel, const ClientOptions& options)
    : stubs_(new Stubs{channel, v1::LmHead::NewStub(channel), grpc::health::v1::Health::NewStub(channel)}),
      options_(options) {}

LmHeadClient::~LmHeadClient() = default;

std::unique_ptr<LmHeadClient> LmHeadClient::Connect(const std::string& target, const ClientOptions& options) {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(static_cast<int>(options.max_message_bytes));
  args.SetMaxSendMessageSize(static_cast<int>(options.max_message_bytes));
  args.SetLoadBalancingPolicyName("round_robin");
  std::shared_ptr<grpc::ChannelCredentials> credentials = grpc::InsecureChannelCredentials();
  if (options.use_tls) {
    grpc::SslCredentialsOptions ssl;
    ssl.pem_root_certs = options.tls_root_pem;
    ssl.pem_cert_chain = options.tls_cert_pem;
    ssl.pem_private_key = options.tls_key_pem;
    credentials = grpc::SslCredentials(ssl);
    if (!options.tls_server_name.empty()) args.SetSslTargetNameOverride(options.tls_server_name);
  }
  auto channel = grpc::CreateCustomChannel(target, credentials, args);
  return std::unique_ptr<LmHeadClient>(new LmHeadClient(std::move(channel), options));
}

void LmHeadClient::Prepare(grpc::ClientContext* context) const {
  context->set_deadline(std::chrono::system_clock::now() + absl::ToChronoMilliseconds(options_.timeout));
  if (!options_.auth_token.empty()) context->AddMetadata("authorization", "Bearer " + options_.auth_token);
}

absl::StatusOr<std::string> ReadTextFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read ", path));
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

absl::StatusOr<LogitsResult> LmHeadClient::ComputeLogits(const HiddenStates& hidden,
                                                         const OutputOptions& output,
                                                         const std::string& request_id) {
  grpc::ClientContext context;
  Prepare(&context);
  v1::LogitsResponse resp;
  grpc::Status s = stubs_->lmhead->ComputeLogits(&context, MakeRequest(hidden, output, request_id), &resp);
  if (!s.ok()) return FromGrpc(s);
  return ResultFromProto(resp);
}

absl::StatusOr<ModelInfo> LmHeadClient::GetModelInfo() {
  grpc::ClientContext context;
  Prepare(&context);
  v1::ModelInfo p;
  grpc::Status s = stubs_->lmhead->GetModelInfo(&context, v1::ModelInfoRequest(), &p);
  if (!s.ok()) return FromGrpc(s);
  ModelInfo info;
  info.vocab_size = p.vocab_size();
  info.hidden_size = p.hidden_size();
  info.weight_format = p.weight_format();
  info.scale_mode = p.scale_mode();
  info.weight_bytes = static_cast<int64_t>(p.weight_bytes());
  info.reference_bytes = static_cast<int64_t>(p.reference_bytes());
  info.model_path = p.model_path();
  info.model_name = p.model_name();
  info.backend = p.backend();
  info.weight_name = p.weight_name();
  info.source_dtype = p.source_dtype();
  info.tied_embeddings = p.tied_embeddings();
  info.logit_scale = p.logit_scale();
  info.final_logit_softcapping = p.final_logit_softcapping();
  info.max_rows_per_request = p.max_rows_per_request();
  info.max_top_k = p.max_top_k();
  info.vocab_begin = p.vocab_begin();
  info.vocab_end = p.vocab_end();
  info.backend_tuning = p.backend_tuning();
  return info;
}

absl::StatusOr<bool> LmHeadClient::IsServing() {
  grpc::ClientContext context;
  Prepare(&context);
  grpc::health::v1::HealthCheckRequest req;
  req.set_service("lmhead.v1.LmHead");
  grpc::health::v1::HealthCheckResponse resp;
  grpc::Status s = stubs_->health->Check(&context, req, &resp);
  if (!s.ok()) return FromGrpc(s);
  return resp.status() == grpc::health::v1::HealthCheckResponse::SERVING;
}

std::unique_ptr<StreamSession> LmHeadClient::OpenStream() {
  return std::make_unique<GrpcStreamSession>(stubs_->lmhead.get(), options_.auth_token);
}

}  // namespace lmhead::client
