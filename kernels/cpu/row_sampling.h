// The CPU reference of a row's token selection (kernels/sampling.h) on materialized logits.
#ifndef LMHEAD_KERNELS_CPU_ROW_SAMPLING_H_
#define LMHEAD_KERNELS_CPU_ROW_SAMPLING_H_

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "kernels/backend.h"

namespace lmhead {

// The `k` best ids of z[vocab] by descending value, ties to the lower id.
std::vector<uint32_t> TopIdsOf(const float* z, int64_t vocab, uint32_t k);

// For a row with spec.sampling set: processes `logits` (raw, [vocab]), selects the token and
// fills out->sampled*, and with spec.processed_logprobs replaces out's top-k and token logits by
// processed ones (and logprob_lse by their logsumexp). `out` already holds the raw results
// (logsumexp in particular). Thread-safe for distinct rows.
// Errors: INVALID_ARGUMENT when the processed logits overflow.
absl::Status SampleRow(const RowSpec& spec, const float* logits, int64_t vocab, RowOutput* out);

}  // namespace lmhead

#endif  // LMHEAD_KERNELS_CPU_ROW_SAMPLING_H_
