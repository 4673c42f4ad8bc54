#include "service/rpc/sampling_codec.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <random>

#include "absl/strings/str_cat.h"

namespace lmhead {
namespace {

// vLLM's rule: temperatures this small sample greedily (dividing by them overflows).
constexpr float kGreedyBelow = 1e-5f;

absl::Status Invalid(const std::string& field, const std::string& what) {
  return absl::InvalidArgumentError(absl::StrCat(field, ".", what));
}

// Checks ids against the vocab and returns them sorted and unique.
absl::Status SortedIds(const google::protobuf::RepeatedField<uint32_t>& ids, const std::string& field,
                       const char* member, int64_t vocab, std::vector<uint32_t>* out) {
  for (int i = 0; i < ids.size(); ++i) {
    if (ids[i] >= vocab) {
      return Invalid(field, absl::StrCat(member, "[", i, "] = ", ids[i], " is out of range for vocab size ", vocab));
    }
  }
  out->assign(ids.begin(), ids.end());
  std::sort(out->begin(), out->end());
  out->erase(std::unique(out->begin(), out->end()), out->end());
  return absl::OkStatus();
}

uint64_t RandomSeed() {
  thread_local std::mt19937_64 rng{std::random_device{}()};
  return rng();
}

}  // namespace

absl::Status DecodeSamplingParams(const v1::SamplingParams& p, const std::string& field,
                                  const SamplingLimits& limits, SamplingSpec* spec) {
  *spec = SamplingSpec{};
  if (p.has_temperature()) {
    const float t = p.temperature();
    if (!std::isfinite(t) || t < 0.0f || t > 100.0f) {
      return Invalid(field, absl::StrCat("temperature = ", t, " must be in [0, 100] (0 = greedy)"));
    }
    spec->temperature = t < kGreedyBelow ? 0.0f : t;
  }
  if (p.top_k() > limits.max_top_k) {
    return Invalid(field, absl::StrCat("top_k = ", p.top_k(), " exceeds ", limits.max_top_k,
                                       " (the vocab size or the backend's selection limit)"));
  }
  spec->top_k = p.top_k();
  if (p.has_top_p()) {
    const float v = p.top_p();
    if (!(v > 0.0f && v <= 1.0f)) return Invalid(field, absl::StrCat("top_p = ", v, " must be in (0, 1]"));
    spec->top_p = v;
  }
  if (!(p.min_p() >= 0.0f && p.min_p() <= 1.0f)) {
    return Invalid(field, absl::StrCat("min_p = ", p.min_p(), " must be in [0, 1]"));
  }
  spec->min_p = p.min_p();
  spec->seed = p.has_seed() ? p.seed() : RandomSeed();
  spec->step = p.step();

  std::map<uint32_t, float> bias(p.logit_bias().begin(), p.logit_bias().end());
  for (const auto& [id, b] : bias) {
    if (id >= limits.vocab) {
      return Invalid(field, absl::StrCat("logit_bias key ", id, " is out of range for vocab size ", limits.vocab));
    }
    if (!(b >= -100.0f && b <= 100.0f)) {
      return Invalid(field, absl::StrCat("logit_bias[", id, "] = ", b, " must be in [-100, 100]"));
    }
  }
  spec->logit_bias.assign(bias.begin(), bias.end());
  if (auto s = SortedIds(p.allowed_token_ids(), field, "allowed_token_ids", limits.vocab, &spec->allowed_token_ids);
      !s.ok()) {
    return s;
  }
  if (auto s = SortedIds(p.banned_token_ids(), field, "banned_token_ids", limits.vocab, &spec->banned_token_ids);
      !s.ok()) {
    return s;
  }
  const bool none_left =
      spec->allowed_token_ids.empty()
          ? static_cast<int64_t>(spec->banned_token_ids.size()) == limits.vocab
          : std::includes(spec->banned_token_ids.begin(), spec->banned_token_ids.end(),
                          spec->allowed_token_ids.begin(), spec->allowed_token_ids.end());
  if (none_left) return Invalid(field, "banned_token_ids exclude every allowed token");

  if (p.has_repetition_penalty()) {
    const float r = p.repetition_penalty();
    if (!(r > 0.0f && r <= 10.0f)) {
      return Invalid(field, absl::StrCat("repetition_penalty = ", r, " must be in (0, 10]"));
    }
    spec->repetition_penalty = r;
  }
  if (!(std::fabs(p.presence_penalty()) <= 2.0f)) {
    return Invalid(field, absl::StrCat("presence_penalty = ", p.presence_penalty(), " must be in [-2, 2]"));
  }
  if (!(std::fabs(p.frequency_penalty()) <= 2.0f)) {
    return Invalid(field, absl::StrCat("frequency_penalty = ", p.frequency_penalty(), " must be in [-2, 2]"));
  }
  spec->presence_penalty = p.presence_penalty();
  spec->frequency_penalty = p.frequency_penalty();
  std::map<uint32_t, uint32_t> counts;
  for (int i = 0; i < p.previous_token_ids_size(); ++i) {
    const uint32_t id = p.previous_token_ids(i);
    if (id >= limits.vocab) {
      return Invalid(field, absl::StrCat("previous_token_ids[", i, "] = ", id, " is out of range for vocab size ",
                                         limits.vocab));
    }
    ++counts[id];
  }
  spec->previous_counts.assign(counts.begin(), counts.end());
  if (p.has_keep_above()) {
    if (!std::isfinite(p.keep_above())) {
      return Invalid(field, absl::StrCat("keep_above = ", p.keep_above(), " must be finite"));
    }
    if (p.keep_tie_max_id() >= limits.vocab) {
      return Invalid(field, absl::StrCat("keep_tie_max_id = ", p.keep_tie_max_id(), " is out of range for vocab size ",
                                         limits.vocab));
    }
    if (p.top_k() != 0 || p.has_top_p() || p.min_p() != 0.0f) {
      return Invalid(field, "keep_above replaces top_k, top_p and min_p; leave those unset");
    }
    spec->has_keep = true;
    spec->keep_above = p.keep_above();
    spec->keep_tie_max_id = p.keep_tie_max_id();
  }
  return absl::OkStatus();
}

}  // namespace lmhead
