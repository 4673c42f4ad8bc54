#include "kernels/fp8.h"

#include <cmath>
#include <cstdint>
#include <limits>

#include "gtest/gtest.h"
#include "kernels/half.h"

namespace lmhead {
namespace {

// Brute force: the finite code nearest to x, ties to the even code (mantissa LSB 0).
uint8_t NearestCode(float x) {
  if (std::fabs(x) > kFp8E4m3Max) return x > 0 ? kFp8E4m3MaxCode : (0x80 | kFp8E4m3MaxCode);
  int best = -1;
  double best_err = 0;
  for (int c = 0; c < 256; ++c) {
    const float v = Fp8E4m3Decode(static_cast<uint8_t>(c));
    if (std::isnan(v) || (std::signbit(v) != std::signbit(x))) continue;
    const double err = std::fabs(static_cast<double>(v) - x);
    if (best < 0 || err < best_err || (err == best_err && (c & 1) == 0)) {
      best = c;
      best_err = err;
    }
  }
  return static_cast<uint8_t>(best);
}

TEST(Fp8Test, DecodeTableHasTheE4M3Values) {
  EXPECT_EQ(Fp8E4m3Decode(0x00), 0.0f);
  EXPECT_TRUE(std::signbit(Fp8E4m3Decode(0x80)));
  EXPECT_EQ(Fp8E4m3Decode(0x01), std::ldexp(1.0f, -9));  // smallest subnormal
  EXPECT_EQ(Fp8E4m3Decode(0x08), std::ldexp(1.0f, -6));  // smallest normal
  EXPECT_EQ(Fp8E4m3Decode(0x38), 1.0f);
  EXPECT_EQ(Fp8E4m3Decode(0x7e), 448.0f);
  EXPECT_EQ(Fp8E4m3Decode(0xfe), -448.0f);
  EXPECT_TRUE(std::isnan(Fp8E4m3Decode(0x7f)));
  EXPECT_TRUE(std::isnan(Fp8E4m3Decode(0xff)));
}

TEST(Fp8Test, EveryCodeDecodesAndReencodesToItself) {
  for (int c = 0; c < 256; ++c) {
    const float v = Fp8E4m3Decode(static_cast<uint8_t>(c));
    if (std::isnan(v)) {
      EXPECT_EQ(Fp8E4m3Encode(v) & 0x7f, kFp8E4m3NanCode) << c;
      continue;
    }
    EXPECT_EQ(Fp8E4m3Encode(v), c) << "code " << c << " value " << v;
  }
}

TEST(Fp8Test, EveryBf16ValueEncodesToTheNearestCodeTiesToEven) {
  for (uint32_t bits = 0; bits < 65536; ++bits) {
    const float x = Bf16ToFloat(static_cast<uint16_t>(bits));
    if (std::isnan(x)) continue;
    if (std::isinf(x)) {
      EXPECT_EQ(Fp8E4m3Encode(x), x > 0 ? 0x7e : 0xfe);
      continue;
    }
    ASSERT_EQ(Fp8E4m3Encode(x), NearestCode(x)) << "bf16 bits " << bits << " value " << x;
  }
}

TEST(Fp8Test, TiesRoundToEven) {
  // 1.0625 lies halfway between 1.0 (0x38, even) and 1.125 (0x39): goes to 1.0.
  EXPECT_EQ(Fp8E4m3Encode(1.0625f), 0x38);
  // 1.1875 lies halfway between 1.125 (0x39) and 1.25 (0x3a, even): goes to 1.25.
  EXPECT_EQ(Fp8E4m3Encode(1.1875f), 0x3a);
  // Subnormal tie: 1.5 * 2^-9 between 2^-9 (0x01) and 2^-8 (0x02, even).
  EXPECT_EQ(Fp8E4m3Encode(1.5f * std::ldexp(1.0f, -9)), 0x02);
  // Half the smallest subnormal rounds to zero (even).
  EXPECT_EQ(Fp8E4m3Encode(std::ldexp(1.0f, -10)), 0x00);
}

TEST(Fp8Test, SaturatesInsteadOfOverflowing) {
  EXPECT_EQ(Fp8E4m3Encode(448.0f), 0x7e);
  EXPECT_EQ(Fp8E4m3Encode(464.0f), 0x7e);
  EXPECT_EQ(Fp8E4m3Encode(1e30f), 0x7e);
  EXPECT_EQ(Fp8E4m3Encode(-1e30f), 0xfe);
  EXPECT_EQ(Fp8E4m3Encode(std::numeric_limits<float>::infinity()), 0x7e);
}

TEST(Fp8Test, ScaleMapsTheLargestMagnitudeOntoTheRange) {
  EXPECT_EQ(Fp8ScaleForAmax(448.0f), 1.0f);
  EXPECT_EQ(Fp8ScaleForAmax(0.0f), 1.0f);
  const float amax = 0.0731f;
  const float scale = Fp8ScaleForAmax(amax);
  EXPECT_EQ(Fp8E4m3Encode(amax / scale), 0x7e);
  EXPECT_NEAR(Fp8E4m3Decode(0x7e) * scale, amax, amax * 1e-6);
}

TEST(HalfTest, Fp16RoundTripsEveryFiniteValue) {
  for (uint32_t bits = 0; bits < 65536; ++bits) {
    const float x = HalfToFloat(static_cast<uint16_t>(bits));
    if (std::isnan(x)) continue;
    EXPECT_EQ(FloatToHalf(x), bits) << bits;
  }
  EXPECT_EQ(FloatToHalf(65520.0f), 0x7c00);  // rounds past the largest finite half
  EXPECT_EQ(HalfToFloat(FloatToHalf(1.0f + std::ldexp(1.0f, -11))), 1.0f);  // tie to even
}

TEST(HalfTest, Bf16RoundsToNearestEven) {
  EXPECT_EQ(FloatToBf16(1.0f), 0x3f80);
  EXPECT_EQ(Bf16ToFloat(FloatToBf16(1.0f + std::ldexp(1.0f, -8))), 1.0f);  // tie to even
  EXPECT_EQ(Bf16ToFloat(FloatToBf16(1.0f + 3 * std::ldexp(1.0f, -8))), 1.0f + std::ldexp(1.0f, -6));
  EXPECT_TRUE(std::isnan(Bf16ToFloat(FloatToBf16(std::numeric_limits<float>::quiet_NaN()))));
}

}  // namespace
}  // namespace lmhead
