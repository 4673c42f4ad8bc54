// The LmHead gRPC service (callback API). Thin: decodes and validates a request, schedules it
// on the batcher and returns; the batcher's worker finishes the call through the task's done
// callback. Until SetReady, calls fail with FAILED_PRECONDITION (the head is still loading).
#ifndef LMHEAD_SERVICE_RPC_LMHEAD_SERVICE_H_
#define LMHEAD_SERVICE_RPC_LMHEAD_SERVICE_H_

#include <atomic>
#include <map>
#include <memory>
#include <mutex>

#include "absl/base/thread_annotations.h"

#include "lmhead/v1/lmhead.grpc.pb.h"
#include "service/batching/batcher.h"
#include "service/metrics/service_metrics.h"
#include "service/rpc/request_codec.h"

namespace lmhead {

class StreamReactor;

// The call's deadline, or InfiniteFuture when it has none.
absl::Time DeadlineOf(const grpc::CallbackServerContext& context);

class LmHeadService final : public v1::LmHead::CallbackService {
 public:
  // metrics must outlive the service. max_stream_outstanding: messages a stream may have in
  // flight before the server stops reading it. auth_token: the bearer token every LmHead call
  // must carry ("authorization: Bearer <token>"); empty = no authentication.
  LmHeadService(ServiceMetrics* metrics, int max_stream_outstanding, std::string auth_token = "");
  ~LmHeadService() override;

  // Publishes the loaded head. Call once; batcher must outlive the service's calls.
  void SetReady(Batcher* batcher, const RequestLimits& limits, const v1::ModelInfo& info);

  grpc::ServerUnaryReactor* ComputeLogits(grpc::CallbackServerContext* context,
                                          const v1::LogitsRequest* request,
                                          v1::LogitsResponse* response) override;
  grpc::ServerBidiReactor<v1::LogitsRequest, v1::LogitsResponse>* StreamLogits(
      grpc::CallbackServerContext* context) override;
  grpc::ServerUnaryReactor* GetModelInfo(grpc::CallbackServerContext* context,
                                         const v1::ModelInfoRequest* request,
                                         v1::ModelInfo* response) override;

  // Immutable once published.
  struct Ready {
    Batcher* batcher;
    RequestLimits limits;
    v1::ModelInfo info;
  };
  const Ready* ready() const { return ready_.load(std::memory_order_acquire); }

  // Validates `request` and schedules it. On OK, the batcher's worker later encodes the result
  // (or the compute error) into *response and calls on_done exactly once with the call's status;
  // *response must stay valid until then. `request` may be reused as soon as this returns.
  // Errors (returned, on_done not called): FAILED_PRECONDITION (not ready), INVALID_ARGUMENT,
  // RESOURCE_EXHAUSTED (queue full), UNAVAILABLE (shutting down).
  // Work not started by `deadline`, or whose `cancelled()` turns true while queued, is dropped
  // and answered DEADLINE_EXCEEDED / CANCELLED.
  absl::Status Submit(const v1::LogitsRequest& request, absl::Time deadline, std::function<bool()> cancelled,
                      v1::LogitsResponse* response, std::function<void(const absl::Status&)> on_done);
  ServiceMetrics& metrics() { return *metrics_; }
  int max_stream_outstanding() const { return max_stream_outstanding_; }

  // Graceful stop: every open stream stops reading, answers what it has already received, then
  // ends with UNAVAILABLE so that its client reconnects (to this server's successor or a replica).
  // Streams opened afterwards are drained at once. Thread-safe.
  void BeginDrain();
  bool draining() const { return draining_.load(); }

  // Stream reactors register while open. A pinned reactor is not deleted until unpinned.
  void Register(StreamReactor* reactor);
  // Called from the reactor's OnDone: deletes it now, or when its last pin goes.
  void Retire(StreamReactor* reactor);

 private:
  // OK, or UNAUTHENTICATED (counted) when a token is required and the call lacks it.
  absl::Status Authenticate(const grpc::CallbackServerContext& context) const;

  ServiceMetrics* const metrics_;
  const int max_stream_outstanding_;
  const std::string auth_token_;
  std::unique_ptr<Ready> ready_storage_;
  std::atomic<const Ready*> ready_{nullptr};
  std::atomic<bool> draining_{false};

  struct Registration {
    int pins = 0;
    bool retired = false;
  };
  std::mutex streams_mu_;
  std::map<StreamReactor*, Registration> streams_ ABSL_GUARDED_BY(streams_mu_);
};

}  // namespace lmhead

#endif  // LMHEAD_SERVICE_RPC_LMHEAD_SERVICE_H_
