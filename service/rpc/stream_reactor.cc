#include "service/rpc/stream_reactor.h"

#include <optional>
#include <utility>

#include "absl/time/clock.h"
#include "service/rpc/request_codec.h"

namespace lmhead {

StreamReactor::StreamReactor(LmHeadService* service, grpc::CallbackServerContext* context)
    : service_(service), deadline_(DeadlineOf(*context)) {
  service_->metrics().open_streams().Increment();
  std::lock_guard<std::mutex> lock(mu_);
  StartReadLocked();
}

void StreamReactor::StartReadLocked() {
  read_in_flight_ = true;
  StartRead(&request_);
}

void StreamReactor::OnReadDone(bool ok) {
  if (!ok) {
    std::optional<grpc::Status> finish;
    {
      std::lock_guard<std::mutex> lock(mu_);
      read_in_flight_ = false;
      reads_done_ = true;
      finish = MaybeFinishLocked();
    }
    if (finish) Finish(*finish);
    return;
  }
  auto owned = std::make_unique<Slot>();
  Slot* slot = owned.get();
  slot->start = absl::Now();
  slot->rows = request_.hidden().rows();
  slot->request_id = request_.request_id();
  service_->metrics().inflight_requests().Increment();
  {
    // read_in_flight_ stays set until request_ has been consumed below, so that OnWriteDone
    // cannot start a read into it meanwhile.
    std::lock_guard<std::mutex> lock(mu_);
    if (finished_) {
      // Drained while this message was arriving: it was never answered, so the client (which
      // sees UNAVAILABLE) can send it again elsewhere.
      read_in_flight_ = false;
      service_->metrics().inflight_requests().Decrement();
      return;
    }
    slots_.push_back(std::move(owned));
  }
  absl::Status submitted = service_->Submit(
      request_, deadline_, [this] { return cancelled_.load(); }, &slot->response,
      [this, slot](const absl::Status& status) { CompleteSlot(slot, status); });
  if (!submitted.ok()) CompleteSlot(slot, submitted);
  std::optional<grpc::Status> finish;
  {
    std::lock_guard<std::mutex> lock(mu_);
    read_in_flight_ = false;
    if (!broken_ && !reads_done_ && !draining_ &&
        static_cast<int>(slots_.size()) < service_->max_stream_outstanding()) {
      StartReadLocked();
    }
    finish = MaybeFinishLocked();
  }
  if (finish) Finish(*finish);
}

void StreamReactor::CompleteSlot(Slot* slot, const absl::Status& status) {
  service_->metrics().RecordRequest(Rpc::kStreamLogits, static_cast<int>(status.code()),
                                    absl::ToDoubleSeconds(absl::Now() - slot->start), slot->rows);
  service_->metrics().inflight_requests().Decrement();
  std::optional<grpc::Status> finish;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!status.ok() && !slot->response.has_error()) {
      EncodeErrorResponse(slot->request_id, status, &slot->response);
    }
    slot->ready = true;
    MaybeWriteLocked();
    finish = MaybeFinishLocked();
  }
  if (finish) Finish(*finish);
}

void StreamReactor::MaybeWriteLocked() {
  if (broken_) {
    // Nobody will read the responses: drop every slot whose task has come back.
    while (!slots_.empty() && slots_.front()->ready && !writing_) slots_.pop_front();
    return;
  }
  if (finished_ || writing_ || slots_.empty() || !slots_.front()->ready) return;
  writing_ = true;
  StartWrite(&slots_.front()->response);
}

void StreamReactor::OnWriteDone(bool ok) {
  std::optional<grpc::Status> finish;
  {
    std::lock_guard<std::mutex> lock(mu_);
    writing_ = false;
    slots_.pop_front();
    if (!ok) broken_ = true;
    if (!broken_ && !reads_done_ && !read_in_flight_ && !draining_ &&
        static_cast<int>(slots_.size()) < service_->max_stream_outstanding()) {
      StartReadLocked();
    }
    MaybeWriteLocked();
    finish = MaybeFinishLocked();
  }
  if (finish) Finish(*finish);
}

void StreamReactor::OnCancel() {
  cancelled_.store(true);
  std::optional<grpc::Status> finish;
  {
    std::lock_guard<std::mutex> lock(mu_);
    broken_ = true;
    MaybeWriteLocked();
    finish = MaybeFinishLocked();
  }
  if (finish) Finish(*finish);
}

std::optional<grpc::Status> StreamReactor::MaybeFinishLocked() {
  if (finished_ || writing_) return std::nullopt;
  if (draining_ && !broken_) {
    if (!slots_.empty()) return std::nullopt;  // answer everything received first
    finished_ = true;
    return grpc::Status(grpc::StatusCode::UNAVAILABLE, "the server is shutting down; reconnect");
  }
  if (read_in_flight_) return std::nullopt;
  if (broken_) {
    // Slots still present belong to tasks not yet back from the batcher.
    for (const auto& s : slots_) {
      if (!s->ready) return std::nullopt;
    }
    slots_.clear();
    finished_ = true;
    return grpc::Status(grpc::StatusCode::CANCELLED, "stream cancelled");
  }
  if (reads_done_ && slots_.empty()) {
    finished_ = true;
    return grpc::Status::OK;
  }
  return std::nullopt;
}

void StreamReactor::Drain() {
  std::optional<grpc::Status> finish;
  {
    std::lock_guard<std::mutex> lock(mu_);
    draining_ = true;
    finish = MaybeFinishLocked();
  }
  if (finish) Finish(*finish);
}

void StreamReactor::OnDone() {
  service_->metrics().open_streams().Decrement();
  service_->Retire(this);
}

}  // namespace lmhead
