#include "kernels/fp8.h"

#include <cmath>
#include <limits>

#include "kernels/half.h"

namespace lmhead {
namespace {

std::array<float, 256> BuildDecodeTable() {
  std::array<float, 256> table{};
  for (int code = 0; code < 256; ++code) {
    const int exp = (code >> 3) & 0xf;
    const int man = code & 0x7;
    float v;
    if ((code & 0x7f) == 0x7f) {
      v = std::numeric_limits<float>::quiet_NaN();
    } else if (exp == 0) {
      v = std::ldexp(static_cast<float>(man), -9);  // subnormal: man * 2^-9
    } else {
      v = std::ldexp(1.0f + man / 8.0f, exp - 7);
    }
    table[code] = (code & 0x80) ? -v : v;
  }
  return table;
}

}  // namespace

const std::array<float, 256>& Fp8E4m3DecodeTable() {
  static const std::array<float, 256> table = BuildDecodeTable();
  return table;
}

uint8_t Fp8E4m3Encode(float x) {
  const uint32_t bits = FloatBits(x);
  const uint8_t sign = static_cast<uint8_t>((bits >> 24) & 0x80u);
  const uint32_t abs_bits = bits & 0x7fffffffu;
  if (abs_bits > 0x7f800000u) return sign | kFp8E4m3NanCode;
  if (abs_bits > 0x43e00000u) return sign | kFp8E4m3MaxCode;  // |x| > 448, inf included
  if (abs_bits < 0x3c800000u) {  // |x| < 2^-6: subnormal E4M3, step 2^-9 (8 = smallest normal)
    return sign | static_cast<uint8_t>(std::nearbyint(BitsToFloat(abs_bits) * 512.0f));
  }
  // Normal: keep 3 of float's 23 mantissa bits, round to nearest even, then rebias 127 -> 7.
  const uint32_t rounded = (abs_bits + 0x7ffffu + ((abs_bits >> 20) & 1u)) >> 20;
  uint32_t code = rounded - (120u << 3);
  if (code > kFp8E4m3MaxCode) code = kFp8E4m3MaxCode;
  return sign | static_cast<uint8_t>(code);
}

float Fp8ScaleForAmax(float amax) { return amax > 0.0f ? amax / kFp8E4m3Max : 1.0f; }

void QuantizeFp8(const float* src, int64_t n, float scale, uint8_t* dst) {
  for (int64_t i = 0; i < n; ++i) dst[i] = Fp8E4m3Encode(src[i] / scale);
}

}  // namespace lmhead
