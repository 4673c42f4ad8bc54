// Turns a checkpoint's head tensor into the HeadWeights a backend serves, reading straight from
// the file mapping in row chunks: peak memory is the result plus one chunk, never a float copy.
#ifndef LMHEAD_SERVICE_WEIGHTS_HEAD_QUANTIZER_H_
#define LMHEAD_SERVICE_WEIGHTS_HEAD_QUANTIZER_H_

#include <cstdint>
#include <functional>
#include <vector>

#include "absl/status/statusor.h"
#include "kernels/tensor.h"
#include "service/weights/safetensors.h"

namespace lmhead {

// A row-major [rows, cols] tensor in the checkpoint's dtype.
struct HeadSource {
  StDType dtype = StDType::kBF16;  // BF16, F16, F32 or F8_E4M3
  int64_t rows = 0;
  int64_t cols = 0;
  const uint8_t* data = nullptr;
  // F8_E4M3 sources: the checkpoint's multipliers, 1 (per-tensor) or `rows` (per-row) values;
  // empty means unscaled.
  std::vector<float> fp8_scales;
  // Called with byte ranges of `data` that have been consumed (may drop them from memory).
  std::function<void(uint64_t offset, uint64_t len)> release;
};

struct QuantizeOptions {
  WeightFormat format = WeightFormat::kFp8E4m3;
  // Ignored for F8_E4M3 sources, which keep the checkpoint's own scales.
  ScaleMode scale_mode = ScaleMode::kPerRow;
  int64_t chunk_rows = 1024;
  int threads = 1;
  // Called after each chunk with rows done so far and the total.
  std::function<void(int64_t rows_done, int64_t rows_total)> on_progress;
};

// Errors: INVALID_ARGUMENT naming the first row holding a NaN or infinity (or an FP8 NaN code).
absl::StatusOr<HeadWeights> QuantizeHead(const HeadSource& source, const QuantizeOptions& options);

// Converts n elements of a BF16 / F16 / F32 / F8_E4M3 source to float.
void SourceToFloat(StDType dtype, const uint8_t* src, int64_t n, float* dst);

}  // namespace lmhead

#endif  // LMHEAD_SERVICE_WEIGHTS_HEAD_QUANTIZER_H_
