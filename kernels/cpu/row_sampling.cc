#include "kernels/cpu/row_sampling.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "absl/strings/str_cat.h"
#include "kernels/sampling.h"

namespace lmhead {

std::vector<uint32_t> TopIdsOf(const float* z, int64_t vocab, uint32_t k) {
  std::vector<uint32_t> ids(vocab);
  std::iota(ids.begin(), ids.end(), 0u);
  auto better = [z](uint32_t a, uint32_t b) { return z[a] > z[b] || (z[a] == z[b] && a < b); };
  const int64_t n = std::min<int64_t>(k, vocab);
  std::nth_element(ids.begin(), ids.begin() + n - (n > 0 ? 1 : 0), ids.end(), better);
  ids.resize(n);
  std::sort(ids.begin(), ids.end(), better);
  return ids;
}

absl::Status SampleRow(const RowSpec& spec, const float* logits, int64_t vocab, RowOutput* out) {
  const SamplingSpec& s = *spec.sampling;
  std::vector<float> z(vocab);
  ProcessLogits(s, logits, vocab, z.data());
  // Processed max (ties: lower id) and logsumexp over the finite values.
  uint32_t argmax = 0;
  for (int64_t i = 1; i < vocab; ++i) {
    if (z[i] > z[argmax]) argmax = static_cast<uint32_t>(i);
  }
  const float m = z[argmax];
  if (!std::isfinite(m)) {
    return absl::InvalidArgumentError("processed logits are not finite (temperature too small for these logits?)");
  }
  double sum = 0.0;
  for (int64_t i = 0; i < vocab; ++i) sum += std::exp(static_cast<double>(z[i]) - m);
  const float lse = static_cast<float>(m + std::log(sum));

  const uint32_t k = std::max(spec.processed_logprobs ? spec.top_k : 0u, s.greedy() ? 0u : s.top_k);
  const std::vector<uint32_t> top = k > 0 ? TopIdsOf(z.data(), vocab, k) : std::vector<uint32_t>{};
  out->sampled_id = SelectToken(s, z.data(), vocab, m, argmax, top, &out->sampled_score);
  out->sampled = out->sampled_id != 0xffffffffu;  // else: no candidate in these rows (a shard)
  if (!out->sampled) out->sampled_id = 0;
  out->sampled_logprob = !out->sampled               ? 0.0f
                         : spec.processed_logprobs ? z[out->sampled_id] - lse
                                                   : logits[out->sampled_id] - out->logsumexp;
  if (spec.processed_logprobs) {
    out->logprob_lse = lse;
    out->top_ids.assign(top.begin(), top.begin() + std::min<size_t>(spec.top_k, top.size()));
    out->top_logits.clear();
    for (uint32_t id : out->top_ids) out->top_logits.push_back(z[id]);
    for (size_t i = 0; i < spec.token_ids.size(); ++i) out->token_logits[i] = z[spec.token_ids[i]];
  }
  return absl::OkStatus();
}

}  // namespace lmhead
