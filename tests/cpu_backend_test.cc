// The CPU backend against a float64 reference computed from the same (dequantized) weights.
#include "kernels/cpu/cpu_backend.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <string>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "kernels/fp8.h"
#include "kernels/half.h"
#include "kernels/head_quantizer.h"
#include "tests/test_util.h"

namespace lmhead {
namespace {

constexpr int64_t kVocab = 2003;  // not a multiple of the thread count
constexpr int64_t kHidden = 136;  // exercises the vector tail

HeadWeights Quantized(WeightFormat format, const std::vector<float>& w, int64_t vocab = kVocab,
                      int64_t hidden = kHidden) {
  QuantizeOptions opt;
  opt.format = format;
  return *QuantizeHead(testing::F32HeadSource(w, vocab, hidden), opt);
}

// float64 dequantized weights of `h`.
std::vector<double> Dequantized(const HeadWeights& h) {
  std::vector<double> out(h.vocab * h.hidden);
  for (int64_t i = 0; i < h.vocab * h.hidden; ++i) {
    if (h.format == WeightFormat::kFp8E4m3) {
      out[i] = static_cast<double>(Fp8E4m3Decode(h.data[i])) * h.row_scales[i / h.hidden];
    } else {
      out[i] = Bf16ToFloat(static_cast<uint16_t>(h.data[2 * i] | (h.data[2 * i + 1] << 8)));
    }
  }
  return out;
}

std::vector<double> ReferenceLogits(const std::vector<double>& w, const float* x, LogitTransform t) {
  std::vector<double> logits(kVocab);
  for (int64_t v = 0; v < kVocab; ++v) {
    double dot = 0;
    for (int64_t k = 0; k < kHidden; ++k) dot += w[v * kHidden + k] * x[k];
    dot *= t.scale;
    if (t.softcap > 0) dot = t.softcap * std::tanh(dot / t.softcap);
    logits[v] = dot;
  }
  return logits;
}

struct Case {
  WeightFormat format;
  LogitTransform transform;
  int threads;
  CpuKernel kernel = CpuKernel::kBest;
};

// The backend with `kernel`, or null (and a skip message) where this CPU lacks its instructions.
std::unique_ptr<Backend> BackendWith(HeadWeights head, LogitTransform t, int threads, CpuKernel kernel,
                                     std::string* skip) {
  auto backend = NewCpuBackend(std::move(head), t, threads, kernel);
  if (backend.status().code() == absl::StatusCode::kFailedPrecondition) {
    *skip = std::string(backend.status().message());
    return nullptr;
  }
  EXPECT_TRUE(backend.ok()) << backend.status();
  return backend.ok() ? std::move(*backend) : nullptr;
}

class CpuBackendTest : public ::testing::TestWithParam<Case> {};

TEST_P(CpuBackendTest, MatchesFloat64Reference) {
  const Case c = GetParam();
  const std::vector<float> w = testing::RandomWeights(kVocab, kHidden, 11);
  HeadWeights head = Quantized(c.format, w);
  const std::vector<double> wd = Dequantized(head);
  std::string skip;
  std::unique_ptr<Backend> backend = BackendWith(std::move(head), c.transform, c.threads, c.kernel, &skip);
  if (backend == nullptr) GTEST_SKIP() << skip;

  constexpr int64_t kRows = 5;
  std::mt19937 rng(3);
  std::normal_distribution<float> normal(0, 4);
  std::vector<float> x(kRows * kHidden);
  for (float& v : x) v = normal(rng);
  const std::vector<uint32_t> ids = {0, 7, kVocab - 1, 7};
  std::vector<RowSpec> specs(kRows);
  for (int64_t r = 0; r < kRows; ++r) specs[r] = {static_cast<uint32_t>(r * 10), ids, r % 2 == 0};
  std::vector<RowOutput> out;
  ASSERT_TRUE(backend->ComputeLogits({x.data(), kRows, specs}, &out).ok());
  ASSERT_EQ(out.size(), static_cast<size_t>(kRows));

  for (int64_t r = 0; r < kRows; ++r) {
    const std::vector<double> ref = ReferenceLogits(wd, x.data() + r * kHidden, c.transform);
    const double m = *std::max_element(ref.begin(), ref.end());
    double sum = 0;
    for (double l : ref) sum += std::exp(l - m);
    const double lse = m + std::log(sum);
    std::vector<uint32_t> order(kVocab);
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](uint32_t a, uint32_t b) { return ref[a] > ref[b]; });

    const RowOutput& o = out[r];
    EXPECT_EQ(o.argmax_id, order[0]);
    EXPECT_NEAR(o.max_logit, m, 1e-4);
    EXPECT_NEAR(o.logsumexp, lse, 1e-4);
    ASSERT_EQ(o.top_ids.size(), specs[r].top_k);
    for (size_t k = 0; k < o.top_ids.size(); ++k) {
      EXPECT_EQ(o.top_ids[k], order[k]) << "row " << r << " rank " << k;
      EXPECT_NEAR(o.top_logits[k], ref[order[k]], 1e-4);
    }
    ASSERT_EQ(o.token_logits.size(), ids.size());
    for (size_t i = 0; i < ids.size(); ++i) EXPECT_NEAR(o.token_logits[i], ref[ids[i]], 1e-4);
    if (specs[r].want_logits) {
      ASSERT_EQ(o.logits.size(), static_cast<size_t>(kVocab));
      for (int64_t v = 0; v < kVocab; ++v) ASSERT_NEAR(o.logits[v], ref[v], 1e-4) << v;
      // A token's logit is the same value wherever it is computed.
      EXPECT_EQ(o.token_logits[1], o.logits[7]);
      EXPECT_EQ(o.max_logit, o.logits[o.argmax_id]);
    } else {
      EXPECT_TRUE(o.logits.empty());
    }
  }
}

INSTANTIATE_TEST_SUITE_P(
    Formats, CpuBackendTest,
    ::testing::Values(Case{WeightFormat::kFp8E4m3, {}, 1}, Case{WeightFormat::kFp8E4m3, {}, 3},
                      Case{WeightFormat::kBf16, {}, 2}, Case{WeightFormat::kFp8E4m3, {0.5f, 0.0f}, 2},
                      Case{WeightFormat::kFp8E4m3, {1.0f, 5.0f}, 4},
                      Case{WeightFormat::kFp8E4m3, {}, 3, CpuKernel::kAvx512},
                      Case{WeightFormat::kFp8E4m3, {}, 3, CpuKernel::kAvx2},
                      Case{WeightFormat::kFp8E4m3, {}, 3, CpuKernel::kPortable}));

// Every kernel: a row's logits do not depend on its batch (bit for bit), and the kernels agree
// with each other to fp32 rounding. Hidden 184 = 5 x 32 + 16 + 8 takes every tail of the
// AVX-512 tiles; 9 rows make batch tiles of 4, 4 and 1; vocab 1001 leaves partial row tiles.
TEST(CpuBackendKernelTest, RowsDoNotDependOnTheirBatchAndKernelsAgree) {
  constexpr int64_t kV = 1001, kH = 184, kRows = 9;
  const HeadWeights head = Quantized(WeightFormat::kFp8E4m3, testing::RandomWeights(kV, kH, 5), kV, kH);
  std::mt19937 rng(9);
  std::normal_distribution<float> normal(0, 3);
  std::vector<float> x(kRows * kH);
  for (float& v : x) v = normal(rng);
  const std::vector<uint32_t> ids = {0, 500};
  const std::vector<RowSpec> specs(kRows, RowSpec{3, ids, true});

  std::vector<std::vector<float>> portable;
  int kernels_run = 0;
  for (CpuKernel kernel : {CpuKernel::kPortable, CpuKernel::kAvx2, CpuKernel::kAvx512}) {
    std::string skip;
    std::unique_ptr<Backend> backend = BackendWith(head, {}, 2, kernel, &skip);
    if (backend == nullptr) continue;
    ++kernels_run;
    EXPECT_EQ(backend->Tuning(), absl::StrCat("dot products: ", CpuKernelName(kernel), " kernel, 2 thread(s)"));
    std::vector<RowOutput> batched;
    const absl::Status status = backend->ComputeLogits({x.data(), kRows, specs}, &batched);
    ASSERT_TRUE(status.ok()) << status;
    for (int64_t r = 0; r < kRows; ++r) {
      SCOPED_TRACE(::testing::Message() << "kernel " << static_cast<int>(kernel) << " row " << r);
      std::vector<RowOutput> alone;
      ASSERT_TRUE(backend->ComputeLogits({x.data() + r * kH, 1, {&specs[r], 1}}, &alone).ok());
      EXPECT_EQ(alone[0].logits, batched[r].logits);
      EXPECT_EQ(alone[0].top_ids, batched[r].top_ids);
      EXPECT_EQ(batched[r].token_logits[1], batched[r].logits[500]);
      if (kernel == CpuKernel::kPortable) {
        portable.push_back(batched[r].logits);
        continue;
      }
      for (int64_t v = 0; v < kV; ++v) ASSERT_NEAR(batched[r].logits[v], portable[r][v], 1e-5 + 1e-6 * std::fabs(portable[r][v]));
    }
  }
  EXPECT_GE(kernels_run, 1);
}

TEST(CpuBackendTieTest, EqualLogitsRankLowerIdFirst) {
  HeadWeights h;
  h.vocab = 8;
  h.hidden = 4;
  h.data.assign(32, Fp8E4m3Encode(1.0f));  // every row identical
  h.row_scales.assign(8, 1.0f);
  auto backend = NewCpuBackend(std::move(h), {}, 3);
  ASSERT_TRUE(backend.ok());
  const std::vector<float> x = {1, 2, 3, 4};
  const RowSpec spec{5, {}, false};
  std::vector<RowOutput> out;
  ASSERT_TRUE((*backend)->ComputeLogits({x.data(), 1, {&spec, 1}}, &out).ok());
  EXPECT_EQ(out[0].argmax_id, 0u);
  EXPECT_EQ(out[0].top_ids, (std::vector<uint32_t>{0, 1, 2, 3, 4}));
  EXPECT_NEAR(out[0].logsumexp, 10.0 + std::log(8.0), 1e-5);
}

TEST(CpuBackendErrorsTest, RejectsBadBatchesAndOverflow) {
  const std::vector<float> w = testing::RandomWeights(kVocab, kHidden, 2);
  auto backend = NewCpuBackend(Quantized(WeightFormat::kFp8E4m3, w), {}, 2);
  ASSERT_TRUE(backend.ok());
  std::vector<float> x(kHidden, 1.0f);
  std::vector<RowOutput> out;
  const std::vector<uint32_t> bad_ids = {static_cast<uint32_t>(kVocab)};
  const RowSpec too_many{static_cast<uint32_t>(kVocab + 1), {}, false};
  const RowSpec bad_id{0, bad_ids, false};
  EXPECT_EQ((*backend)->ComputeLogits({x.data(), 1, {&too_many, 1}}, &out).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ((*backend)->ComputeLogits({x.data(), 1, {&bad_id, 1}}, &out).code(),
            absl::StatusCode::kInvalidArgument);
  const RowSpec ok{1, {}, false};
  EXPECT_EQ((*backend)->ComputeLogits({x.data(), 2, {&ok, 1}}, &out).code(),
            absl::StatusCode::kInvalidArgument);
  // Rows in a form only the CUDA backend's buffers take: refused, not read as fp32.
  std::vector<uint16_t> half(kHidden);
  float inv_scale = 1.0f;
  LogitsBatch half_rows{nullptr, 1, {&ok, 1}};
  half_rows.hidden_half = half.data(), half_rows.half_inv_scales = &inv_scale;
  absl::Status s = (*backend)->ComputeLogits(half_rows, &out);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("fp32 rows only"), std::string::npos) << s;
  LogitsBatch bf16_rows{nullptr, 1, {&ok, 1}};
  bf16_rows.hidden_bf16 = half.data();
  EXPECT_EQ((*backend)->ComputeLogits(bf16_rows, &out).code(), absl::StatusCode::kInvalidArgument);
  std::fill(x.begin(), x.end(), 3e38f);  // finite input, overflowing logits
  s = (*backend)->ComputeLogits({x.data(), 1, {&ok, 1}}, &out);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("not finite"), std::string::npos) << s;
}

}  // namespace
}  // namespace lmhead
