#include "client/shard_filters.h"

#include <cmath>
#include <limits>
#include <vector>

#include "absl/strings/str_cat.h"
#include "kernels/sampling_math.h"

namespace lmhead::client {

bool NeedsGlobalFilter(const SamplingOptions& s) {
  const bool greedy = s.temperature && *s.temperature < 1e-5f;
  return !greedy && (s.top_k > 0 || (s.top_p && *s.top_p < 1.0f) || s.min_p > 0.0f);
}

absl::StatusOr<KeepRule> KeptSetFromCandidates(const SamplingOptions& s, const RowResult& merged, int64_t vocab,
                                               const std::function<bool(float)>& complete_above) {
  const std::vector<float>& z = merged.top_logits;
  const std::vector<uint32_t>& ids = merged.top_ids;
  if (z.empty()) return absl::InternalError("the first round returned no candidates");
  const uint32_t last_id = static_cast<uint32_t>(vocab - 1);
  const float m = z[0];
  // The same float operations as SelectToken, so that the thresholds are bit for bit the server's.
  const float min_z = s.min_p > 0.0f ? m + std::log(s.min_p) : -std::numeric_limits<float>::infinity();
  // S0 in candidate order: the first top_k, finite, at least min_z (a prefix of the list).
  size_t s0 = s.top_k > 0 ? std::min<size_t>(s.top_k, z.size()) : z.size();
  size_t n = 0;
  while (n < s0 && std::isfinite(z[n]) && z[n] >= min_z) ++n;
  s0 = n;
  const float top_p = s.top_p ? *s.top_p : 1.0f;
  if (top_p >= 1.0f) {
    if (s.top_k > 0) return KeepRule{z[s0 - 1], ids[s0 - 1]};
    return KeepRule{min_z, last_id};  // min_p only: every token >= min_z
  }
  std::vector<uint64_t> mass(s0);
  uint64_t total = 0;
  for (size_t i = 0; i < s0; ++i) total += mass[i] = TopPMass(z[i], m);
  if (s.top_k == 0 && !complete_above(min_z)) {
    if (s.min_p > 0.0f) {
      return absl::OutOfRangeError(
          "top_p with min_p over vocab shards needs every token above the min_p cut among the candidates; add top_k "
          "or raise the servers' --max_top_k");
    }
    // Mass of the whole vocabulary from the global processed normalizer.
    total = static_cast<uint64_t>(std::exp(static_cast<double>(merged.logprob_logsumexp) - m) * 1099511627776.0);
  }
  const uint64_t target = TopPTarget(top_p, total);
  uint64_t cumulative = 0;
  for (size_t i = 0; i < s0; ++i) {
    if (mass[i] == 0) continue;
    cumulative += mass[i];
    if (cumulative < target) continue;
    const float tau = z[i];
    if (s.top_k == 0) return KeepRule{tau, last_id};  // ties at tau are all kept
    size_t last = i;
    while (last + 1 < s0 && z[last + 1] == tau) ++last;
    return KeepRule{z[last], ids[last]};
  }
  return absl::OutOfRangeError(absl::StrCat("the top_p nucleus spans more than the ", z.size(),
                                            " candidates the shards returned; add top_k or raise the servers' "
                                            "--max_top_k"));
}

}  // namespace lmhead::client
