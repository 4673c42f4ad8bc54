// One StreamLogits call. Each message read becomes a slot in an ordered queue; valid messages
// are scheduled on the batcher, bad ones get an error response in their slot; slots are
// written strictly in arrival order, one write at a time. At most max_stream_outstanding
// messages are unanswered: beyond that the reactor stops reading (flow control) until a
// response is written. The call finishes OK after the client half-closes and every slot is
// written, or CANCELLED once every scheduled task has come back after a cancellation.
//
// Lifetime: the service deletes the reactor after OnDone (see LmHeadService::Retire), which only
// follows Finish, which is only called when no task or write is outstanding (and no read, except
// when draining: gRPC then completes the pending read with ok = false).
#ifndef LMHEAD_SERVICE_RPC_STREAM_REACTOR_H_
#define LMHEAD_SERVICE_RPC_STREAM_REACTOR_H_

#include <atomic>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/time/time.h"
#include "grpcpp/grpcpp.h"
#include "lmhead/v1/lmhead.pb.h"
#include "service/rpc/lmhead_service.h"

namespace lmhead {

class StreamReactor final : public grpc::ServerBidiReactor<v1::LogitsRequest, v1::LogitsResponse> {
 public:
  StreamReactor(LmHeadService* service, grpc::CallbackServerContext* context);

  // Stop reading; answer what was received; then Finish with UNAVAILABLE (see BeginDrain).
  void Drain();

  void OnReadDone(bool ok) override;
  void OnWriteDone(bool ok) override;
  void OnCancel() override;
  void OnDone() override;

 private:
  struct Slot {
    v1::LogitsResponse response;
    std::string request_id;
    absl::Time start;
    int64_t rows = 0;
    bool ready = false;
  };

  void CompleteSlot(Slot* slot, const absl::Status& status);
  void StartReadLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void MaybeWriteLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The status to Finish with once nothing is outstanding; the caller calls Finish after
  // releasing mu_ (OnDone deletes this).
  std::optional<grpc::Status> MaybeFinishLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  LmHeadService* const service_;
  const absl::Time deadline_;
  std::atomic<bool> cancelled_{false};  // set by OnCancel; read by queued tasks
  v1::LogitsRequest request_;  // the read buffer: owned by gRPC from StartRead until OnReadDone,
                               // then by OnReadDone until it clears read_in_flight_

  std::mutex mu_;
  std::deque<std::unique_ptr<Slot>> slots_ ABSL_GUARDED_BY(mu_);  // unanswered, arrival order
  bool read_in_flight_ ABSL_GUARDED_BY(mu_) = false;
  bool reads_done_ ABSL_GUARDED_BY(mu_) = false;  // client half-closed or call broken
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  bool broken_ ABSL_GUARDED_BY(mu_) = false;      // cancelled or a write failed
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
  bool draining_ ABSL_GUARDED_BY(mu_) = false;  // the server is stopping
};

}  // namespace lmhead

#endif  // LMHEAD_SERVICE_RPC_STREAM_REACTOR_H_
