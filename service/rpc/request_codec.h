// proto <-> batcher conversion: validates a LogitsRequest into a Task, and encodes a
// TaskResult into a LogitsResponse. The only code that knows both the proto and the Task.
#ifndef LMHEAD_SERVICE_RPC_REQUEST_CODEC_H_
#define LMHEAD_SERVICE_RPC_REQUEST_CODEC_H_

#include <cstdint>
#include <string>
#include <vector>

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
  // Largest sampling top_k (the backend's selection limit, capped by the served rows).
  uint32_t max_sampling_top_k = 1024;
  // The rows this server holds, as global token ids [vocab_begin, vocab_end) of a head of `vocab`
  // rows (a vocab shard; the whole head by default: vocab_end = 0 means vocab).
  int64_t vocab_begin = 0;
  int64_t vocab_end = 0;
  // Responses larger than this cannot be sent; requests whose logits would exceed it are refused.
  int64_t max_message_bytes = 64 << 20;
};

// How a task's results map back onto its request: ids on the wire are global, the backend's
// are local to the served rows.
struct ResponseMapping {
  std::string request_id;
  bool return_logits = false;
  DType logits_dtype = DType::kFp32;
  uint32_t id_offset = 0;            // global id of local row 0
  std::vector<int32_t> token_slots;  // per requested logprob id: its index in Task::token_ids, or -1
                                     // when another shard holds it (answered NaN)
  std::vector<uint64_t> seeds;       // the rows' sampling seeds: none, one for all rows, or one per row
  // Per row (or empty): 1 where processed logprobs were asked but this shard holds no admissible
  // token, so its processed mass is empty (answered with a -inf normalizer and no top list).
  std::vector<uint8_t> processed_empty;
};

// Validates `request` against the global vocabulary and fills the task (ids translated to the
// served rows) and *mapping. Errors are INVALID_ARGUMENT with a message naming the field (and the
// row for non-finite hidden states).
absl::Status DecodeLogitsRequest(const v1::LogitsRequest& request, const RequestLimits& limits,
                                 Task* task, ResponseMapping* mapping);

// Fills `response` from a finished task. Consumes result.rows' logits.
void EncodeLogitsResponse(const ResponseMapping& mapping, TaskResult& result, v1::LogitsResponse* response);

// Makes `response` an error response for `request_id`.
void EncodeErrorResponse(const std::string& request_id, const absl::Status& status,
                         v1::LogitsResponse* response);

}  // namespace lmhead

#endif  // LMHEAD_SERVICE_RPC_REQUEST_CODEC_H_
