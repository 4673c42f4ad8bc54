// Checkpoint directory -> head. OpenHead maps the checkpoint and describes its head tensor as a
// HeadSource (no copy); a backend then quantizes it (on the host, or on the GPU). LoadHead also
// quantizes on the host, for tools and tests. Progress (rows done, MB/s) and times are logged.
#ifndef LMHEAD_SERVICE_WEIGHTS_HEAD_LOADER_H_
#define LMHEAD_SERVICE_WEIGHTS_HEAD_LOADER_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "kernels/head_source.h"
#include "kernels/tensor.h"
#include "service/weights/checkpoint.h"
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

// A checkpoint's head, mapped and described. `source` points into `checkpoint`'s mapping and is
// valid while this object lives.
struct OpenedHead {
  Checkpoint checkpoint;
  HeadSource source;
  std::string source_dtype;  // "BF16", "F16", "F32", "F8_E4M3"
  absl::Time opened_at;

  // The model-level logit transform from config.json.
  LogitTransform Transform() const;
  // Quantizer options for `options`, with progress logging when asked for.
  QuantizeOptions Quantize(const HeadLoadOptions& options) const;
};

absl::StatusOr<std::unique_ptr<OpenedHead>> OpenHead(const HeadLoadOptions& options);

struct LoadedHead {
  HeadWeights weights;
  ModelConfig config;
  std::string weight_name;
  std::string source_dtype;
  bool tied = false;
  double load_seconds = 0.0;

  LogitTransform Transform() const;
};

// OpenHead + the host quantizer.
absl::StatusOr<LoadedHead> LoadHead(const HeadLoadOptions& options);

}  // namespace lmhead

#endif  // LMHEAD_SERVICE_WEIGHTS_HEAD_LOADER_H_
