// Coalesces the rows of many tasks into backend batches. One worker thread owns the backend: it
// waits until max_batch_rows rows are queued or the oldest has waited max_queue_delay, drops
// tasks whose deadline passed or whose call was cancelled, takes the rest in arrival order
// (earliest deadline first when more than one batch is queued), computes them with one
// ComputeLogits call (rows with different output specs share the GEMM) and hands each task its
// own rows through its done callback. A task larger than max_batch_rows is split into parts that
// are computed separately and reassembled before its done is called. Done callbacks (response
// encoding, gRPC writes) run on a separate completion thread, so the worker can start the next
// batch while the last one's answers are encoded and sent.
#ifndef LMHEAD_SERVICE_BATCHING_BATCHER_H_
#define LMHEAD_SERVICE_BATCHING_BATCHER_H_

#include <condition_variable>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/time/time.h"
#include "kernels/backend.h"
#include "service/batching/task.h"
#include "service/metrics/service_metrics.h"

namespace lmhead {

struct BatcherOptions {
  // Most rows in one backend batch; larger tasks are split.
  int64_t max_batch_rows = 64;
  // Most rows waiting in the queue; Schedule refuses tasks beyond it.
  int64_t max_queued_rows = 4096;
  // How long a batch may wait for more rows once the first is queued (0: take what is queued).
  absl::Duration max_queue_delay = absl::ZeroDuration();
};

class Batcher {
 public:
  // backend must outlive the batcher; metrics may be null. Starts the worker.
  Batcher(Backend* backend, BatcherOptions options, ServiceMetrics* metrics);
  // Stops (see Stop) and joins the worker.
  ~Batcher();
  Batcher(const Batcher&) = delete;
  Batcher& operator=(const Batcher&) = delete;

  // Takes *task iff the result is OK (then task->done will be called exactly once). Never
  // blocks. Errors: INVALID_ARGUMENT (0 rows), RESOURCE_EXHAUSTED (queue full; retry later),
  // UNAVAILABLE (stopping).
  absl::Status Schedule(std::unique_ptr<Task>* task);

  // Refuses new tasks, computes every task already accepted, then stops the worker. Idempotent.
  void Stop();

 private:
  struct Queued {
    std::unique_ptr<Task> task;
    absl::Time enqueued;
  };

  void WorkerLoop();
  // Waits for work; moves the next batch's tasks into *batch. False when stopped and drained.
  bool NextBatch(std::vector<Queued>* batch);
  // Answers tasks that expired or were cancelled; keeps the rest in *batch.
  void DropDead(std::vector<Queued>* batch);
  // Computes `batch` as one backend call and calls each task's done.
  void RunBatch(std::vector<Queued>& batch);
  // Hands `done(result)` to the completion thread.
  void Complete(Task& task, absl::StatusOr<TaskResult> result);
  void CompletionLoop();
  absl::Status Compute(const std::vector<Queued>& batch, std::vector<RowOutput>* out, int64_t* rows);

  Backend* const backend_;
  const BatcherOptions options_;
  ServiceMetrics* const metrics_;

  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Queued> queue_ ABSL_GUARDED_BY(mu_);
  int64_t queued_rows_ ABSL_GUARDED_BY(mu_) = 0;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;

  // Worker-only scratch, reused across batches.
  std::vector<float> hidden_;
  std::vector<RowSpec> specs_;

  std::mutex completion_mu_;
  std::condition_variable completion_cv_;
  std::deque<std::function<void()>> completions_ ABSL_GUARDED_BY(completion_mu_);
  bool worker_done_ ABSL_GUARDED_BY(completion_mu_) = false;

  std::thread worker_;
  std::thread completer_;
};

}  // namespace lmhead

#endif  // LMHEAD_SERVICE_BATCHING_BATCHER_H_
