// proto <-> batcher conversion: validates a LogitsRequest into a Task, and encodes a
// TaskResult into a LogitsResponse. The only code that knows both the proto and the Task.
#ifndef LMHEAD_SERVICE_RPC_REQUEST_CODEC_H_
#define LMHEAD_SERVICE_RPC_REQUEST_CODEC_H_

#include <cstdint>

#include "absl/status/status.h"
#include "kernels/tensor.h"
#include "lmhead/v1/lmhead.pb.h"
#include "service/batching/task.h"

namespace lmhead {

// What a request is checked against.
struct RequestLimits {
  int64_t vocab = 0;
  int64_t hidden = 0;
  uint32_t max_rows = 64;
  uint32_t max_top_k = 256;
  uint32_t max_logprob_token_ids = 1024;
  // Largest sampling top_k (the backend's selection limit, capped by vocab).
  uint32_t max_sampling_top_k = 1024;
  // Responses larger than this cannot be sent; requests whose logits would exceed it are refused.
  int64_t max_message_bytes = 64 << 20;
};

// Validates `request` and fills task->rows, hidden, top_k, token_ids, want_logits, sampling,
// processed_logprobs and
// *logits_dtype. Errors are INVALID_ARGUMENT with a message naming the field (and the row for
// non-finite hidden states).
absl::Status DecodeLogitsRequest(const v1::LogitsRequest& request, const RequestLimits& limits,
                                 Task* task, DType* logits_dtype);

// Fills `response` from a finished task. Consumes result.rows' logits. `seeds` are the rows'
// sampling seeds: empty (no sampling), one for every row, or one per row.
void EncodeLogitsResponse(const std::string& request_id, bool return_logits, DType logits_dtype,
                          const std::vector<uint64_t>& seeds, TaskResult& result, v1::LogitsResponse* response);

// Makes `response` an error response for `request_id`.
void EncodeErrorResponse(const std::string& request_id, const absl::Status& status,
                         v1::LogitsResponse* response);

}  // namespace lmhead

#endif  // LMHEAD_SERVICE_RPC_REQUEST_CODEC_H_
