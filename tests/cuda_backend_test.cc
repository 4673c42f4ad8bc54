// Backend conformance on the GPU: the CUDA backend (loaded through the factory, as the server
// loads it) against the CPU backend on the same FP8 weights, with fresh random inputs each run.
// Skips where the module or a CUDA device is missing (CI).
#include <cmath>
#include <random>
#include <set>

#include "gtest/gtest.h"
#include "kernels/backend_factory.h"
#include "kernels/cpu/cpu_backend.h"
#include "kernels/fp8.h"
#include "tests/test_util.h"

namespace lmhead {
namespace {

constexpr double kLogprobTolerance = 1e-3;

HeadWeights Fp8Head(int64_t vocab, int64_t hidden, uint64_t seed) {
  const std::vector<float> w = testing::RandomWeights(vocab, hidden, seed);
  HeadWeights h;
  h.vocab = vocab;
  h.hidden = hidden;
  h.data.resize(vocab * hidden);
  h.row_scales.resize(vocab);
  for (int64_t r = 0; r < vocab; ++r) {
    float amax = 0;
    for (int64_t c = 0; c < hidden; ++c) amax = std::max(amax, std::fabs(w[r * hidden + c]));
    h.row_scales[r] = Fp8ScaleForAmax(amax);
    QuantizeFp8(w.data() + r * hidden, hidden, h.row_scales[r], h.data.data() + r * hidden);
  }
  return h;
}

std::unique_ptr<Backend> CudaOrSkip(HeadWeights w, LogitTransform t, ActivationPrecision precision,
                                    std::string* skip) {
  BackendOptions o;
  o.kind = BackendKind::kCuda;
  o.transform = t;
  o.activation_precision = precision;
  o.cuda_module_path = LMHEAD_CUDA_MODULE_PATH;
  auto b = NewBackend(o, std::move(w));
  if (!b.ok()) {
    *skip = std::string(b.status().message());
    return nullptr;
  }
  return std::move(*b);
}

struct Shape {
  int64_t vocab, hidden;
  LogitTransform transform;
  ActivationPrecision precision;
};

class CudaConformanceTest : public ::testing::TestWithParam<Shape> {};

TEST_P(CudaConformanceTest, MatchesCpuBackendOnTheSameFp8Weights) {
  const Shape s = GetParam();
  std::random_device seed_source;
  const uint64_t seed = (uint64_t{seed_source()} << 32) | seed_source();
  SCOPED_TRACE(::testing::Message() << "seed " << seed);
  HeadWeights head = Fp8Head(s.vocab, s.hidden, seed);
  auto cpu = NewCpuBackend(head, s.transform, 4);
  ASSERT_TRUE(cpu.ok());
  std::string skip;
  auto gpu = CudaOrSkip(head, s.transform, s.precision, &skip);
  if (gpu == nullptr) GTEST_SKIP() << "no CUDA backend here: " << skip;
  EXPECT_STREQ(gpu->Name(), "cuda");
  // fp8 activations are only per-token FP8: a looser, documented tolerance.
  const double tol = s.precision == ActivationPrecision::kBf16 ? kLogprobTolerance : 0.05;

  std::mt19937_64 rng(seed);
  for (int64_t rows : {1, 7, 64, 300}) {
    for (int run = 0; run < 2; ++run) {  // a second run must not see the first one's values
      std::normal_distribution<float> normal(0.0f, run == 0 ? 1.0f : 3.0f);
      std::vector<float> x(rows * s.hidden);
      for (float& v : x) v = normal(rng);
      std::vector<uint32_t> ids = {0, static_cast<uint32_t>(s.vocab - 1), static_cast<uint32_t>(rng() % s.vocab)};
      std::vector<RowSpec> specs(rows);
      for (int64_t r = 0; r < rows; ++r) {
        const uint32_t k = r % 4 == 0 ? 0 : r % 4 == 1 ? 1 : r % 4 == 2 ? 20 : std::min<int64_t>(1024, s.vocab);
        specs[r] = RowSpec{k, ids, r % 5 == 0};
      }
      std::vector<RowOutput> want, got(rows);
      for (auto& o : got) o.argmax_id = 0xdeadbeef, o.logsumexp = NAN;  // poisoned
      ASSERT_TRUE((*cpu)->ComputeLogits({x.data(), rows, specs}, &want).ok());
      absl::Status st = gpu->ComputeLogits({x.data(), rows, specs}, &got);
      ASSERT_TRUE(st.ok()) << st;
      ASSERT_EQ(got.size(), want.size());
      for (int64_t r = 0; r < rows; ++r) {
        const RowOutput& w = want[r];
        const RowOutput& g = got[r];
        SCOPED_TRACE(::testing::Message() << "rows " << rows << " row " << r << " run " << run);
        ASSERT_NEAR(g.logsumexp, w.logsumexp, tol);
        EXPECT_NEAR(g.max_logit, w.max_logit, tol);
        ASSERT_EQ(g.top_ids.size(), specs[r].top_k);
        std::set<uint32_t> distinct(g.top_ids.begin(), g.top_ids.end());
        EXPECT_EQ(distinct.size(), g.top_ids.size()) << "top ids repeat";
        for (size_t k = 0; k < g.top_ids.size(); ++k) {
          ASSERT_LT(g.top_ids[k], s.vocab);
          if (k > 0) {
            EXPECT_GE(g.top_logits[k - 1], g.top_logits[k]) << "not sorted at " << k;
          }
          const bool separated = (k == 0 || w.top_logits[k - 1] - w.top_logits[k] > 2 * tol) &&
                                 (k + 1 == w.top_logits.size() || w.top_logits[k] - w.top_logits[k + 1] > 2 * tol);
          if (separated) {
            EXPECT_EQ(g.top_ids[k], w.top_ids[k]) << "rank " << k;
          }
          EXPECT_NEAR(g.top_logits[k] - g.logsumexp, w.top_logits[k] - w.logsumexp, tol) << "rank " << k;
        }
        const bool argmax_separated = w.top_logits.size() < 2 || w.top_logits[0] - w.top_logits[1] > 2 * tol;
        if (argmax_separated && !w.top_ids.empty()) {
          EXPECT_EQ(g.argmax_id, w.argmax_id);
        }
        ASSERT_EQ(g.token_logits.size(), ids.size());
        for (size_t i = 0; i < ids.size(); ++i) {
          EXPECT_NEAR(g.token_logits[i] - g.logsumexp, w.token_logits[i] - w.logsumexp, tol);
        }
        ASSERT_EQ(g.logits.size(), w.logits.size());
        for (size_t v = 0; v < g.logits.size(); ++v) ASSERT_NEAR(g.logits[v], w.logits[v], tol) << v;
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, CudaConformanceTest,
    ::testing::Values(Shape{4096, 256, {}, ActivationPrecision::kBf16},
                      Shape{2003, 136, {}, ActivationPrecision::kBf16},  // unaligned: padded inside
                      Shape{32000, 1024, {0.5f, 30.0f}, ActivationPrecision::kBf16},
                      Shape{4096, 256, {}, ActivationPrecision::kFp8}));

TEST(CudaBackendTest, EqualLogitsRankLowerIdFirstAndOverflowIsReported) {
  HeadWeights h;
  h.vocab = 3000;
  h.hidden = 32;
  h.data.assign(h.vocab * h.hidden, Fp8E4m3Encode(1.0f));  // every row identical
  h.row_scales.assign(h.vocab, 1.0f);
  std::string skip;
  auto gpu = CudaOrSkip(h, {}, ActivationPrecision::kBf16, &skip);
  if (gpu == nullptr) GTEST_SKIP() << "no CUDA backend here: " << skip;
  std::vector<float> x(32, 0.25f);
  const RowSpec spec{1024, {}, false};
  std::vector<RowOutput> out;
  ASSERT_TRUE(gpu->ComputeLogits({x.data(), 1, {&spec, 1}}, &out).ok());
  EXPECT_EQ(out[0].argmax_id, 0u);
  for (uint32_t k = 0; k < 1024; ++k) ASSERT_EQ(out[0].top_ids[k], k);
  EXPECT_NEAR(out[0].logsumexp, 8.0 + std::log(3000.0), 1e-4);
  std::fill(x.begin(), x.end(), 3e38f);
  EXPECT_EQ(gpu->ComputeLogits({x.data(), 1, {&spec, 1}}, &out).code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace lmhead
