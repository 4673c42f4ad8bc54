#include "service/batching/batcher.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "kernels/half_rows.h"

namespace lmhead {
namespace {

// Collects the results of a split task's parts and answers the original task once.
class Reassembly {
 public:
  Reassembly(std::function<void(absl::StatusOr<TaskResult>)> done, int parts)
      : done_(std::move(done)), parts_(parts), results_(parts) {}

  // Called on the completion thread for part i (in any order).
  void Finish(int i, absl::StatusOr<TaskResult> result) {
    if (!result.ok() && status_.ok()) status_ = result.status();
    if (result.ok()) results_[i] = std::move(*result);
    if (--parts_ > 0) return;
    if (!status_.ok()) {
      done_(status_);
      return;
    }
    TaskResult all = std::move(results_[0]);
    for (size_t p = 1; p < results_.size(); ++p) {
      for (RowOutput& row : results_[p].rows) all.rows.push_back(std::move(row));
      all.queue_time = std::max(all.queue_time, results_[p].queue_time);
      all.compute_time += results_[p].compute_time;
      all.batch_rows = std::max(all.batch_rows, results_[p].batch_rows);
    }
    done_(std::move(all));
  }

 private:
  std::function<void(absl::StatusOr<TaskResult>)> done_;
  int parts_;
  std::vector<TaskResult> results_;
  absl::Status status_;
};

// Splits `task` into parts of at most `max_rows` rows whose results are reassembled in order.
std::vector<std::unique_ptr<Task>> Split(std::unique_ptr<Task> task, int64_t max_rows) {
  std::vector<std::unique_ptr<Task>> parts;
  if (task->rows <= max_rows) {
    parts.push_back(std::move(task));
    return parts;
  }
  const int count = static_cast<int>((task->rows + max_rows - 1) / max_rows);
  auto reassembly = std::make_shared<Reassembly>(std::move(task->done), count);
  const int64_t hidden = static_cast<int64_t>(task->hidden.size()) / task->rows;
  for (int i = 0; i < count; ++i) {
    auto part = std::make_unique<Task>();
    const int64_t begin = i * max_rows;
    part->rows = std::min(max_rows, task->rows - begin);
    part->hidden.assign(task->hidden.begin() + begin * hidden, task->hidden.begin() + (begin + part->rows) * hidden);
    if (!task->hidden_bf16.empty()) {
      part->hidden_bf16.assign(task->hidden_bf16.begin() + begin * hidden,
                               task->hidden_bf16.begin() + (begin + part->rows) * hidden);
    }
    part->top_k = task->top_k;
    part->token_ids = task->token_ids;
    part->want_logits = task->want_logits;
    part->processed_logprobs = task->processed_logprobs;
    if (task->sampling.size() == 1) {
      part->sampling = task->sampling;
      part->sampling_skipped = task->sampling_skipped;
    } else if (!task->sampling.empty()) {
      part->sampling.assign(task->sampling.begin() + begin, task->sampling.begin() + begin + part->rows);
      if (!task->sampling_skipped.empty()) {
        part->sampling_skipped.assign(task->sampling_skipped.begin() + begin,
                                      task->sampling_skipped.begin() + begin + part->rows);
      }
    }
    part->deadline = task->deadline;
    part->cancelled = task->cancelled;
    part->done = [reassembly, i](absl::StatusOr<TaskResult> r) { reassembly->Finish(i, std::move(r)); };
    parts.push_back(std::move(part));
  }
  return parts;
}

}  // namespace

Batcher::Batcher(Backend* backend, BatcherOptions options, ServiceMetrics* metrics)
    : backend_(backend), options_(options), metrics_(metrics) {
  completer_ = std::thread([this] { CompletionLoop(); });
  worker_ = std::thread([this] { WorkerLoop(); });
}

Batcher::~Batcher() {
  Stop();
  if (worker_.joinable()) worker_.join();
  if (completer_.joinable()) completer_.join();
}

absl::Status Batcher::Schedule(std::unique_ptr<Task>* task) {
  const int64_t rows = (*task)->size();
  if (rows <= 0) return absl::InvalidArgumentError("a task needs at least one row");
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopping_) {
      if (metrics_ != nullptr) metrics_->RecordRejection(Rejection::kShuttingDown);
      return absl::UnavailableError("server is shutting down");
    }
    if (queued_rows_ + rows > options_.max_queued_rows) {
      if (metrics_ != nullptr) metrics_->RecordRejection(Rejection::kQueueFull);
      return absl::ResourceExhaustedError(absl::StrCat(
          "queue is full (", queued_rows_, " rows queued, limit ", options_.max_queued_rows,
          "); retry later"));
    }
    const absl::Time now = absl::Now();
    for (auto& part : Split(std::move(*task), options_.max_batch_rows)) queue_.push_back({std::move(part), now});
    queued_rows_ += rows;
    if (metrics_ != nullptr) metrics_->queued_rows().Set(static_cast<double>(queued_rows_));
  }
  cv_.notify_one();
  return absl::OkStatus();
}

void Batcher::Stop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  if (worker_.joinable() && worker_.get_id() != std::this_thread::get_id()) worker_.join();
  if (completer_.joinable() && completer_.get_id() != std::this_thread::get_id()) completer_.join();
}

void Batcher::Complete(Task& task, absl::StatusOr<TaskResult> result) {
  {
    std::lock_guard<std::mutex> lock(completion_mu_);
    completions_.push_back([done = std::move(task.done), result = std::move(result)]() mutable {
      done(std::move(result));
    });
  }
  completion_cv_.notify_one();
}

void Batcher::CompletionLoop() {
  std::unique_lock<std::mutex> lock(completion_mu_);
  while (true) {
    completion_cv_.wait(lock, [&] { return worker_done_ || !completions_.empty(); });
    if (completions_.empty()) return;  // the worker has stopped and everything is answered
    std::function<void()> next = std::move(completions_.front());
    completions_.pop_front();
    lock.unlock();
    next();
    lock.lock();
  }
}

void Batcher::WorkerLoop() {
  std::vector<Queued> batch;
  while (NextBatch(&batch)) {
    DropDead(&batch);
    if (!batch.empty()) RunBatch(batch);
  }
  {
    std::lock_guard<std::mutex> lock(completion_mu_);
    worker_done_ = true;
  }
  completion_cv_.notify_all();
}

bool Batcher::NextBatch(std::vector<Queued>* batch) {
  batch->clear();
  std::unique_lock<std::mutex> lock(mu_);
  cv_.wait(lock, [&] { return stopping_ || !queue_.empty(); });
  if (queue_.empty()) return false;  // stopping and drained
  // Give more rows a chance to arrive, up to max_queue_delay after the oldest was queued.
  const absl::Time flush_at = queue_.front().enqueued + options_.max_queue_delay;
  while (!stopping_ && queued_rows_ < options_.max_batch_rows && absl::Now() < flush_at) {
    cv_.wait_for(lock, absl::ToChronoNanoseconds(flush_at - absl::Now()));
  }
  if (queued_rows_ > options_.max_batch_rows) {
    // More than one batch waits: earliest deadline first (arrival order among equals).
    std::stable_sort(queue_.begin(), queue_.end(),
                     [](const Queued& a, const Queued& b) { return a.task->deadline < b.task->deadline; });
  }
  int64_t rows = 0;
  while (!queue_.empty() && rows + queue_.front().task->size() <= options_.max_batch_rows) {
    rows += queue_.front().task->size();
    batch->push_back(std::move(queue_.front()));
    queue_.pop_front();
  }
  queued_rows_ -= rows;
  if (metrics_ != nullptr) metrics_->queued_rows().Set(static_cast<double>(queued_rows_));
  return true;
}

void Batcher::DropDead(std::vector<Queued>* batch) {
  const absl::Time now = absl::Now();
  auto alive = batch->begin();
  for (auto it = batch->begin(); it != batch->end(); ++it) {
    Task& task = *it->task;
    // The deadline first: gRPC also reports a call whose deadline passed as cancelled.
    if (task.deadline < now) {
      if (metrics_ != nullptr) metrics_->RecordDropped(Dropped::kDeadlineExceeded);
      Complete(task, absl::DeadlineExceededError(absl::StrCat(
          "the deadline passed after ", absl::FormatDuration(now - it->enqueued), " in the queue, before compute")));
    } else if (task.cancelled && task.cancelled()) {
      if (metrics_ != nullptr) metrics_->RecordDropped(Dropped::kCancelled);
      Complete(task, absl::CancelledError("the call was cancelled while its rows were queued"));
    } else {
      *alive++ = std::move(*it);
    }
  }
  batch->erase(alive, batch->end());
}

absl::Status Batcher::Compute(const std::vector<Queued>& batch, std::vector<RowOutput>* out, int64_t* rows) {
  *rows = 0;
  for (const auto& q : batch) *rows += q.task->rows;
  const int64_t hidden = backend_->hidden();
  specs_.clear();
  for (const auto& q : batch) {
    for (int64_t r = 0; r < q.task->rows; ++r) {
      specs_.push_back({q.task->top_k, q.task->token_ids, q.task->want_logits, q.task->SamplingOf(r),
                        q.task->processed_logprobs});
    }
  }
  LogitsBatch logits_batch;
  logits_batch.rows = *rows;
  logits_batch.specs = specs_;
  // Rows that all arrived as bf16 go as bf16 where the backend takes them (half the bytes).
  bool bf16 = true;
  for (const auto& q : batch) bf16 = bf16 && !q.task->hidden_bf16.empty();
  if (uint16_t* gather16 = bf16 ? backend_->Bf16InputBuffer(*rows) : nullptr; gather16 != nullptr) {
    uint16_t* dst = gather16;
    for (const auto& q : batch) dst = std::copy(q.task->hidden_bf16.begin(), q.task->hidden_bf16.end(), dst);
    logits_batch.hidden_bf16 = gather16;
    return backend_->ComputeLogits(logits_batch, out);
  }
  // fp32 rows go as scaled fp16 where the backend multiplies nothing finer (half the bytes), each
  // row converted as it is gathered.
  if (HalfRows half = backend_->HalfInputBuffer(*rows); half.values != nullptr) {
    int64_t r = 0;
    for (const auto& q : batch) {
      ScaleRowsToHalf(q.task->hidden.data(), q.task->rows, hidden, half, r);
      r += q.task->rows;
    }
    logits_batch.hidden_half = half.values;
    logits_batch.half_inv_scales = half.inv_scales;
    return backend_->ComputeLogits(logits_batch, out);
  }
  // One task's rows go as they are, unless the backend offers a buffer of its own (pinned
  // memory the GPU reads directly: cheaper than its copy from ours). Several tasks' rows are
  // gathered, into that buffer when there is one.
  const float* input = batch.front().task->hidden.data();
  float* gather = backend_->InputBuffer(*rows);
  if (gather == nullptr && batch.size() > 1) {
    hidden_.resize(*rows * hidden);
    gather = hidden_.data();
  }
  if (gather != nullptr) {
    float* dst = gather;
    for (const auto& q : batch) dst = std::copy(q.task->hidden.begin(), q.task->hidden.end(), dst);
    input = gather;
  }
  logits_batch.hidden = input;
  return backend_->ComputeLogits(logits_batch, out);
}

void Batcher::RunBatch(std::vector<Queued>& batch) {
  const absl::Time start = absl::Now();
  std::vector<RowOutput> outputs;
  int64_t rows = 0;
  absl::Status status = Compute(batch, &outputs, &rows);
  const absl::Duration compute = absl::Now() - start;
  if (metrics_ != nullptr) metrics_->RecordBatch(absl::ToDoubleSeconds(compute), rows);

  if (!status.ok() && batch.size() > 1) {
    // One task's rows may have caused the failure (e.g. logits overflow): give each task its
    // own verdict so a bad request never fails the others.
    for (Queued& q : batch) {
      std::vector<Queued> single;
      single.push_back(std::move(q));
      RunBatch(single);
    }
    return;
  }
  size_t next_row = 0;
  for (Queued& q : batch) {
    Task& task = *q.task;
    if (metrics_ != nullptr) metrics_->RecordQueueWait(absl::ToDoubleSeconds(start - q.enqueued));
    if (!status.ok()) {
      Complete(task, status);
      continue;
    }
    TaskResult result;
    result.rows.reserve(task.rows);
    for (int64_t r = 0; r < task.rows; ++r) result.rows.push_back(std::move(outputs[next_row++]));
    result.queue_time = start - q.enqueued;
    result.compute_time = compute;
    result.batch_rows = rows;
    Complete(task, std::move(result));
  }
}

}  // namespace lmhead
