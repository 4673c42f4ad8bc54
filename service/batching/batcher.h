// Coalesces the rows of many tasks into backend batches. One worker thread owns the backend:
// it takes queued tasks in arrival order, up to max_batch_rows rows per batch, computes them
// with one ComputeLogits call (rows with different output specs share the GEMM) and hands each
// task its own rows through its done callback.
#ifndef LMHEAD_SERVICE_BATCHING_BATCHER_H_
#define LMHEAD_SERVICE_BATCHING_BATCHER_H_

#include <condition_variable>
#include <deque>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "kernels/backend.h"
#include "service/batching/task.h"
#include "service/metrics/service_metrics.h"

namespace lmhead {

struct BatcherOptions {
  // Most rows in one backend batch; a task may not have more.
  int64_t max_batch_rows = 64;
  // Most rows waiting in the queue; Schedule refuses tasks beyond it.
  int64_t max_queued_rows = 4096;
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
  // blocks. Errors: INVALID_ARGUMENT (0 rows or more than max_batch_rows), RESOURCE_EXHAUSTED
  // (queue full; retry later), UNAVAILABLE (stopping).
  absl::Status Schedule(std::unique_ptr<Task>* task);

  // Refuses new tasks, computes every task already accepted, then stops the worker. Idempotent.
  void Stop();

 private:
  void WorkerLoop();
  // Computes `tasks` (enqueued at the parallel times) as one batch and calls each task's done.
  void RunBatch(std::vector<std::unique_ptr<Task>>& tasks, const std::vector<absl::Time>& enqueued);
  absl::Status Compute(std::vector<std::unique_ptr<Task>>& tasks, std::vector<RowOutput>* out,
                       int64_t* rows);

  Backend* const backend_;
  const BatcherOptions options_;
  ServiceMetrics* const metrics_;

  std::mutex mu_;
  std::condition_variable cv_;
  struct Queued {
    std::unique_ptr<Task> task;
    absl::Time enqueued;
  };
  std::deque<Queued> queue_ ABSL_GUARDED_BY(mu_);
  int64_t queued_rows_ ABSL_GUARDED_BY(mu_) = 0;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;

  // Worker-only scratch, reused across batches.
  std::vector<float> hidden_;
  std::vector<RowSpec> specs_;

  std::thread worker_;
};

}  // namespace lmhead

#endif  // LMHEAD_SERVICE_BATCHING_BATCHER_H_
