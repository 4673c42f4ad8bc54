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
  // Serve only some rows of the head (a vocab shard); token ids on the wire stay global.
  // Either an explicit range [range_begin, range_end) or shard `shard_index` of `shard_count`
  // equal parts aligned to 16 rows (the last one shorter); neither = the whole head.
  int64_t range_begin = -1, range_end = -1;
  int shard_index = -1, shard_count = 0;
};

// The rows [begin, end) the options select from a head of `vocab` rows; INVALID_ARGUMENT when the
// range is empty, reversed or out of bounds.
absl::Status ResolveVocabRange(const HeadLoadOptions& options, int64_t vocab, int64_t* begin, int64_t* end);

// A checkpoint's head, mapped and described. `source` points into `checkpoint`'s mapping and is
// valid while this object lives.
struct OpenedHead {
  Checkpoint checkpoint;
  HeadSource source;  // the served rows only
  int64_t full_vocab = 0;   // rows of the checkpoint's head
  int64_t vocab_begin = 0;  // global id of source row 0
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
