#include "service/weights/head_loader.h"

#include <utility>

#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "kernels/status_macros.h"
#include "service/util/log.h"
#include "service/weights/checkpoint.h"
#include "service/weights/head_quantizer.h"

namespace lmhead {

LogitTransform LoadedHead::Transform() const {
  LogitTransform t;
  if (config.logit_scale > 0.0f) t.scale = config.logit_scale;
  t.softcap = config.final_logit_softcapping;
  return t;
}

absl::StatusOr<LoadedHead> LoadHead(const HeadLoadOptions& options) {
  const absl::Time start = absl::Now();
  ASSIGN_OR_RETURN(Checkpoint ckpt, OpenCheckpoint(options.checkpoint_dir, options.weight_name));
  const StTensorInfo& info = *ckpt.weight.info;

  HeadSource source;
  source.dtype = info.dtype;
  source.rows = info.shape[0];
  source.cols = info.shape[1];
  source.data = ckpt.weight.file->Data(info);
  source.release = [&](uint64_t offset, uint64_t len) { ckpt.weight.file->Release(info, offset, len); };
  if (const StTensorInfo* s = ckpt.weight_scale.info) {
    source.fp8_scales.resize(s->NumElements());
    SourceToFloat(s->dtype, ckpt.weight_scale.file->Data(*s), s->NumElements(), source.fp8_scales.data());
  }

  QuantizeOptions q;
  q.format = options.format;
  q.scale_mode = options.scale_mode;
  q.threads = options.threads;
  q.chunk_rows = options.chunk_rows;
  const double source_mb = static_cast<double>(info.end - info.begin) / 1e6;
  absl::Time last_log = start;
  if (options.log_progress) {
    q.on_progress = [&](int64_t done, int64_t total) {
      const absl::Time now = absl::Now();
      if (done != total && now - last_log < absl::Seconds(1)) return;
      last_log = now;
      const double seconds = absl::ToDoubleSeconds(now - start);
      LOG_INFO() << absl::StrFormat("loading %s: %d/%d rows (%.0f%%), %.0f MB/s", ckpt.weight_name,
                                    done, total, 100.0 * done / total,
                                    source_mb * done / total / std::max(seconds, 1e-9));
    };
  }
  ASSIGN_OR_RETURN(HeadWeights weights, QuantizeHead(source, q));

  LoadedHead head;
  head.weights = std::move(weights);
  head.config = ckpt.config;
  head.weight_name = ckpt.weight_name;
  head.source_dtype = StDTypeName(info.dtype);
  head.tied = ckpt.tied;
  head.load_seconds = absl::ToDoubleSeconds(absl::Now() - start);
  if (options.log_progress) {
    LOG_INFO() << absl::StrFormat(
        "loaded %s [%d, %d] %s -> %s%s%s in %.2f s: %.1f MiB resident, %.1f MiB in BF16",
        head.weight_name, head.weights.vocab, head.weights.hidden, head.source_dtype,
        WeightFormatName(head.weights.format),
        head.weights.format == WeightFormat::kFp8E4m3 ? " " : "",
        head.weights.format == WeightFormat::kFp8E4m3 ? ScaleModeName(head.weights.scale_mode) : "",
        head.load_seconds, head.weights.ResidentBytes() / 1048576.0,
        head.weights.ReferenceBytes() / 1048576.0);
  }
  return head;
}

}  // namespace lmhead
