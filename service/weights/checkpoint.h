// Locates a HuggingFace checkpoint's head: config.json plus model.safetensors or a sharded
// model.safetensors.index.json; finds lm_head.weight (or the tied input embedding) and, for
// pre-quantized FP8 heads, its weight_scale.
#ifndef LMHEAD_SERVICE_WEIGHTS_CHECKPOINT_H_
#define LMHEAD_SERVICE_WEIGHTS_CHECKPOINT_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "service/weights/model_config.h"
#include "service/weights/safetensors.h"

namespace lmhead {

// A tensor and the mapped file that holds it (the file stays open while this lives).
struct TensorRef {
  std::shared_ptr<const SafetensorsFile> file;
  const StTensorInfo* info = nullptr;
};

struct Checkpoint {
  std::string dir;
  ModelConfig config;
  std::string weight_name;  // the head tensor's name
  bool tied = false;        // the head is the input embedding
  TensorRef weight;         // [vocab_size, hidden_size], BF16 / F16 / F32 / F8_E4M3
  TensorRef weight_scale;   // F8_E4M3 heads only: 1 or vocab_size scales; info null if absent
};

// weight_name: "" picks lm_head.weight, or the input embedding when the model ties them.
// Errors: NOT_FOUND for missing files or tensors, INVALID_ARGUMENT for malformed ones; each
// message names the file and the tensor.
absl::StatusOr<Checkpoint> OpenCheckpoint(const std::string& dir, const std::string& weight_name);

}  // namespace lmhead

#endif  // LMHEAD_SERVICE_WEIGHTS_CHECKPOINT_H_
