#include "kernels/sampling.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "kernels/sampling_math.h"

namespace lmhead {
namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();
// Above the largest value GumbelNoise returns (16.64, at u = 1 - 2^-24): a token with z + this
// below the best score so far cannot win.
constexpr float kMaxGumbel = 17.5f;
constexpr uint32_t kNoToken = 0xffffffffu;

// The highest value t such that the tokens with z >= t carry at least `target` of the mass: a
// mass-weighted radix select over the order-preserving keys, digits of 11, 11 and 10 bits (the
// CUDA kernel runs the same passes). O(tokens) per pass.
float TopPThreshold(const std::vector<std::pair<uint32_t, uint64_t>>& massed, uint64_t target) {
  constexpr int kShifts[3] = {21, 10, 0};
  constexpr int kWidths[3] = {11, 11, 10};
  std::vector<uint64_t> hist(2048);
  uint32_t prefix = 0, mask = 0;
  uint64_t remaining = target;
  for (int pass = 0; pass < 3; ++pass) {
    const uint32_t digit_mask = (1u << kWidths[pass]) - 1u;
    std::fill(hist.begin(), hist.end(), 0);
    for (const auto& [key, w] : massed) {
      if ((key & mask) == prefix) hist[(key >> kShifts[pass]) & digit_mask] += w;
    }
    uint64_t before = 0;
    for (int digit = static_cast<int>(digit_mask); digit >= 0; --digit) {
      if (before + hist[digit] >= remaining) {
        prefix |= static_cast<uint32_t>(digit) << kShifts[pass];
        remaining -= before;
        break;
      }
      before += hist[digit];
    }
    mask |= digit_mask << kShifts[pass];
  }
  const uint32_t bits = (prefix & 0x80000000u) ? (prefix & 0x7fffffffu) : ~prefix;
  float t;
  std::memcpy(&t, &bits, 4);
  return t;
}

}  // namespace

float ProcessLogit(const SamplingSpec& spec, uint32_t id, float l) {
  if (!spec.logit_bias.empty()) {
    auto it = std::lower_bound(spec.logit_bias.begin(), spec.logit_bias.end(), id,
                               [](const std::pair<uint32_t, float>& e, uint32_t v) { return e.first < v; });
    if (it != spec.logit_bias.end() && it->first == id) l = l + it->second;
  }
  if (!spec.allowed_token_ids.empty() &&
      !std::binary_search(spec.allowed_token_ids.begin(), spec.allowed_token_ids.end(), id)) {
    return kNegInf;
  }
  if (std::binary_search(spec.banned_token_ids.begin(), spec.banned_token_ids.end(), id)) return kNegInf;
  if (!spec.previous_counts.empty()) {
    auto it = std::lower_bound(spec.previous_counts.begin(), spec.previous_counts.end(), id,
                               [](const std::pair<uint32_t, uint32_t>& e, uint32_t v) { return e.first < v; });
    if (it != spec.previous_counts.end() && it->first == id) {
      if (spec.repetition_penalty != 1.0f) {
        l = l > 0.0f ? l / spec.repetition_penalty : l * spec.repetition_penalty;
      }
      l = l - spec.presence_penalty;
      const float frequency = spec.frequency_penalty * static_cast<float>(it->second);
      l = l - frequency;
    }
  }
  if (spec.temperature > 0.0f) l = l / spec.temperature;
  return l;
}

void ProcessLogits(const SamplingSpec& spec, const float* l, int64_t vocab, float* z) {
  const bool plain = spec.logit_bias.empty() && spec.allowed_token_ids.empty() && spec.banned_token_ids.empty() &&
                     spec.previous_counts.empty();
  if (plain) {
    const float t = spec.temperature;
    for (int64_t i = 0; i < vocab; ++i) z[i] = t > 0.0f ? l[i] / t : l[i];
    return;
  }
  for (int64_t i = 0; i < vocab; ++i) z[i] = ProcessLogit(spec, static_cast<uint32_t>(i), l[i]);
}

uint32_t SelectToken(const SamplingSpec& spec, const float* z, int64_t vocab, float m, uint32_t argmax,
                     const std::vector<uint32_t>& top_ids, float* score) {
  if (spec.greedy()) {
    *score = z[argmax];
    return argmax;
  }
  const uint32_t offset = spec.token_offset;
  const float min_z = spec.min_p > 0.0f ? m + std::log(spec.min_p) : kNegInf;
  auto in_s0 = [&](uint32_t id) {
    if (!std::isfinite(z[id])) return false;
    if (spec.has_keep) {
      return z[id] > spec.keep_above || (z[id] == spec.keep_above && uint64_t{offset} + id <= spec.keep_tie_max_id);
    }
    return z[id] >= min_z;
  };

  // Candidates of S0: the top-k list (already ordered) or every token.
  std::vector<uint32_t> candidates;
  if (spec.top_k > 0) {
    for (uint32_t i = 0; i < spec.top_k && i < top_ids.size(); ++i) {
      if (in_s0(top_ids[i])) candidates.push_back(top_ids[i]);
    }
  }
  const bool all_vocab = spec.top_k == 0;

  float tau = kNegInf;
  if (spec.top_p < 1.0f) {
    std::vector<std::pair<uint32_t, uint64_t>> massed;  // (key, mass) of S0's tokens with mass > 0
    uint64_t total = 0;
    auto add = [&](uint32_t id) {
      const uint64_t w = TopPMass(z[id], m);
      total += w;
      if (w > 0) massed.emplace_back(OrderedKey(z[id]), w);
    };
    if (all_vocab) {
      for (int64_t i = 0; i < vocab; ++i) {
        if (in_s0(static_cast<uint32_t>(i))) add(static_cast<uint32_t>(i));
      }
    } else {
      for (uint32_t id : candidates) add(id);
    }
    tau = TopPThreshold(massed, TopPTarget(spec.top_p, total));
  }

  // Gumbel-max over S. The argmax is in S unless an explicit kept set excludes it: start from it
  // and skip tokens that cannot win.
  uint32_t best = kNoToken;
  float best_score = kNegInf;
  if (in_s0(argmax)) {
    best = argmax;
    best_score = z[argmax] + GumbelNoise(spec.seed, spec.step, offset + argmax);
  }
  auto consider = [&](uint32_t id) {
    const float zi = z[id];
    if (!in_s0(id) || zi < tau || zi + kMaxGumbel < best_score) return;
    const float s = zi + GumbelNoise(spec.seed, spec.step, offset + id);
    if (best == kNoToken || s > best_score || (s == best_score && id < best)) {
      best_score = s;
      best = id;
    }
  };
  if (all_vocab) {
    for (int64_t i = 0; i < vocab; ++i) consider(static_cast<uint32_t>(i));
  } else {
    for (uint32_t id : candidates) consider(id);
  }
  *score = best_score;
  return best;
}

}  // namespace lmhead
