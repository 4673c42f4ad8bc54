// The parts of a HuggingFace config.json the head needs.
#ifndef LMHEAD_SERVICE_WEIGHTS_MODEL_CONFIG_H_
#define LMHEAD_SERVICE_WEIGHTS_MODEL_CONFIG_H_

#include <cstdint>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace lmhead {

struct ModelConfig {
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;       // hidden_size, or n_embd / d_model in older configs
  std::optional<bool> tie_word_embeddings;  // absent in the file: unknown
  float final_logit_softcapping = 0.0f;     // 0 = none (Gemma 2 style cap)
  float logit_scale = 0.0f;                 // 0 = none (Cohere style multiplier)
  std::string model_type;
  std::string name_or_path;
};

// Parses config.json text. Values under "text_config" are used when the top level lacks them
// (multimodal configs). Errors name the offending key.
absl::StatusOr<ModelConfig> ParseModelConfig(absl::string_view json_text);

}  // namespace lmhead

#endif  // LMHEAD_SERVICE_WEIGHTS_MODEL_CONFIG_H_
