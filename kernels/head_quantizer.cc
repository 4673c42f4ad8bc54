#include "kernels/head_quantizer.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <limits>

#include "absl/strings/str_cat.h"
#include "kernels/cpu/thread_pool.h"
#include "kernels/fp8.h"
#include "kernels/half.h"

namespace lmhead {
namespace {

constexpr int64_t kNoBadRow = std::numeric_limits<int64_t>::max();

// Runs fn(row, float_row) for rows [begin, end) split across the pool; fn returns false for a
// bad row. Returns the smallest bad row, or kNoBadRow.
int64_t ForEachRow(ThreadPool& pool, const HeadSource& src, int64_t begin, int64_t end,
                   const std::function<bool(int64_t, const float*)>& fn) {
  std::atomic<int64_t> bad{kNoBadRow};
  const int parts = pool.threads();
  const size_t elem = SourceDTypeSize(src.dtype);
  pool.ParallelFor(parts, [&](int p) {
    std::vector<float> row(src.cols);
    const int64_t lo = begin + (end - begin) * p / parts;
    const int64_t hi = begin + (end - begin) * (p + 1) / parts;
    for (int64_t r = lo; r < hi; ++r) {
      SourceToFloat(src.dtype, src.data + r * src.cols * elem, src.cols, row.data());
      if (!fn(r, row.data())) {
        int64_t seen = bad.load();
        while (r < seen && !bad.compare_exchange_weak(seen, r)) {}
        return;
      }
    }
  });
  return bad.load();
}

float Amax(const float* row, int64_t n) {
  float amax = 0.0f;
  for (int64_t i = 0; i < n; ++i) amax = std::max(amax, std::fabs(row[i]));
  return amax;
}

bool AllFinite(const float* row, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    if (!std::isfinite(row[i])) return false;
  }
  return true;
}

absl::Status BadRow(int64_t row, const char* what) {
  return absl::InvalidArgumentError(absl::StrCat("head weight row ", row, " ", what));
}

}  // namespace

void SourceToFloat(SourceDType dtype, const uint8_t* src, int64_t n, float* dst) {
  switch (dtype) {
    case SourceDType::kF32:
      std::memcpy(dst, src, n * 4);
      break;
    case SourceDType::kBF16:
      for (int64_t i = 0; i < n; ++i) dst[i] = Bf16ToFloat(static_cast<uint16_t>(src[2 * i] | (src[2 * i + 1] << 8)));
      break;
    case SourceDType::kF16:
      for (int64_t i = 0; i < n; ++i) dst[i] = HalfToFloat(static_cast<uint16_t>(src[2 * i] | (src[2 * i + 1] << 8)));
      break;
    case SourceDType::kF8E4M3:
      for (int64_t i = 0; i < n; ++i) dst[i] = Fp8E4m3Decode(src[i]);
      break;
  }
}

absl::StatusOr<HeadWeights> QuantizeHead(const HeadSource& src, const QuantizeOptions& options) {
  const bool fp8_source = src.dtype == SourceDType::kF8E4M3;
  if (fp8_source && !src.fp8_scales.empty() && src.fp8_scales.size() != 1 &&
      static_cast<int64_t>(src.fp8_scales.size()) != src.rows) {
    return absl::InvalidArgumentError("FP8 head scales must have 1 or `rows` values");
  }
  for (float s : src.fp8_scales) {
    if (!std::isfinite(s) || s <= 0.0f) return absl::InvalidArgumentError("FP8 head scale is not a positive finite number");
  }

  HeadWeights w;
  w.format = options.format;
  w.vocab = src.rows;
  w.hidden = src.cols;
  w.scale_mode = EffectiveScaleMode(src, options.scale_mode);
  const bool to_fp8 = w.format == WeightFormat::kFp8E4m3;
  w.data.resize(src.rows * src.cols * (to_fp8 ? 1 : 2));
  if (to_fp8) w.row_scales.assign(src.rows, 1.0f);

  ThreadPool pool(std::max(1, options.threads));
  const size_t src_row_bytes = src.cols * SourceDTypeSize(src.dtype);
  const int64_t chunk = std::max<int64_t>(1, options.chunk_rows);

  // Scale for source row r (per-tensor amax needs a first pass over the whole tensor).
  float tensor_scale = 1.0f;
  if (!fp8_source && to_fp8 && w.scale_mode == ScaleMode::kPerTensor) {
    // Non-negative floats order like their bit patterns, so the max can be taken atomically.
    std::atomic<uint32_t> amax_bits{0};
    for (int64_t begin = 0; begin < src.rows; begin += chunk) {
      const int64_t end = std::min(src.rows, begin + chunk);
      const int64_t bad = ForEachRow(pool, src, begin, end, [&](int64_t, const float* row) {
        if (!AllFinite(row, src.cols)) return false;
        const uint32_t bits = FloatBits(Amax(row, src.cols));
        uint32_t seen = amax_bits.load();
        while (bits > seen && !amax_bits.compare_exchange_weak(seen, bits)) {}
        return true;
      });
      if (bad != kNoBadRow) return BadRow(bad, "has a NaN or infinite value");
    }
    tensor_scale = Fp8ScaleForAmax(BitsToFloat(amax_bits.load()));
  }

  for (int64_t begin = 0; begin < src.rows; begin += chunk) {
    const int64_t end = std::min(src.rows, begin + chunk);
    int64_t bad;
    if (fp8_source && to_fp8) {
      std::memcpy(w.data.data() + begin * src.cols, src.data + begin * src.cols, (end - begin) * src.cols);
      bad = kNoBadRow;
      for (int64_t i = begin * src.cols; i < end * src.cols && bad == kNoBadRow; ++i) {
        if ((w.data[i] & 0x7f) == kFp8E4m3NanCode) bad = i / src.cols;
      }
      for (int64_t r = begin; r < end && !src.fp8_scales.empty(); ++r) {
        w.row_scales[r] = src.fp8_scales.size() == 1 ? src.fp8_scales[0] : src.fp8_scales[r];
      }
    } else {
      bad = ForEachRow(pool, src, begin, end, [&](int64_t r, const float* row) {
        if (!AllFinite(row, src.cols)) return false;
        if (!to_fp8) {
          const float scale = fp8_source && !src.fp8_scales.empty()
                                  ? src.fp8_scales[src.fp8_scales.size() == 1 ? 0 : r]
                                  : 1.0f;
          uint8_t* out = w.data.data() + r * src.cols * 2;
          for (int64_t i = 0; i < src.cols; ++i) {
            const uint16_t b = FloatToBf16(row[i] * scale);
            out[2 * i] = static_cast<uint8_t>(b);
            out[2 * i + 1] = static_cast<uint8_t>(b >> 8);
          }
          return true;
        }
        float scale = 1.0f;
        if (w.scale_mode == ScaleMode::kPerRow) scale = Fp8ScaleForAmax(Amax(row, src.cols));
        if (w.scale_mode == ScaleMode::kPerTensor) scale = tensor_scale;
        w.row_scales[r] = scale;
        QuantizeFp8(row, src.cols, scale, w.data.data() + r * src.cols);
        return true;
      });
    }
    if (bad != kNoBadRow) return BadRow(bad, "has a NaN or infinite value");
    if (src.release) src.release(begin * src_row_bytes, (end - begin) * src_row_bytes);
    if (options.on_progress) options.on_progress(end, src.rows);
  }
  return w;
}

}  // namespace lmhead
