#include "service/rpc/lmhead_service.h"

#include <utility>

#include "absl/time/clock.h"
#include "service/rpc/status_util.h"
#include "service/rpc/stream_reactor.h"
#include "service/security.h"

namespace lmhead {

namespace {

// A stream refused before it started (e.g. unauthenticated): finishes at once.
class RejectedStream final : public grpc::ServerBidiReactor<v1::LogitsRequest, v1::LogitsResponse> {
 public:
  explicit RejectedStream(const grpc::Status& status) { Finish(status); }
  void OnDone() override { delete this; }
};

}  // namespace

LmHeadService::LmHeadService(ServiceMetrics* metrics, int max_stream_outstanding, std::string auth_token)
    : metrics_(metrics), max_stream_outstanding_(max_stream_outstanding), auth_token_(std::move(auth_token)) {}

absl::Status LmHeadService::Authenticate(const grpc::CallbackServerContext& context) const {
  if (auth_token_.empty()) return absl::OkStatus();
  const auto& metadata = context.client_metadata();
  auto it = metadata.find("authorization");
  const std::string presented = it == metadata.end() ? std::string() : std::string(it->second.data(), it->second.size());
  if (ConstantTimeEquals(presented, "Bearer " + auth_token_)) return absl::OkStatus();
  metrics_->RecordRejection(Rejection::kUnauthenticated);
  return absl::UnauthenticatedError(it == metadata.end() ? "this server requires a bearer token (authorization metadata)"
                                                         : "the bearer token is not valid");
}

LmHeadService::~LmHeadService() = default;

void LmHeadService::SetReady(Batcher* batcher, const RequestLimits& limits,
                             const v1::ModelInfo& info) {
  ready_storage_ = std::make_unique<Ready>(Ready{batcher, limits, info});
  ready_.store(ready_storage_.get(), std::memory_order_release);
}

absl::Time DeadlineOf(const grpc::CallbackServerContext& context) {
  const auto deadline = context.deadline();
  // No deadline arrives as a time point far in the future.
  if (deadline > std::chrono::system_clock::now() + std::chrono::hours(24 * 365)) return absl::InfiniteFuture();
  return absl::FromChrono(deadline);
}

absl::Status LmHeadService::Submit(const v1::LogitsRequest& request, absl::Time deadline,
                                   std::function<bool()> cancelled, v1::LogitsResponse* response,
                                   std::function<void(const absl::Status&)> on_done) {
  const Ready* ready = this->ready();
  if (ready == nullptr) return absl::FailedPreconditionError("the head is still loading; retry later");
  auto task = std::make_unique<Task>();
  ResponseMapping mapping;
  if (absl::Status s = DecodeLogitsRequest(request, ready->limits, task.get(), &mapping); !s.ok()) {
    return s;
  }
  task->deadline = deadline;
  task->cancelled = std::move(cancelled);
  task->done = [mapping = std::move(mapping), response, on_done = std::move(on_done)](
                   absl::StatusOr<TaskResult> result) mutable {
    if (!result.ok()) {
      on_done(result.status());
      return;
    }
    EncodeLogitsResponse(mapping, *result, response);
    on_done(absl::OkStatus());
  };
  return ready->batcher->Schedule(&task);
}

grpc::ServerUnaryReactor* LmHeadService::ComputeLogits(grpc::CallbackServerContext* context,
                                                       const v1::LogitsRequest* request,
                                                       v1::LogitsResponse* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  const absl::Time start = absl::Now();
  metrics_->inflight_requests().Increment();
  const int64_t rows = request->hidden().rows();
  auto finish = [this, reactor, start, rows](const absl::Status& status) {
    metrics_->RecordRequest(Rpc::kComputeLogits, static_cast<int>(status.code()),
                            absl::ToDoubleSeconds(absl::Now() - start), rows);
    metrics_->inflight_requests().Decrement();
    reactor->Finish(ToGrpcStatus(status));
  };
  absl::Status submitted = Authenticate(*context);
  if (submitted.ok()) {
    submitted = Submit(*request, DeadlineOf(*context), [context] { return context->IsCancelled(); }, response, finish);
  }
  if (!submitted.ok()) finish(submitted);
  return reactor;
}

grpc::ServerBidiReactor<v1::LogitsRequest, v1::LogitsResponse>* LmHeadService::StreamLogits(
    grpc::CallbackServerContext* context) {
  if (absl::Status auth = Authenticate(*context); !auth.ok()) {
    metrics_->RecordRequest(Rpc::kStreamLogits, static_cast<int>(auth.code()), 0, 0);
    return new RejectedStream(ToGrpcStatus(auth));
  }
  auto* reactor = new StreamReactor(this, context);
  Register(reactor);
  if (draining()) reactor->Drain();
  return reactor;
}

void LmHeadService::Register(StreamReactor* reactor) {
  std::lock_guard<std::mutex> lock(streams_mu_);
  streams_[reactor] = Registration{};
}

void LmHeadService::Retire(StreamReactor* reactor) {
  std::lock_guard<std::mutex> lock(streams_mu_);
  auto it = streams_.find(reactor);
  if (it->second.pins > 0) {
    it->second.retired = true;  // the last Unpin deletes it
    return;
  }
  streams_.erase(it);
  delete reactor;
}

void LmHeadService::BeginDrain() {
  draining_.store(true);
  std::vector<StreamReactor*> pinned;
  {
    std::lock_guard<std::mutex> lock(streams_mu_);
    for (auto& [reactor, registration] : streams_) {
      if (registration.retired) continue;
      ++registration.pins;
      pinned.push_back(reactor);
    }
  }
  // Drain outside the lock: it may Finish, and gRPC may then run OnDone (Retire) on any thread.
  for (StreamReactor* reactor : pinned) {
    reactor->Drain();
    std::lock_guard<std::mutex> lock(streams_mu_);
    auto it = streams_.find(reactor);
    if (--it->second.pins == 0 && it->second.retired) {
      streams_.erase(it);
      delete reactor;
    }
  }
}

grpc::ServerUnaryReactor* LmHeadService::GetModelInfo(grpc::CallbackServerContext* context,
                                                      const v1::ModelInfoRequest*,
                                                      v1::ModelInfo* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  const absl::Time start = absl::Now();
  absl::Status status = Authenticate(*context);
  const Ready* ready = this->ready();
  if (status.ok() && ready == nullptr) status = absl::FailedPreconditionError("the head is still loading; retry later");
  if (status.ok()) *response = ready->info;
  metrics_->RecordRequest(Rpc::kGetModelInfo, static_cast<int>(status.code()),
                          absl::ToDoubleSeconds(absl::Now() - start), 0);
  reactor->Finish(ToGrpcStatus(status));
  return reactor;
}

}  // namespace lmhead
