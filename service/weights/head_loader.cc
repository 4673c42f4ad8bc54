#include "service/weights/head_loader.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "kernels/head_quantizer.h"
#include "kernels/status_macros.h"
#include "service/util/log.h"

namespace lmhead {
namespace {

LogitTransform TransformOf(const ModelConfig& config) {
  LogitTransform t;
  if (config.logit_scale > 0.0f) t.scale = config.logit_scale;
  t.softcap = config.final_logit_softcapping;
  return t;
}

SourceDType SourceDTypeOf(StDType t) {
  switch (t) {
    case StDType::kF32: return SourceDType::kF32;
    case StDType::kF16: return SourceDType::kF16;
    case StDType::kF8E4M3: return SourceDType::kF8E4M3;
    default: return SourceDType::kBF16;  // OpenCheckpoint admits only these four
  }
}

}  // namespace

absl::Status ResolveVocabRange(const HeadLoadOptions& o, int64_t vocab, int64_t* begin, int64_t* end) {
  *begin = 0;
  *end = vocab;
  if (o.shard_count > 0) {
    if (o.shard_index < 0 || o.shard_index >= o.shard_count) {
      return absl::InvalidArgumentError(absl::StrCat("--shard=", o.shard_index, "/", o.shard_count,
                                                     ": the index must be in [0, ", o.shard_count, ")"));
    }
    const int64_t per = (vocab + o.shard_count - 1) / o.shard_count;
    const int64_t aligned = (per + 15) / 16 * 16;
    *begin = o.shard_index * aligned;
    *end = std::min(vocab, *begin + aligned);
    if (*begin >= vocab) {
      return absl::InvalidArgumentError(absl::StrCat("--shard=", o.shard_index, "/", o.shard_count, ": a ", vocab,
                                                     "-row head split in 16-row-aligned parts leaves this shard empty"));
    }
  } else if (o.range_begin >= 0 || o.range_end >= 0) {
    if (o.range_begin < 0 || o.range_end <= o.range_begin || o.range_end > vocab) {
      return absl::InvalidArgumentError(absl::StrCat("--vocab_range=", o.range_begin, ":", o.range_end,
                                                     " must satisfy 0 <= START < END <= ", vocab, " (the head's rows)"));
    }
    *begin = o.range_begin;
    *end = o.range_end;
  }
  return absl::OkStatus();
}

LogitTransform OpenedHead::Transform() const { return TransformOf(checkpoint.config); }
LogitTransform LoadedHead::Transform() const { return TransformOf(config); }

absl::StatusOr<std::unique_ptr<OpenedHead>> OpenHead(const HeadLoadOptions& options) {
  auto head = std::make_unique<OpenedHead>();
  head->opened_at = absl::Now();
  ASSIGN_OR_RETURN(head->checkpoint, OpenCheckpoint(options.checkpoint_dir, options.weight_name));
  const TensorRef& w = head->checkpoint.weight;
  const StTensorInfo& info = *w.info;
  head->source_dtype = StDTypeName(info.dtype);
  HeadSource& source = head->source;
  source.dtype = SourceDTypeOf(info.dtype);
  source.rows = info.shape[0];
  source.cols = info.shape[1];
  source.data = w.file->Data(info);
  source.release = [file = w.file, info_ptr = w.info](uint64_t offset, uint64_t len) {
    file->Release(*info_ptr, offset, len);
  };
  if (const StTensorInfo* s = head->checkpoint.weight_scale.info) {
    if (s->dtype != StDType::kF32 && s->dtype != StDType::kBF16 && s->dtype != StDType::kF16) {
      return absl::InvalidArgumentError("weight_scale must be F32, BF16 or F16");
    }
    source.fp8_scales.resize(s->NumElements());
    SourceToFloat(SourceDTypeOf(s->dtype), head->checkpoint.weight_scale.file->Data(*s), s->NumElements(),
                  source.fp8_scales.data());
  }
  // A vocab shard: the source covers only its rows (the mapping stays whole; untouched rows are
  // never read, so memory and load time scale with the slice).
  head->full_vocab = source.rows;
  int64_t begin, end;
  RETURN_IF_ERROR(ResolveVocabRange(options, source.rows, &begin, &end));
  head->vocab_begin = begin;
  if (begin != 0 || end != source.rows) {
    const uint64_t row_bytes = source.cols * SourceDTypeSize(source.dtype);
    if (source.fp8_scales.size() == static_cast<size_t>(source.rows)) {
      source.fp8_scales = std::vector<float>(source.fp8_scales.begin() + begin, source.fp8_scales.begin() + end);
    }
    source.data += begin * row_bytes;
    source.rows = end - begin;
    source.release = [release = source.release, skip = begin * row_bytes](uint64_t offset, uint64_t len) {
      release(offset + skip, len);
    };
  }
  return head;
}

QuantizeOptions OpenedHead::Quantize(const HeadLoadOptions& options) const {
  QuantizeOptions q;
  q.format = options.format;
  q.scale_mode = options.scale_mode;
  q.threads = options.threads;
  q.chunk_rows = options.chunk_rows;
  if (options.log_progress) {
    const double source_mb = source.rows * source.cols * SourceDTypeSize(source.dtype) / 1e6;
    auto last_log = std::make_shared<absl::Time>(opened_at);
    q.on_progress = [source_mb, last_log, start = opened_at, name = checkpoint.weight_name](int64_t done,
                                                                                          int64_t total) {
      const absl::Time now = absl::Now();
      if (done != total && now - *last_log < absl::Seconds(1)) return;
      *last_log = now;
      const double seconds = absl::ToDoubleSeconds(now - start);
      LOG_INFO() << absl::StrFormat("loading %s: %d/%d rows (%.0f%%), %.0f MB/s", name, done, total,
                                    100.0 * done / total, source_mb * done / total / std::max(seconds, 1e-9));
    };
  }
  return q;
}

absl::StatusOr<LoadedHead> LoadHead(const HeadLoadOptions& options) {
  ASSIGN_OR_RETURN(std::unique_ptr<OpenedHead> opened, OpenHead(options));
  ASSIGN_OR_RETURN(HeadWeights weights, QuantizeHead(opened->source, opened->Quantize(options)));
  LoadedHead head;
  head.weights = std::move(weights);
  head.config = opened->checkpoint.config;
  head.weight_name = opened->checkpoint.weight_name;
  head.source_dtype = opened->source_dtype;
  head.tied = opened->checkpoint.tied;
  head.load_seconds = absl::ToDoubleSeconds(absl::Now() - opened->opened_at);
  if (options.log_progress) {
    LOG_INFO() << absl::StrFormat("quantized %s [%d, %d] %s -> %s %s on the host in %.2f s", head.weight_name,
                                  head.weights.vocab, head.weights.hidden, head.source_dtype,
                                  WeightFormatName(head.weights.format), ScaleModeName(head.weights.scale_mode),
                                  head.load_seconds);
  }
  return head;
}

}  // namespace lmhead
