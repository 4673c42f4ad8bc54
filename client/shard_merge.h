// Exact merge of vocab-shard results into the whole head's result (client side).
#ifndef LMHEAD_CLIENT_SHARD_MERGE_H_
#define LMHEAD_CLIENT_SHARD_MERGE_H_

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "client/lmhead_client.h"

namespace lmhead::client {

// Global token ids [begin, end) a shard serves.
struct ShardRange {
  int64_t begin = 0;
  int64_t end = 0;
};

// Merges one result per shard (parts[i] from ranges[i]; ranges sorted and covering [0, vocab))
// for a request made with `output`:
//   logsumexp = logsumexp of the shards' logsumexps; argmax / max_logit = the best shard's;
//   top-k     = the best k of the shards' top-k lists (each shard returned its own top k);
//   logprobs  = shard logit (shard logprob + shard normalizer) - global normalizer;
//   sample    = the shard winner with the highest perturbed score (Gumbel-max over the union:
//               the same token the whole head draws with the same seed and step);
//   logits    = the shards' columns side by side.
// INTERNAL when the parts disagree in shape.
absl::StatusOr<LogitsResult> MergeShardResults(const std::vector<ShardRange>& ranges, const std::vector<LogitsResult>& parts,
                                               const OutputOptions& output, int64_t vocab);

}  // namespace lmhead::client

#endif  // LMHEAD_CLIENT_SHARD_MERGE_H_
