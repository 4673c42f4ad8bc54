#include "service/weights/model_config.h"

#include <cmath>

#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"

namespace lmhead {
namespace {

using nlohmann::json;

// Finds `key` at the top level or under "text_config"; nullptr when absent or null.
const json* Lookup(const json& root, const char* key) {
  auto it = root.find(key);
  if (it != root.end() && !it->is_null()) return &*it;
  auto text = root.find("text_config");
  if (text != root.end() && text->is_object()) {
    auto inner = text->find(key);
    if (inner != text->end() && !inner->is_null()) return &*inner;
  }
  return nullptr;
}

absl::Status ReadPositiveInt(const json& root, std::initializer_list<const char*> keys,
                             int64_t* out) {
  for (const char* key : keys) {
    const json* v = Lookup(root, key);
    if (v == nullptr) continue;
    if (!v->is_number_integer() || v->get<int64_t>() <= 0 || v->get<int64_t>() > (1ll << 31)) {
      return absl::InvalidArgumentError(
          absl::StrCat("config.json: '", key, "' must be a positive integer"));
    }
    *out = v->get<int64_t>();
    return absl::OkStatus();
  }
  return absl::InvalidArgumentError(
      absl::StrCat("config.json: missing '", *keys.begin(), "'"));
}

absl::Status ReadOptionalFloat(const json& root, const char* key, float* out) {
  const json* v = Lookup(root, key);
  if (v == nullptr) return absl::OkStatus();
  if (!v->is_number() || !std::isfinite(v->get<double>()) || v->get<double>() < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("config.json: '", key, "' must be a non-negative number"));
  }
  *out = v->get<float>();
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<ModelConfig> ParseModelConfig(absl::string_view json_text) {
  json root = json::parse(json_text.begin(), json_text.end(), nullptr, /*allow_exceptions=*/false);
  if (root.is_discarded()) return absl::InvalidArgumentError("config.json is not valid JSON");
  if (!root.is_object()) return absl::InvalidArgumentError("config.json is not a JSON object");
  ModelConfig config;
  if (absl::Status s = ReadPositiveInt(root, {"vocab_size"}, &config.vocab_size); !s.ok()) return s;
  if (absl::Status s = ReadPositiveInt(root, {"hidden_size", "n_embd", "d_model"}, &config.hidden_size);
      !s.ok()) {
    return s;
  }
  if (const json* tie = Lookup(root, "tie_word_embeddings")) {
    if (!tie->is_boolean()) {
      return absl::InvalidArgumentError("config.json: 'tie_word_embeddings' must be a boolean");
    }
    config.tie_word_embeddings = tie->get<bool>();
  }
  if (absl::Status s = ReadOptionalFloat(root, "final_logit_softcapping", &config.final_logit_softcapping);
      !s.ok()) {
    return s;
  }
  if (absl::Status s = ReadOptionalFloat(root, "logit_scale", &config.logit_scale); !s.ok()) return s;
  if (const json* v = Lookup(root, "model_type"); v && v->is_string()) config.model_type = v->get<std::string>();
  if (const json* v = Lookup(root, "_name_or_path"); v && v->is_string()) {
    config.name_or_path = v->get<std::string>();
  }
  return config;
}

}  // namespace lmhead
