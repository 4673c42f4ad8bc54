#include "service/batching/batcher.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"

namespace lmhead {

Batcher::Batcher(Backend* backend, BatcherOptions options, ServiceMetrics* metrics)
    : backend_(backend), options_(options), metrics_(metrics) {
  worker_ = std::thread([this] { WorkerLoop(); });
}

Batcher::~Batcher() {
  Stop();
  if (worker_.joinable()) worker_.join();
}

absl::Status Batcher::Schedule(std::unique_ptr<Task>* task) {
  const int64_t rows = (*task)->size();
  if (rows <= 0 || rows > options_.max_batch_rows) {
    return absl::InvalidArgumentError(absl::StrCat("a task must have 1 to ", options_.max_batch_rows,
                                                   " rows; this one has ", rows));
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopping_) return absl::UnavailableError("server is shutting down");
    if (queued_rows_ + rows > options_.max_queued_rows) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "queue is full (", queued_rows_, " rows queued, limit ", options_.max_queued_rows,
          "); retry later"));
    }
    queued_rows_ += rows;
    queue_.push_back({std::move(*task), absl::Now()});
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
}

void Batcher::WorkerLoop() {
  std::vector<std::unique_ptr<Task>> tasks;
  std::vector<absl::Time> enqueued;
  while (true) {
    tasks.clear();
    enqueued.clear();
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [&] { return stopping_ || !queue_.empty(); });
      if (queue_.empty()) return;  // stopping and drained
      int64_t rows = 0;
      while (!queue_.empty() && rows + queue_.front().task->size() <= options_.max_batch_rows) {
        rows += queue_.front().task->size();
        enqueued.push_back(queue_.front().enqueued);
        tasks.push_back(std::move(queue_.front().task));
        queue_.pop_front();
      }
      queued_rows_ -= rows;
      if (metrics_ != nullptr) metrics_->queued_rows().Set(static_cast<double>(queued_rows_));
    }
    RunBatch(tasks, enqueued);
  }
}

absl::Status Batcher::Compute(std::vector<std::unique_ptr<Task>>& tasks,
                              std::vector<RowOutput>* out, int64_t* rows) {
  *rows = 0;
  for (const auto& t : tasks) *rows += t->rows;
  const int64_t hidden = backend_->hidden();
  specs_.clear();
  const float* input = tasks.front()->hidden.data();
  if (tasks.size() > 1) {
    hidden_.resize(*rows * hidden);
    float* dst = hidden_.data();
    for (const auto& t : tasks) dst = std::copy(t->hidden.begin(), t->hidden.end(), dst);
    input = hidden_.data();
  }
  for (const auto& t : tasks) {
    for (int64_t r = 0; r < t->rows; ++r) specs_.push_back({t->top_k, t->token_ids, t->want_logits});
  }
  LogitsBatch batch;
  batch.hidden = input;
  batch.rows = *rows;
  batch.specs = specs_;
  return backend_->ComputeLogits(batch, out);
}

void Batcher::RunBatch(std::vector<std::unique_ptr<Task>>& tasks,
                       const std::vector<absl::Time>& enqueued) {
  const absl::Time start = absl::Now();
  std::vector<RowOutput> outputs;
  int64_t rows = 0;
  absl::Status status = Compute(tasks, &outputs, &rows);
  const absl::Duration compute = absl::Now() - start;
  if (metrics_ != nullptr) metrics_->RecordBatch(absl::ToDoubleSeconds(compute), rows);

  if (!status.ok() && tasks.size() > 1) {
    // One task's rows may have caused the failure (e.g. logits overflow): give each task its
    // own verdict so a bad request never fails the others.
    for (size_t i = 0; i < tasks.size(); ++i) {
      std::vector<std::unique_ptr<Task>> single;
      single.push_back(std::move(tasks[i]));
      RunBatch(single, {enqueued[i]});
    }
    return;
  }
  size_t next_row = 0;
  for (size_t i = 0; i < tasks.size(); ++i) {
    Task& task = *tasks[i];
    if (!status.ok()) {
      task.done(status);
      continue;
    }
    TaskResult result;
    result.rows.reserve(task.rows);
    for (int64_t r = 0; r < task.rows; ++r) result.rows.push_back(std::move(outputs[next_row++]));
    result.queue_time = start - enqueued[i];
    result.compute_time = compute;
    result.batch_rows = rows;
    task.done(std::move(result));
  }
}

}  // namespace lmhead
