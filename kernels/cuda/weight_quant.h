// GPU quantization of the head's weights, row by row, bit-identical to kernels/head_quantizer.cc:
// scale = amax / 448 (1 when amax is 0), code = E4M3 round-to-nearest-even of w / scale.
#ifndef LMHEAD_KERNELS_CUDA_WEIGHT_QUANT_H_
#define LMHEAD_KERNELS_CUDA_WEIGHT_QUANT_H_

#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/head_source.h"

namespace lmhead::cuda {

// What to write for each source row.
enum class RowOutputKind {
  kFp8PerRow,    // E4M3 codes with the row's own scale
  kFp8Fixed,     // E4M3 codes with `fixed_scale` (per-tensor, or 1 for the unscaled cast)
  kBf16,         // bf16 of the value (times the row's FP8 source scale, when the source is FP8)
};

struct WeightRowsParams {
  const uint8_t* src = nullptr;  // [rows, cols] in src_dtype (device)
  SourceDType src_dtype = SourceDType::kBF16;
  const float* src_scales = nullptr;  // FP8 sources: [rows] multipliers; else null
  int64_t rows = 0;
  int64_t cols = 0;
  int64_t ld = 0;           // output row stride in elements (>= cols; padding zeroed)
  RowOutputKind kind = RowOutputKind::kFp8PerRow;
  float fixed_scale = 1.0f;
  uint8_t* out = nullptr;   // [rows, ld] E4M3 codes or bf16
  float* scales = nullptr;  // [rows] (FP8 outputs)
  unsigned long long* bad_row = nullptr;  // atomicMin'ed with the first row holding NaN/Inf
  int64_t row_offset = 0;   // added to row numbers reported in bad_row
};

cudaError_t LaunchQuantizeWeightRows(const WeightRowsParams& p, cudaStream_t stream);

// amax[r] = max |src row r| for rows [0, rows); non-finite rows are reported as above.
cudaError_t LaunchRowAmax(const uint8_t* src, SourceDType dtype, int64_t rows, int64_t cols, float* amax,
                          unsigned long long* bad_row, int64_t row_offset, cudaStream_t stream);

}  // namespace lmhead::cuda

#endif  // LMHEAD_KERNELS_CUDA_WEIGHT_QUANT_H_
