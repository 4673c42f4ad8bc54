// OCP FP8 E4M3 ("e4m3fn": bias 7, max 448, no infinities, NaN = 0x7F / 0xFF) and per-row /
// per-tensor scaled quantization. Pure functions; thread-safe.
#ifndef LMHEAD_KERNELS_FP8_H_
#define LMHEAD_KERNELS_FP8_H_

#include <array>
#include <cstdint>

namespace lmhead {

inline constexpr float kFp8E4m3Max = 448.0f;
inline constexpr uint8_t kFp8E4m3MaxCode = 0x7e;  // +448
inline constexpr uint8_t kFp8E4m3NanCode = 0x7f;

// Table of the 256 code values (NaN for 0x7F / 0xFF).
const std::array<float, 256>& Fp8E4m3DecodeTable();

inline float Fp8E4m3Decode(uint8_t code) { return Fp8E4m3DecodeTable()[code]; }

// Rounds x to the nearest E4M3 value, ties to even. Saturating: |x| > 448 (infinities included)
// gives ±448. NaN gives NaN with x's sign.
uint8_t Fp8E4m3Encode(float x);

// The scale that maps a row (or tensor) whose largest magnitude is `amax` onto [-448, 448]:
// amax / 448, or 1 when amax is 0. amax must be finite.
float Fp8ScaleForAmax(float amax);

// Writes dst[i] = Fp8E4m3Encode(src[i] / scale) for i in [0, n).
void QuantizeFp8(const float* src, int64_t n, float scale, uint8_t* dst);

}  // namespace lmhead

#endif  // LMHEAD_KERNELS_FP8_H_
