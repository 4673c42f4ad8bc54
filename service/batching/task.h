// A unit of work for the batcher: the rows of one unary call or one stream message.
#ifndef LMHEAD_SERVICE_BATCHING_TASK_H_
#define LMHEAD_SERVICE_BATCHING_TASK_H_

#include <cstdint>
#include <functional>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "kernels/backend.h"
#include "kernels/sampling.h"

namespace lmhead {

struct TaskResult {
  std::vector<RowOutput> rows;  // one per task row
  absl::Duration queue_time;    // enqueue -> batch start
  absl::Duration compute_time;  // the batch's backend time
  int64_t batch_rows = 0;       // rows of the batch that computed this task
};

struct Task {
  int64_t rows = 0;
  std::vector<float> hidden;        // [rows, hidden_size], finite fp32
  // The same rows as the bf16 bits they arrived in (empty when the request was not BF16): a
  // backend that reads bf16 rows gets these, half the bytes.
  std::vector<uint16_t> hidden_bf16;
  uint32_t top_k = 0;               // every row of a task shares one output spec
  std::vector<uint32_t> token_ids;  // < vocab
  bool want_logits = false;
  // Token selection: empty = none, one entry = every row, else one per row.
  std::vector<SamplingSpec> sampling;
  bool processed_logprobs = false;  // with sampling: top-k/token logprobs from processed logits
  // Parallel to `sampling`: 1 where this server (a vocab shard) holds no token the spec could
  // choose, so the row samples nothing here.
  std::vector<uint8_t> sampling_skipped;
  // The spec row r samples with, or null.
  const SamplingSpec* SamplingOf(int64_t r) const {
    if (sampling.empty()) return nullptr;
    const size_t i = sampling.size() == 1 ? 0 : static_cast<size_t>(r);
    return i < sampling_skipped.size() && sampling_skipped[i] ? nullptr : &sampling[i];
  }
  // Work not started by then is answered DEADLINE_EXCEEDED instead of computed.
  absl::Time deadline = absl::InfiniteFuture();
  // When set and true, queued work is dropped and answered CANCELLED. Thread-safe.
  std::function<bool()> cancelled;
  // Called exactly once, on the batcher's completion thread, with this task's results or error.
  std::function<void(absl::StatusOr<TaskResult>)> done;

  int64_t size() const { return rows; }
};

}  // namespace lmhead

#endif  // LMHEAD_SERVICE_BATCHING_TASK_H_
