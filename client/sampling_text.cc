#include "client/sampling_text.h"

#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace lmhead::client {
namespace {

absl::Status Bad(absl::string_view key, absl::string_view value) {
  return absl::InvalidArgumentError(absl::StrCat("sampling: bad value '", value, "' for ", key));
}

absl::Status ParseIds(absl::string_view key, absl::string_view value, std::vector<uint32_t>* out) {
  for (absl::string_view piece : absl::StrSplit(value, '|', absl::SkipEmpty())) {
    uint32_t id;
    if (!absl::SimpleAtoi(piece, &id)) return Bad(key, piece);
    out->push_back(id);
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<SamplingOptions> ParseSamplingText(const std::string& text) {
  SamplingOptions o;
  for (absl::string_view item : absl::StrSplit(text, ',', absl::SkipEmpty())) {
    const std::vector<absl::string_view> kv = absl::StrSplit(item, absl::MaxSplits('=', 1));
    if (kv.size() != 2) return absl::InvalidArgumentError(absl::StrCat("sampling: '", item, "' is not key=value"));
    const absl::string_view key = kv[0], value = kv[1];
    float f = 0;
    uint64_t u = 0;
    const bool is_float = absl::SimpleAtof(value, &f);
    const bool is_uint = absl::SimpleAtoi(value, &u);
    if (key == "temperature" && is_float) {
      o.temperature = f;
    } else if (key == "top_k" && is_uint && u <= 0xffffffffu) {
      o.top_k = static_cast<uint32_t>(u);
    } else if (key == "top_p" && is_float) {
      o.top_p = f;
    } else if (key == "min_p" && is_float) {
      o.min_p = f;
    } else if (key == "seed" && is_uint) {
      o.seed = u;
    } else if (key == "step" && is_uint) {
      o.step = u;
    } else if (key == "repetition_penalty" && is_float) {
      o.repetition_penalty = f;
    } else if (key == "presence_penalty" && is_float) {
      o.presence_penalty = f;
    } else if (key == "frequency_penalty" && is_float) {
      o.frequency_penalty = f;
    } else if (key == "allowed") {
      if (auto s = ParseIds(key, value, &o.allowed_token_ids); !s.ok()) return s;
    } else if (key == "banned") {
      if (auto s = ParseIds(key, value, &o.banned_token_ids); !s.ok()) return s;
    } else if (key == "previous") {
      if (auto s = ParseIds(key, value, &o.previous_token_ids); !s.ok()) return s;
    } else if (key == "bias") {
      for (absl::string_view pair : absl::StrSplit(value, '|', absl::SkipEmpty())) {
        const std::vector<absl::string_view> ib = absl::StrSplit(pair, ':');
        uint32_t id;
        float bias;
        if (ib.size() != 2 || !absl::SimpleAtoi(ib[0], &id) || !absl::SimpleAtof(ib[1], &bias)) return Bad(key, pair);
        o.logit_bias[id] = bias;
      }
    } else if (key == "temperature" || key == "top_k" || key == "top_p" || key == "min_p" || key == "seed" ||
               key == "step" || key == "repetition_penalty" || key == "presence_penalty" ||
               key == "frequency_penalty") {
      return Bad(key, value);
    } else {
      return absl::InvalidArgumentError(absl::StrCat("sampling: unknown key '", key, "'"));
    }
  }
  return o;
}

}  // namespace lmhead::client
