#include "kernels/head_quantizer.h"

#include <cmath>
#include <limits>

#include "gtest/gtest.h"
#include "kernels/fp8.h"
#include "tests/test_util.h"

namespace lmhead {
namespace {

constexpr int64_t kVocab = 300;
constexpr int64_t kHidden = 80;

HeadSource F32Source(const std::vector<float>& w) { return testing::F32HeadSource(w, kVocab, kHidden); }

float Dequant(const HeadWeights& h, int64_t r, int64_t c) {
  return Fp8E4m3Decode(h.data[r * h.hidden + c]) * h.row_scales[r];
}

// E4M3 keeps 3 mantissa bits: relative error <= 2^-4 for normals; below the smallest normal
// (2^-6 * scale) the absolute error is <= half a subnormal step (2^-10 * scale).
void ExpectWithinE4m3Bound(const HeadWeights& h, const std::vector<float>& w) {
  for (int64_t r = 0; r < kVocab; ++r) {
    for (int64_t c = 0; c < kHidden; ++c) {
      const float x = w[r * kHidden + c];
      const double bound = std::max(std::fabs(x) * 0.0625, h.row_scales[r] * std::ldexp(1.0, -10));
      ASSERT_LE(std::fabs(Dequant(h, r, c) - x), bound * (1 + 1e-6)) << r << "," << c;
    }
  }
}

TEST(HeadQuantizerTest, PerRowErrorBoundAndExactRowMaximum) {
  const std::vector<float> w = testing::RandomWeights(kVocab, kHidden, 1);
  QuantizeOptions opt;
  opt.scale_mode = ScaleMode::kPerRow;
  auto h = QuantizeHead(F32Source(w), opt);
  ASSERT_TRUE(h.ok()) << h.status();
  EXPECT_EQ(h->ResidentBytes(), kVocab * kHidden + kVocab * 4);
  EXPECT_EQ(h->ReferenceBytes(), kVocab * kHidden * 2);
  ExpectWithinE4m3Bound(*h, w);
  for (int64_t r = 0; r < kVocab; ++r) {
    float amax = 0;
    int64_t at = 0;
    for (int64_t c = 0; c < kHidden; ++c) {
      if (std::fabs(w[r * kHidden + c]) > amax) amax = std::fabs(w[r * kHidden + c]), at = c;
    }
    EXPECT_NEAR(std::fabs(Dequant(*h, r, at)), amax, amax * 1e-6) << "row " << r;
  }
}

TEST(HeadQuantizerTest, PerTensorSharesOneScale) {
  const std::vector<float> w = testing::RandomWeights(kVocab, kHidden, 2);
  QuantizeOptions opt;
  opt.scale_mode = ScaleMode::kPerTensor;
  auto h = QuantizeHead(F32Source(w), opt);
  ASSERT_TRUE(h.ok()) << h.status();
  float amax = 0;
  for (float x : w) amax = std::max(amax, std::fabs(x));
  for (float s : h->row_scales) EXPECT_EQ(s, amax / 448.0f);
  ExpectWithinE4m3Bound(*h, w);
}

TEST(HeadQuantizerTest, UnscaledCastLosesSmallWeightsToSubnormalsAndZero) {
  std::vector<float> w = testing::RandomWeights(kVocab, kHidden, 3);
  for (float& x : w) x *= 0.25f;  // std ~0.005
  QuantizeOptions none, per_row;
  none.scale_mode = ScaleMode::kNone;
  auto unscaled = QuantizeHead(F32Source(w), none);
  auto scaled = QuantizeHead(F32Source(w), per_row);
  ASSERT_TRUE(unscaled.ok() && scaled.ok());
  for (float s : unscaled->row_scales) EXPECT_EQ(s, 1.0f);
  double err_none = 0, err_row = 0;
  int64_t zeros = 0;
  for (int64_t r = 0; r < kVocab; ++r) {
    for (int64_t c = 0; c < kHidden; ++c) {
      const float x = w[r * kHidden + c];
      err_none += std::fabs(Dequant(*unscaled, r, c) - x);
      err_row += std::fabs(Dequant(*scaled, r, c) - x);
      zeros += unscaled->data[r * kHidden + c] % 128 == 0 && x != 0;
    }
  }
  // Absolute error bound of the unscaled cast (2^-10 below 2^-6) still holds...
  for (int64_t i = 0; i < kVocab * kHidden; ++i) {
    ASSERT_LE(std::fabs(Dequant(*unscaled, i / kHidden, i % kHidden) - w[i]),
              std::max(std::fabs(w[i]) * 0.0625, std::ldexp(1.0, -10)) * (1 + 1e-6));
  }
  // ...but it is far worse than per-row scaling, and flushes some weights to zero.
  EXPECT_GT(err_none, 5 * err_row);
  EXPECT_GT(zeros, 0);
}

TEST(HeadQuantizerTest, ChunkSizeAndThreadsDoNotChangeTheResult) {
  const std::vector<float> w = testing::RandomWeights(kVocab, kHidden, 4);
  QuantizeOptions a, b;
  a.chunk_rows = 1;
  a.threads = 1;
  b.chunk_rows = 77;
  b.threads = 3;
  int64_t progress_calls = 0, last_done = 0;
  b.on_progress = [&](int64_t done, int64_t total) {
    EXPECT_EQ(total, kVocab);
    EXPECT_GT(done, last_done);
    last_done = done;
    ++progress_calls;
  };
  auto ha = QuantizeHead(F32Source(w), a);
  auto hb = QuantizeHead(F32Source(w), b);
  ASSERT_TRUE(ha.ok() && hb.ok());
  EXPECT_EQ(ha->data, hb->data);
  EXPECT_EQ(ha->row_scales, hb->row_scales);
  EXPECT_EQ(progress_calls, (kVocab + 76) / 77);
  EXPECT_EQ(last_done, kVocab);
}

TEST(HeadQuantizerTest, ReleasesEveryConsumedByteOnce) {
  const std::vector<float> w = testing::RandomWeights(kVocab, kHidden, 5);
  HeadSource s = F32Source(w);
  uint64_t next = 0;
  s.release = [&](uint64_t offset, uint64_t len) {
    EXPECT_EQ(offset, next);
    next = offset + len;
  };
  QuantizeOptions opt;
  opt.chunk_rows = 64;
  ASSERT_TRUE(QuantizeHead(s, opt).ok());
  EXPECT_EQ(next, static_cast<uint64_t>(kVocab * kHidden * 4));
}

TEST(HeadQuantizerTest, NonFiniteWeightNamesTheRow) {
  std::vector<float> w = testing::RandomWeights(kVocab, kHidden, 6);
  w[123 * kHidden + 7] = std::numeric_limits<float>::quiet_NaN();
  w[200 * kHidden + 1] = std::numeric_limits<float>::infinity();
  for (ScaleMode mode : {ScaleMode::kPerRow, ScaleMode::kPerTensor}) {
    QuantizeOptions opt;
    opt.scale_mode = mode;
    opt.threads = 2;
    auto h = QuantizeHead(F32Source(w), opt);
    ASSERT_FALSE(h.ok());
    EXPECT_EQ(h.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(h.status().message().find("row 123"), std::string::npos) << h.status();
  }
}

TEST(HeadQuantizerTest, Bf16FormatKeepsBf16Bits) {
  const std::vector<float> w = testing::RandomWeights(kVocab, kHidden, 7);
  QuantizeOptions opt;
  opt.format = WeightFormat::kBf16;
  auto h = QuantizeHead(F32Source(w), opt);
  ASSERT_TRUE(h.ok());
  EXPECT_TRUE(h->row_scales.empty());
  EXPECT_EQ(h->ResidentBytes(), h->ReferenceBytes());
}

TEST(HeadQuantizerTest, Fp8SourceKeepsCodesAndScales) {
  std::vector<uint8_t> codes(kVocab * kHidden);
  for (size_t i = 0; i < codes.size(); ++i) codes[i] = static_cast<uint8_t>((i * 37) % 0x7e);
  HeadSource s;
  s.dtype = SourceDType::kF8E4M3;
  s.rows = kVocab;
  s.cols = kHidden;
  s.data = codes.data();
  s.fp8_scales.assign(kVocab, 0.5f);
  s.fp8_scales[9] = 0.25f;
  auto h = QuantizeHead(s, QuantizeOptions{});
  ASSERT_TRUE(h.ok()) << h.status();
  EXPECT_EQ(h->scale_mode, ScaleMode::kPerRow);
  EXPECT_EQ(h->data, codes);
  EXPECT_EQ(h->row_scales[9], 0.25f);

  codes[kHidden * 4 + 2] = 0x7f;  // an FP8 NaN
  auto bad = QuantizeHead(s, QuantizeOptions{});
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("row 4"), std::string::npos) << bad.status();
}

}  // namespace
}  // namespace lmhead
