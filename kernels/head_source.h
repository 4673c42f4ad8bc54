// A head still in its checkpoint's dtype (typically a view into a memory-mapped file), which a
// quantizer (kernels/head_quantizer.h on the host, or the CUDA backend on the GPU) turns into
// served weights.
#ifndef LMHEAD_KERNELS_HEAD_SOURCE_H_
#define LMHEAD_KERNELS_HEAD_SOURCE_H_

#include <cstdint>
#include <functional>
#include <vector>

#include "kernels/tensor.h"

namespace lmhead {

enum class SourceDType { kF32, kBF16, kF16, kF8E4M3 };

inline size_t SourceDTypeSize(SourceDType t) {
  return t == SourceDType::kF32 ? 4 : t == SourceDType::kF8E4M3 ? 1 : 2;
}

// A row-major [rows, cols] tensor in host memory. Not owned; must outlive its use.
struct HeadSource {
  SourceDType dtype = SourceDType::kBF16;
  int64_t rows = 0;
  int64_t cols = 0;
  const uint8_t* data = nullptr;
  // kF8E4M3 sources: the checkpoint's multipliers, 1 (per-tensor) or `rows` (per-row) values;
  // empty means unscaled.
  std::vector<float> fp8_scales;
  // Called with byte ranges of `data` that have been consumed (may drop them from memory).
  std::function<void(uint64_t offset, uint64_t len)> release;
};

// Options shared by every quantizer.
struct QuantizeOptions {
  WeightFormat format = WeightFormat::kFp8E4m3;
  // Ignored for F8_E4M3 sources, which keep the checkpoint's own scales.
  ScaleMode scale_mode = ScaleMode::kPerRow;
  int64_t chunk_rows = 1024;
  int threads = 1;  // host quantizer only
  // Called after each chunk with rows done so far and the total.
  std::function<void(int64_t rows_done, int64_t rows_total)> on_progress;
};

// The scale mode the served head ends up with: an F8_E4M3 source keeps its own scaling.
inline ScaleMode EffectiveScaleMode(const HeadSource& source, ScaleMode requested) {
  if (source.dtype != SourceDType::kF8E4M3) return requested;
  return source.fp8_scales.empty()        ? ScaleMode::kNone
         : source.fp8_scales.size() == 1 ? ScaleMode::kPerTensor
                                         : ScaleMode::kPerRow;
}

// A view of already-quantized weights as a source (F8_E4M3 with per-row scales, or BF16), so that
// any backend can take them as they are.
inline HeadSource SourceOf(const HeadWeights& w) {
  HeadSource s;
  s.dtype = w.format == WeightFormat::kFp8E4m3 ? SourceDType::kF8E4M3 : SourceDType::kBF16;
  s.rows = w.vocab;
  s.cols = w.hidden;
  s.data = w.data.data();
  s.fp8_scales = w.row_scales;
  return s;
}

}  // namespace lmhead

#endif  // LMHEAD_KERNELS_HEAD_SOURCE_H_
