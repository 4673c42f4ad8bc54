// bfloat16 / IEEE half <-> float conversions on raw bits. Float -> 16-bit conversions round to
// nearest, ties to even; NaN stays NaN (quiet); overflow gives infinity (half) as IEEE does.
#ifndef LMHEAD_KERNELS_HALF_H_
#define LMHEAD_KERNELS_HALF_H_

#include <cmath>
#include <cstdint>
#include <cstring>

namespace lmhead {

inline uint32_t FloatBits(float f) { uint32_t u; std::memcpy(&u, &f, 4); return u; }
inline float BitsToFloat(uint32_t u) { float f; std::memcpy(&f, &u, 4); return f; }

inline float Bf16ToFloat(uint16_t b) { return BitsToFloat(static_cast<uint32_t>(b) << 16); }

inline uint16_t FloatToBf16(float f) {
  uint32_t u = FloatBits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40);  // NaN
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

inline float HalfToFloat(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu;
  const uint32_t man = h & 0x3ffu;
  if (exp == 0) {  // zero or subnormal: man * 2^-24
    const float v = std::ldexp(static_cast<float>(man), -24);
    return BitsToFloat(FloatBits(v) | sign);
  }
  if (exp == 31) return BitsToFloat(sign | 0x7f800000u | (man << 13));
  return BitsToFloat(sign | ((exp + 112u) << 23) | (man << 13));
}

inline uint16_t FloatToHalf(float f) {
  uint32_t x = FloatBits(f);
  const uint16_t sign = static_cast<uint16_t>((x >> 16) & 0x8000u);
  x &= 0x7fffffffu;
  if (x > 0x7f800000u) return sign | 0x7e00u;   // NaN
  if (x >= 0x477ff000u) return sign | 0x7c00u;  // rounds past 65504: infinity
  if (x < 0x38800000u) {                        // below 2^-14: subnormal half, step 2^-24
    return sign | static_cast<uint16_t>(std::nearbyint(BitsToFloat(x) * 16777216.0f));
  }
  x -= 112u << 23;  // rebias exponent 127 -> 15
  x = (x + 0xfffu + ((x >> 13) & 1u)) >> 13;
  return sign | static_cast<uint16_t>(x);
}

}  // namespace lmhead

#endif  // LMHEAD_KERNELS_HALF_H_
