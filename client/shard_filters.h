// Sampling filters over vocab shards. top_k, top_p and min_p depend on the whole distribution (the
// k-th value, the maximum, the total mass), which no shard sees. ShardedClient therefore runs
// such rows in two rounds: the first asks every shard for its best processed candidates; this file
// turns the merged candidates into the whole head's kept set, expressed as an explicit rule
// (SamplingOptions::keep_above / keep_tie_max_id) that the shards apply in the second round.
#ifndef LMHEAD_CLIENT_SHARD_FILTERS_H_
#define LMHEAD_CLIENT_SHARD_FILTERS_H_

#include <cstdint>
#include <functional>

#include "absl/status/statusor.h"
#include "client/lmhead_client.h"

namespace lmhead::client {

// True when the row needs the first round (a non-greedy draw with top_k, top_p or min_p).
bool NeedsGlobalFilter(const SamplingOptions& s);

struct KeepRule {
  float above;
  uint32_t tie_max_id;
};

// The kept set of kernels/sampling.h for `s`, from `merged`: a row of a first-round answer with
// processed logprobs, whose top list holds the whole head's best processed candidates (descending,
// ties by id) and whose logprob_logsumexp is the global processed normalizer.
// `complete_above(t)` says whether the candidates include every token with processed logit >= t
// (every shard returned fewer than it was asked for, or its last candidate is below t).
// Exact when the kept set is decided within the candidates and its total mass is known from
// them (top_k set, or the candidates complete); with top_p and neither, the total mass comes from
// the normalizer (float: the boundary may differ from one server's by ~1e-7 of the mass).
// OUT_OF_RANGE when the nucleus reaches past the candidates.
absl::StatusOr<KeepRule> KeptSetFromCandidates(const SamplingOptions& s, const RowResult& merged, int64_t vocab,
                                               const std::function<bool(float)>& complete_above);

}  // namespace lmhead::client

#endif  // LMHEAD_CLIENT_SHARD_FILTERS_H_
