// Element types and the head's weight storage, shared by every backend.
#ifndef LMHEAD_KERNELS_TENSOR_H_
#define LMHEAD_KERNELS_TENSOR_H_

#include <cstddef>
#include <cstdint>
#include <string_view>
#include <vector>

#include "absl/strings/string_view.h"

namespace lmhead {

// Element types of tensors that cross the service (activations, logits).
enum class DType { kFp32, kBf16, kFp16 };

inline size_t DTypeSize(DType t) { return t == DType::kFp32 ? 4 : 2; }
inline const char* DTypeName(DType t) {
  switch (t) {
    case DType::kFp32: return "fp32";
    case DType::kBf16: return "bf16";
    case DType::kFp16: return "fp16";
  }
  return "?";
}

// How the served head's weights are stored.
enum class WeightFormat { kFp8E4m3, kBf16 };
// How FP8 weights are scaled: w ≈ decode(q) * scale.
//   kPerRow:    scale_r = max|w_r| / 448 (each row's largest weight is exact)
//   kPerTensor: one scale = max|W| / 448
//   kNone:      scale 1 — the unscaled cast, kept only to compare against
enum class ScaleMode { kPerRow, kPerTensor, kNone };

const char* WeightFormatName(WeightFormat f);  // "fp8_e4m3" | "bf16"
const char* ScaleModeName(ScaleMode m);        // "per_row" | "per_tensor" | "none"
bool ParseWeightFormat(absl::string_view text, WeightFormat* out);
bool ParseScaleMode(absl::string_view text, ScaleMode* out);

// The head as a backend holds it. Row-major [vocab, hidden].
//   kFp8E4m3: data holds one E4M3 code per weight; row_scales[v] multiplies row v
//             (per-tensor and unscaled heads repeat one value).
//   kBf16:    data holds little-endian bfloat16 bits (2 bytes per weight); row_scales empty.
struct HeadWeights {
  WeightFormat format = WeightFormat::kFp8E4m3;
  ScaleMode scale_mode = ScaleMode::kPerRow;
  int64_t vocab = 0;
  int64_t hidden = 0;
  std::vector<uint8_t> data;
  std::vector<float> row_scales;

  // Bytes held (weights + scales).
  int64_t ResidentBytes() const {
    return static_cast<int64_t>(data.size() + row_scales.size() * sizeof(float));
  }
  // Bytes the same head takes in BF16.
  int64_t ReferenceBytes() const { return vocab * hidden * 2; }
};

// Model-level logit transforms from config.json, applied to every logit in this order:
// logit *= scale; if softcap > 0: logit = softcap * tanh(logit / softcap).
struct LogitTransform {
  float scale = 1.0f;
  float softcap = 0.0f;
};

}  // namespace lmhead

#endif  // LMHEAD_KERNELS_TENSOR_H_
