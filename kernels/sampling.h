// Token selection after the GEMM: logit processing (bias, masks, penalties, temperature) and
// seeded sampling (top-k, top-p, min-p, Gumbel-max). This file is the contract and the CPU
// reference; the CUDA backend implements the same steps on the device.
//
// Processing, in this order, on a row's logits l (already through the model's LogitTransform):
//   1. logit_bias:   l[id] += bias
//   2. masks:        ids outside allowed_token_ids (when non-empty) and banned ids -> -inf
//   3. penalties, once per distinct id in previous_token_ids with count c:
//        repetition: l > 0 ? l / r : l * r;   presence: l -= p;   frequency: l -= f * c
//   4. temperature:  z = l / T (T > 0); greedy (T = 0) keeps z = l.
// Selection on z (m = max z, ties always to the lower id):
//   greedy:  the argmax of z.
//   else the kept set S is
//     S0 = finite z, among the top_k highest (top_k > 0), with z >= m + log(min_p) (min_p > 0);
//     S  = S0 when top_p = 1, else {i in S0 : z_i >= tau}, tau the highest value such that the
//          tokens of S0 with z >= tau carry mass >= ceil(top_p * total mass of S0), where a
//          token's mass is TopPMass(z, m) (fixed point; ties at tau are all kept);
//     (or, with has_keep, S = the explicit set described at SamplingSpec::keep_above);
//   and the sample is argmax over S of z_i + GumbelNoise(seed, step, i) — a draw from
//   softmax(z) restricted to S, reproducible from (seed, step) alone.
// "Processed" logprobs are log_softmax(z) over the whole vocabulary (before the S filter).
#ifndef LMHEAD_KERNELS_SAMPLING_H_
#define LMHEAD_KERNELS_SAMPLING_H_

#include <cstdint>
#include <utility>
#include <vector>

namespace lmhead {

// Per-row sampling settings, validated before they reach a backend (ids < vocab, finite values
// in range, lists sorted and unique). Immutable once built; shared read-only across threads.
struct SamplingSpec {
  float temperature = 1.0f;  // 0 = greedy
  uint32_t top_k = 0;        // 0 = no top-k filter
  float top_p = 1.0f;        // (0, 1]
  float min_p = 0.0f;        // [0, 1]
  uint64_t seed = 0;
  uint64_t step = 0;
  std::vector<std::pair<uint32_t, float>> logit_bias;  // sorted by id, unique ids
  std::vector<uint32_t> allowed_token_ids;             // sorted, unique; empty = all allowed
  std::vector<uint32_t> banned_token_ids;              // sorted, unique
  float repetition_penalty = 1.0f;
  float presence_penalty = 0.0f;
  float frequency_penalty = 0.0f;
  std::vector<std::pair<uint32_t, uint32_t>> previous_counts;  // (id, count), sorted, unique
  // Global id of row 0 (a vocab shard): the Gumbel noise of row i is that of token token_offset + i,
  // so shards draw exactly the noise the whole head would.
  uint32_t token_offset = 0;
  // An explicit kept set replacing top_k / top_p / min_p (vocab shards' second round):
  // {z > keep_above} and {z == keep_above, global id <= keep_tie_max_id}.
  bool has_keep = false;
  float keep_above = 0.0f;
  uint32_t keep_tie_max_id = 0;

  bool greedy() const { return temperature == 0.0f; }
};

// Applies steps 1-4 to one row: z[vocab] from l[vocab] (may alias).
void ProcessLogits(const SamplingSpec& spec, const float* l, int64_t vocab, float* z);

// The processed value of one token (steps 1-4), as ProcessLogits computes it.
float ProcessLogit(const SamplingSpec& spec, uint32_t id, float l);

// Selects the token from processed logits z[vocab] with max m (its argmax `argmax`), given the
// row's top_k best ids by descending z (ties: lower id), at least spec.top_k of them when
// spec.top_k > 0. Returns the chosen id; *score gets its perturbed score (z + noise; z when greedy).
// With an explicit kept set (has_keep) that holds none of these tokens, returns 0xffffffff.
uint32_t SelectToken(const SamplingSpec& spec, const float* z, int64_t vocab, float m, uint32_t argmax,
                     const std::vector<uint32_t>& top_ids, float* score);

}  // namespace lmhead

#endif  // LMHEAD_KERNELS_SAMPLING_H_
