// Host quantizer: turns a HeadSource into the HeadWeights a backend serves, reading straight from
// the source (e.g. a file mapping) in row chunks: peak memory is the result plus one chunk, never
// a float copy. The CUDA backend's GPU quantizer produces the same codes and scales.
#ifndef LMHEAD_KERNELS_HEAD_QUANTIZER_H_
#define LMHEAD_KERNELS_HEAD_QUANTIZER_H_

#include <cstdint>
#include <functional>
#include <vector>

#include "absl/status/statusor.h"
#include "kernels/head_source.h"
#include "kernels/tensor.h"

namespace lmhead {

// Errors: INVALID_ARGUMENT naming the first row holding a NaN or infinity (or an FP8 NaN code).
absl::StatusOr<HeadWeights> QuantizeHead(const HeadSource& source, const QuantizeOptions& options);

// Converts n elements of a source dtype to float.
void SourceToFloat(SourceDType dtype, const uint8_t* src, int64_t n, float* dst);

}  // namespace lmhead

#endif  // LMHEAD_KERNELS_HEAD_QUANTIZER_H_
