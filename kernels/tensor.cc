#include "kernels/tensor.h"

namespace lmhead {

const char* WeightFormatName(WeightFormat f) {
  return f == WeightFormat::kFp8E4m3 ? "fp8_e4m3" : "bf16";
}

const char* ScaleModeName(ScaleMode m) {
  switch (m) {
    case ScaleMode::kPerRow: return "per_row";
    case ScaleMode::kPerTensor: return "per_tensor";
    case ScaleMode::kNone: return "none";
  }
  return "?";
}

bool ParseWeightFormat(absl::string_view text, WeightFormat* out) {
  if (text == "fp8_e4m3" || text == "fp8") { *out = WeightFormat::kFp8E4m3; return true; }
  if (text == "bf16") { *out = WeightFormat::kBf16; return true; }
  return false;
}

bool ParseScaleMode(absl::string_view text, ScaleMode* out) {
  if (text == "per_row") { *out = ScaleMode::kPerRow; return true; }
  if (text == "per_tensor") { *out = ScaleMode::kPerTensor; return true; }
  if (text == "none") { *out = ScaleMode::kNone; return true; }
  return false;
}

}  // namespace lmhead
