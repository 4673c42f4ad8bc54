#include "service/server.h"

#include <algorithm>
#include <chrono>
#include <exception>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "grpcpp/ext/proto_server_reflection_plugin.h"
#include "grpcpp/health_check_service_interface.h"
#include "kernels/status_macros.h"
#include "service/util/log.h"

namespace lmhead {
namespace {

constexpr const char* kServiceName = "lmhead.v1.LmHead";

}  // namespace

LmHeadServer::LmHeadServer(const ServerOptions& options) : options_(options) {}

LmHeadServer::~LmHeadServer() { Shutdown(); }

absl::StatusOr<std::unique_ptr<LmHeadServer>> LmHeadServer::Start(const ServerOptions& options) {
  if (options.max_message_bytes <= 0 || options.max_message_bytes > (int64_t{2} << 30) - 1) {
    return absl::InvalidArgumentError("max message size must be between 1 byte and 2 GiB");
  }
  ASSIGN_OR_RETURN(ServerSecurity security, LoadServerSecurity(options.security, options.listen_address));
  std::unique_ptr<LmHeadServer> s(new LmHeadServer(options));
  s->registry_ = std::make_shared<prometheus::Registry>();
  s->metrics_ = std::make_unique<ServiceMetrics>(*s->registry_);
  if (!options.metrics_address.empty()) {
    try {
      s->exposer_ = std::make_unique<prometheus::Exposer>(options.metrics_address);
    } catch (const std::exception& e) {
      return absl::UnavailableError(absl::StrCat("cannot serve metrics on ",
                                                 options.metrics_address, ": ", e.what()));
    }
    s->exposer_->RegisterCollectable(s->registry_);
  }
  s->metrics_->queue_capacity_rows().Set(static_cast<double>(options.batcher.max_queued_rows));
  s->service_ = std::make_unique<LmHeadService>(s->metrics_.get(), options.max_stream_outstanding, security.token);

  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  builder.AddListeningPort(options.listen_address,
                           security.credentials ? security.credentials : grpc::InsecureServerCredentials(), &s->port_);
  builder.SetMaxReceiveMessageSize(static_cast<int>(options.max_message_bytes));
  builder.SetMaxSendMessageSize(static_cast<int>(options.max_message_bytes));
  builder.RegisterService(s->service_.get());
  s->server_ = builder.BuildAndStart();
  if (s->server_ == nullptr || s->port_ == 0) {
    return absl::UnavailableError(absl::StrCat("cannot listen on ", options.listen_address));
  }
  grpc::HealthCheckServiceInterface* health = s->server_->GetHealthCheckService();
  health->SetServingStatus(false);
  health->SetServingStatus(kServiceName, false);
  LOG_INFO() << "listening on port " << s->port_ << " (gRPC, " << security.Describe() << ")"
             << (s->exposer_ ? absl::StrCat(", metrics on port ", s->metrics_port()) : "");
  return s;
}

int LmHeadServer::metrics_port() const {
  if (!exposer_) return 0;
  auto ports = exposer_->GetListeningPorts();
  return ports.empty() ? 0 : ports.front();
}

absl::Status LmHeadServer::LoadAndServe() {
  if (batcher_ != nullptr) return absl::FailedPreconditionError("the head is already loaded");
  ASSIGN_OR_RETURN(std::unique_ptr<OpenedHead> head, OpenHead(options_.head));
  const HeadSource& source = head->source;
  const ModelConfig& config = head->checkpoint.config;
  const WeightFormat format = options_.head.format;
  const ScaleMode scale_mode = EffectiveScaleMode(source, options_.head.scale_mode);
  ModelFacts facts;
  facts.weight_format = WeightFormatName(format);
  facts.reference_bytes = source.rows * source.cols * 2;
  facts.vocab = source.rows;
  facts.hidden = source.cols;

  v1::ModelInfo info;
  const int64_t full_vocab = head->full_vocab, vocab_begin = head->vocab_begin;
  info.set_vocab_size(static_cast<uint32_t>(full_vocab));
  info.set_vocab_begin(static_cast<uint32_t>(vocab_begin));
  info.set_vocab_end(static_cast<uint32_t>(vocab_begin + source.rows));
  info.set_hidden_size(static_cast<uint32_t>(source.cols));
  info.set_weight_format(facts.weight_format);
  info.set_scale_mode(format == WeightFormat::kFp8E4m3 ? ScaleModeName(scale_mode) : "");
  info.set_reference_bytes(static_cast<uint64_t>(facts.reference_bytes));
  info.set_model_path(options_.head.checkpoint_dir);
  info.set_model_name(config.name_or_path.empty() ? config.model_type : config.name_or_path);
  info.set_weight_name(head->checkpoint.weight_name);
  info.set_source_dtype(head->source_dtype);
  info.set_tied_embeddings(head->checkpoint.tied);
  info.set_logit_scale(config.logit_scale);
  info.set_final_logit_softcapping(config.final_logit_softcapping);
  info.set_max_rows_per_request(options_.max_rows_per_request);
  info.set_max_top_k(options_.max_top_k);
  info.set_max_message_bytes(static_cast<uint64_t>(options_.max_message_bytes));

  BackendOptions backend_options = options_.backend;
  backend_options.transform = head->Transform();
  ASSIGN_OR_RETURN(backend_, NewBackend(backend_options, source, head->Quantize(options_.head)));
  if (options_.max_top_k > backend_->MaxTopK()) {
    return absl::InvalidArgumentError(absl::StrCat("--max_top_k=", options_.max_top_k, " exceeds the ",
                                                   backend_->Name(), " backend's limit of ", backend_->MaxTopK()));
  }
  facts.load_seconds = absl::ToDoubleSeconds(absl::Now() - head->opened_at);
  facts.weight_bytes = backend_->ResidentWeightBytes();
  info.set_weight_bytes(static_cast<uint64_t>(facts.weight_bytes));
  info.set_backend(backend_->Name());
  info.set_backend_tuning(backend_->Tuning());
  LOG_INFO() << "loaded " << head->checkpoint.weight_name << " [" << source.rows << ", " << source.cols << "] "
             << (source.rows != full_vocab ? absl::StrCat("(rows ", vocab_begin, "..", vocab_begin + source.rows,
                                                          " of ", full_vocab, ") ")
                                           : "")
             << head->source_dtype << " -> " << facts.weight_format << " "
             << (format == WeightFormat::kFp8E4m3 ? ScaleModeName(scale_mode) : "") << " on the " << backend_->Name()
             << " backend in " << facts.load_seconds << " s";
  head.reset();  // unmaps the checkpoint

  batcher_ = std::make_unique<Batcher>(backend_.get(), options_.batcher, metrics_.get());

  RequestLimits limits;
  limits.vocab = full_vocab;
  limits.vocab_begin = vocab_begin;
  limits.vocab_end = vocab_begin + backend_->vocab();
  limits.hidden = backend_->hidden();
  limits.max_rows = options_.max_rows_per_request;
  limits.max_top_k = options_.max_top_k;
  limits.max_logprob_token_ids = options_.max_logprob_token_ids;
  limits.max_sampling_top_k = static_cast<uint32_t>(std::min<int64_t>(backend_->MaxTopK(), backend_->vocab()));
  info.set_max_sampling_top_k(limits.max_sampling_top_k);
  limits.max_message_bytes = options_.max_message_bytes;
  service_->SetReady(batcher_.get(), limits, info);
  memory_thread_ = std::thread([this] { MemoryGaugeLoop(); });
  metrics_->SetModel(facts);
  metrics_->SetReady(true);
  grpc::HealthCheckServiceInterface* health = server_->GetHealthCheckService();
  health->SetServingStatus(true);
  health->SetServingStatus(kServiceName, true);
  LOG_INFO() << "serving " << facts.vocab << "x" << facts.hidden << " head on the " << backend_->Name()
             << " backend: " << facts.weight_bytes << " bytes resident, "
             << facts.reference_bytes - facts.weight_bytes << " bytes saved against BF16";
  if (const std::string tuning = backend_->Tuning(); !tuning.empty()) LOG_INFO() << "backend tuning: " << tuning;
  return absl::OkStatus();
}

void LmHeadServer::MemoryGaugeLoop() {
  std::unique_lock<std::mutex> lock(memory_mu_);
  do {
    int64_t used = 0, total = 0;
    backend_->DeviceMemory(&used, &total);
    metrics_->SetDeviceMemory(used, total, backend_->WorkspaceBytes());
  } while (!memory_cv_.wait_for(lock, std::chrono::seconds(5), [this] { return memory_stop_; }));
}

void LmHeadServer::Shutdown() {
  if (shut_down_) return;
  shut_down_ = true;
  if (memory_thread_.joinable()) {
    {
      std::lock_guard<std::mutex> lock(memory_mu_);
      memory_stop_ = true;
    }
    memory_cv_.notify_all();
    memory_thread_.join();
  }
  if (server_ != nullptr) {
    grpc::HealthCheckServiceInterface* health = server_->GetHealthCheckService();
    health->SetServingStatus(false);
    health->SetServingStatus(kServiceName, false);
    metrics_->SetReady(false);
    service_->BeginDrain();
    // Stops accepting calls; calls in flight keep running (the batcher still computes them)
    // until they finish or the grace period ends, when they are cancelled.
    server_->Shutdown(std::chrono::system_clock::now() +
                      absl::ToChronoMilliseconds(options_.shutdown_grace));
  }
  if (batcher_ != nullptr) batcher_->Stop();
  if (server_ != nullptr) server_->Wait();
}

}  // namespace lmhead
