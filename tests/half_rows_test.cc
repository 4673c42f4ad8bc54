// ScaleRowToHalf (kernels/half_rows.h): the host-side fp16 rows must be exactly what the CUDA
// backend's activation kernels make from fp32 rows -- fp16(x * 2^(14 - e)) rounded to nearest
// even, max|x| = m 2^e -- on the vector path and the portable one alike.
#include "kernels/half_rows.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

#include "kernels/half.h"

namespace lmhead {
namespace {

// The rule, written out independently of the library: returns 1 / s.
float Reference(const std::vector<float>& x, std::vector<uint16_t>* out) {
  float amax = 0;
  for (float v : x) amax = std::max(amax, std::fabs(v));
  int e = 14;
  if (amax > 0) {
    std::frexp(amax, &e);
    if (e < -100) e = -100;
  }
  out->resize(x.size());
  for (size_t i = 0; i < x.size(); ++i) (*out)[i] = FloatToHalf(x[i] * std::ldexp(1.0f, 14 - e));
  return std::ldexp(1.0f, e - 14);
}

std::vector<std::vector<float>> Rows() {
  std::mt19937_64 rng(17);
  std::vector<std::vector<float>> rows;
  for (int64_t n : {1, 15, 16, 17, 31, 33, 136, 5120, 16400}) {
    for (float stddev : {1e-3f, 1.0f, 3e4f}) {
      std::normal_distribution<float> normal(0.0f, stddev);
      std::vector<float> x(n);
      for (float& v : x) v = normal(rng);
      rows.push_back(x);
    }
  }
  rows.push_back(std::vector<float>(40, 0.0f));  // all zero: scale 2^0
  std::vector<float> spike(100, 1e-6f);
  spike[77] = -3e38f;  // near fp32's largest: the others round to zero or fp16 subnormals
  rows.push_back(spike);
  std::vector<float> tiny(50);  // fp32 subnormals: the exponent floor (e = -100)
  for (size_t i = 0; i < tiny.size(); ++i) tiny[i] = std::ldexp(static_cast<float>(i) - 25, -140);
  rows.push_back(tiny);
  std::vector<float> ties(64);  // values exactly halfway between two fp16 values after scaling
  for (size_t i = 0; i < ties.size(); ++i) ties[i] = (8192.0f + i * 8 + 4.0f) * (i % 2 ? 1 : -1) / 16384.0f;
  ties[0] = 1.0f;  // max 1: s = 2^13
  rows.push_back(ties);
  return rows;
}

// Every path this CPU runs (portable always; AVX2 + F16C and AVX-512 on most x86-64 machines,
// the dev VM and the GPU machines included; NEON on AArch64), and the default one.
TEST(HalfRowsTest, MatchesTheGpuRuleOnEveryPathAndAlignment) {
  int paths = 0;
  for (HalfRowsPath path :
       {HalfRowsPath::kPortable, HalfRowsPath::kAvx2F16c, HalfRowsPath::kAvx512, HalfRowsPath::kNeon}) {
    if (!HalfRowsPathRuns(path)) continue;
    ++paths;
    SCOPED_TRACE(::testing::Message() << "path " << static_cast<int>(path));
    for (const std::vector<float>& x : Rows()) {
      std::vector<uint16_t> want;
      const float want_inv = Reference(x, &want);
      SCOPED_TRACE(::testing::Message() << "n " << x.size() << " first " << x[0]);
      for (int offset : {0, 1, 5, 16}) {  // output misaligned by offset fp16 values
        std::vector<uint16_t> out(x.size() + offset + 16, 0xdead);
        EXPECT_EQ(ScaleRowToHalfOn(path, x.data(), x.size(), out.data() + offset), want_inv);
        EXPECT_TRUE(std::equal(want.begin(), want.end(), out.begin() + offset)) << "offset " << offset;
        EXPECT_EQ(out[x.size() + offset], 0xdead) << "wrote past the row";
        std::vector<uint16_t> best(x.size());
        EXPECT_EQ(ScaleRowToHalf(x.data(), x.size(), best.data()), want_inv);
        EXPECT_EQ(best, want);
      }
    }
  }
  std::printf("[ paths ] %d of 4 run here; the default is %d\n", paths, static_cast<int>(BestHalfRowsPath()));
  EXPECT_EQ(HalfRowsAreFast(), BestHalfRowsPath() != HalfRowsPath::kPortable);
}

TEST(HalfRowsTest, ScaledRowsSpanTheHalfRangeAndRoundTrip) {
  std::mt19937_64 rng(3);
  std::normal_distribution<float> normal(0.0f, 50.0f);
  std::vector<float> x(1000);
  for (float& v : x) v = normal(rng);
  std::vector<uint16_t> h(x.size());
  const float inv = ScaleRowToHalf(x.data(), x.size(), h.data());
  float hmax = 0, amax = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    hmax = std::max(hmax, std::fabs(HalfToFloat(h[i])));
    amax = std::max(amax, std::fabs(x[i]));
    // fp16 keeps 11 significant bits: within half a step of 2^(13 - 10) at the top of the range.
    EXPECT_LE(std::fabs(HalfToFloat(h[i]) * inv - x[i]), std::ldexp(1.0f, 3) * inv) << i;
  }
  EXPECT_GE(hmax, 8192.0f);
  EXPECT_LE(hmax, 16384.0f);
  EXPECT_NEAR(hmax * inv, amax, amax * 1e-3);
}

TEST(HalfRowsTest, LayoutPutsTheScalesAfterTheValuesOnA64ByteBoundary) {
  for (int64_t rows : {1, 3, 64}) {
    for (int64_t hidden : {1, 136, 5120}) {
      std::vector<char> buffer(HalfRowsBytes(rows, hidden) + 64);
      char* base = buffer.data() + (64 - reinterpret_cast<uintptr_t>(buffer.data()) % 64) % 64;
      const HalfRows h = HalfRowsIn(base, rows, hidden);
      EXPECT_EQ(reinterpret_cast<char*>(h.values), base);
      const char* scales = reinterpret_cast<const char*>(h.inv_scales);
      EXPECT_GE(scales, base + rows * hidden * 2);
      EXPECT_EQ((scales - base) % 64, 0);
      EXPECT_LT(scales - base, rows * hidden * 2 + 64);
      EXPECT_EQ(static_cast<size_t>(scales + rows * sizeof(float) - base), HalfRowsBytes(rows, hidden));
    }
  }
}

}  // namespace
}  // namespace lmhead
