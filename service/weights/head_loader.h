// Checkpoint directory -> served head: opens the checkpoint, quantizes (or copies) its head
// tensor in row chunks, logs progress (rows done, MB/s) and the total time.
#ifndef LMHEAD_SERVICE_WEIGHTS_HEAD_LOADER_H_
#define LMHEAD_SERVICE_WEIGHTS_HEAD_LOADER_H_

#include <string>

#include "absl/status/statusor.h"
#include "kernels/tensor.h"
#include "service/weights/model_config.h"

namespace lmhead {

struct HeadLoadOptions {
  std::string checkpoint_dir;
  std::string weight_name;  // "" = lm_head.weight or the tied embedding
  WeightFormat format = WeightFormat::kFp8E4m3;
  ScaleMode scale_mode = ScaleMode::kPerRow;
  int threads = 1;
  int64_t chunk_rows = 1024;
  bool log_progress = true;
};

struct LoadedHead {
  HeadWeights weights;
  ModelConfig config;
  std::string weight_name;
  std::string source_dtype;  // "BF16", "F16", "F32", "F8_E4M3"
  bool tied = false;
  double load_seconds = 0.0;

  // The model-level logit transform from config.json.
  LogitTransform Transform() const;
};

absl::StatusOr<LoadedHead> LoadHead(const HeadLoadOptions& options);

}  // namespace lmhead

#endif  // LMHEAD_SERVICE_WEIGHTS_HEAD_LOADER_H_
