// The compute seam: a Backend owns the head's weights and turns batches of hidden states into
// per-row results (argmax, logsumexp, top-k, requested token logits, optionally full logits).
#ifndef LMHEAD_KERNELS_BACKEND_H_
#define LMHEAD_KERNELS_BACKEND_H_

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "kernels/half_rows.h"
#include "kernels/sampling.h"
#include "kernels/tensor.h"

namespace lmhead {

// What one row of a batch asks for. Ids are < vocab (validated before they reach a backend).
struct RowSpec {
  uint32_t top_k = 0;
  absl::Span<const uint32_t> token_ids;  // logits of these ids; storage owned by the caller
  bool want_logits = false;              // fill RowOutput::logits with all `vocab` logits
  // Sample a token with these settings (see sampling.h); null = no sampling. Owned by the caller.
  const SamplingSpec* sampling = nullptr;
  // With sampling: top-k and token logits come from the processed logits (sampling.h) instead of
  // the raw ones.
  bool processed_logprobs = false;
};

// One batch. hidden is [rows, hidden] row-major fp32 with finite values; specs has `rows`
// entries. Both are owned by the caller and must outlive the ComputeLogits call.
struct LogitsBatch {
  const float* hidden = nullptr;
  int64_t rows = 0;
  absl::Span<const RowSpec> specs;
  // Instead of `hidden`: the rows as bf16 bits, only in the buffer the backend's Bf16InputBuffer
  // handed out for this batch (`hidden` is then null).
  const uint16_t* hidden_bf16 = nullptr;
  // Instead of `hidden`: fp32 rows scaled and rounded to fp16 by ScaleRowToHalf
  // (kernels/half_rows.h), values and 1 / scales only in the buffer the backend's HalfInputBuffer
  // handed out for this batch (`hidden` is then null).
  const uint16_t* hidden_half = nullptr;
  const float* half_inv_scales = nullptr;
};

// Results for one row. Logits are after the model's LogitTransform; argmax_id, max_logit,
// logsumexp and `logits` are always raw (before sampling's processing).
struct RowOutput {
  uint32_t argmax_id = 0;       // ties: lowest id
  float max_logit = 0.0f;
  float logsumexp = 0.0f;
  std::vector<uint32_t> top_ids;   // top_k ids by descending logit, ties lower id first
  std::vector<float> top_logits;   // parallel to top_ids
  std::vector<float> token_logits; // parallel to RowSpec::token_ids
  // The log-normalizer of top_logits and token_logits: logsumexp, or the processed logits'
  // logsumexp when RowSpec::processed_logprobs.
  float logprob_lse = 0.0f;
  std::vector<float> logits;       // [vocab] when want_logits, else empty
  // With RowSpec::sampling: the chosen token and its logprob (raw or processed, as above).
  bool sampled = false;
  uint32_t sampled_id = 0;
  float sampled_logprob = 0.0f;
  float sampled_score = 0.0f;  // processed logit + Gumbel noise of the winner (the logit when greedy)
};

class Backend {
 public:
  virtual ~Backend() = default;

  // "cpu" or "cuda".
  virtual const char* Name() const = 0;
  virtual int64_t vocab() const = 0;
  virtual int64_t hidden() const = 0;
  // Largest top_k the backend can select per row.
  virtual uint32_t MaxTopK() const { return 0xffffffffu; }
  // Bytes of weights and scales resident in the backend's memory.
  virtual int64_t ResidentWeightBytes() const = 0;

  // Computes `batch` into `out` (resized to batch.rows). Not thread-safe: one thread at a time
  // (the batcher's worker) calls it. Errors: INVALID_ARGUMENT for shapes that do not match the
  // head or rows whose logits overflow; INTERNAL for device failures.
  virtual absl::Status ComputeLogits(const LogitsBatch& batch, std::vector<RowOutput>* out) = 0;

  // A host buffer of at least rows x hidden() floats that the caller may assemble the next
  // batch's rows in and pass as LogitsBatch::hidden, saving the backend a copy (the CUDA backend
  // hands out pinned memory, which the GPU reads directly). nullptr when the backend has none or
  // `rows` is more than it holds. Owned by the backend; valid until the next call of
  // InputBuffer or ComputeLogits. Same thread as ComputeLogits.
  virtual float* InputBuffer(int64_t /*rows*/) { return nullptr; }
  // The same for rows that arrived as bf16 (the caller then passes LogitsBatch::hidden_bf16): half
  // the bytes to move (the CUDA backend's rows cross PCIe). nullptr where the backend reads no bf16
  // rows for a batch of `rows` rows. Shares InputBuffer's storage and rules.
  virtual uint16_t* Bf16InputBuffer(int64_t /*rows*/) { return nullptr; }
  // The same for fp32 rows that the caller converts with ScaleRowToHalf as it assembles them
  // (row r's values at values + r * hidden(), its 1 / s at inv_scales[r]; then it passes
  // LogitsBatch::hidden_half and half_inv_scales). Offered only for batches whose kernels multiply
  // exactly those values (the CUDA backend's batches with one fp16 per activation), so that the
  // results equal those of the fp32 rows, at half the bytes to move. {} where the backend takes no
  // such rows for a batch of `rows` rows. Shares InputBuffer's storage and rules.
  virtual HalfRows HalfInputBuffer(int64_t /*rows*/) { return {}; }

  // Device memory in use and in total on the backend's device (all processes), when it has one.
  // Thread-safe: only queries the driver.
  virtual bool DeviceMemory(int64_t* /*used*/, int64_t* /*total*/) const { return false; }
  // Bytes of working memory (beyond the weights) the backend holds on its device.
  virtual int64_t WorkspaceBytes() const { return 0; }

  // The weights as served (unpadded, on the host): for inspection and tests.
  virtual absl::StatusOr<HeadWeights> ExportWeights() const = 0;

  // Diagnostics: per-stage time averages since the last call, when the backend was built to
  // record them (the CUDA backend's profile_stages); empty otherwise. Same thread as ComputeLogits.
  virtual std::string TakeStageTimings() { return {}; }

  // What the backend chose for this machine and head when it started (kernel variants, detected or
  // timed on the head), for the startup log and ModelInfo.backend_tuning; empty when it chose
  // nothing. Thread-safe (fixed after construction).
  virtual std::string Tuning() const { return {}; }
};

}  // namespace lmhead

#endif  // LMHEAD_KERNELS_BACKEND_H_
