// The sampling contract (kernels/sampling.h) on the CPU reference: exact tests for greedy, bias,
// masks and penalties; chi-squared tests over many seeded draws for temperature, top-k, top-p,
// min-p and their combinations; determinism per (seed, step); the CPU backend's sampled rows.
#include "kernels/sampling.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <numeric>
#include <random>
#include <set>
#include <vector>

#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/row_sampling.h"
#include "kernels/head_quantizer.h"
#include "kernels/sampling_math.h"
#include "tests/test_util.h"

namespace lmhead {
namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();

// Draws one token from logits l with `spec` (seed/step set by the caller) through the reference.
uint32_t Draw(const SamplingSpec& spec, const std::vector<float>& l) {
  const int64_t vocab = static_cast<int64_t>(l.size());
  std::vector<float> z(vocab);
  ProcessLogits(spec, l.data(), vocab, z.data());
  const uint32_t argmax = static_cast<uint32_t>(std::max_element(z.begin(), z.end()) - z.begin());
  const std::vector<uint32_t> top = spec.top_k > 0 ? TopIdsOf(z.data(), vocab, spec.top_k) : std::vector<uint32_t>{};
  float score;
  return SelectToken(spec, z.data(), vocab, z[argmax], argmax, top, &score);
}

// The distribution the contract promises, computed independently in double: softmax(l / T)
// restricted to top-k, then min-p, then the top-p nucleus, renormalized.
std::vector<double> Expected(const std::vector<float>& l, double t, int top_k, double top_p, double min_p) {
  const int n = static_cast<int>(l.size());
  std::vector<int> order(n);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return l[a] > l[b]; });
  std::vector<double> w(n, 0.0);
  const double top = l[order[0]] / t;
  const int kept = top_k > 0 ? std::min(top_k, n) : n;
  for (int r = 0; r < kept; ++r) {
    const double p = std::exp(l[order[r]] / t - top);
    if (p >= min_p) w[order[r]] = p;  // p is relative to the top probability
  }
  double total = std::accumulate(w.begin(), w.end(), 0.0);
  if (top_p < 1.0) {
    double cumulative = 0.0;
    bool reached = false;
    for (int r = 0; r < n; ++r) {
      const int i = order[r];
      if (reached) {
        w[i] = 0.0;
        continue;
      }
      cumulative += w[i];
      reached = cumulative >= top_p * total;
    }
    total = std::accumulate(w.begin(), w.end(), 0.0);
  }
  for (double& p : w) p /= total;
  return w;
}

// Upper 0.1% points of the chi-squared distribution, by degrees of freedom.
double ChiSquaredCritical(int df) {
  static const double kTable[] = {0, 10.828, 13.816, 16.266, 18.467, 20.515, 22.458, 24.322, 26.124, 27.877, 29.588, 31.264};
  return kTable[df];
}

// Draws `draws` tokens with seeds 1..draws and checks them against `expected` with a chi-squared
// test at the 0.1% level (deterministic: the seeds are fixed). Tokens outside the support never
// appear.
void ExpectDistribution(SamplingSpec spec, const std::vector<float>& l, const std::vector<double>& expected,
                        int draws = 20000) {
  std::vector<int> counts(l.size(), 0);
  for (int d = 1; d <= draws; ++d) {
    spec.seed = static_cast<uint64_t>(d);
    spec.step = 42;
    ++counts[Draw(spec, l)];
  }
  double chi2 = 0.0;
  int support = 0;
  for (size_t i = 0; i < l.size(); ++i) {
    if (expected[i] == 0.0) {
      EXPECT_EQ(counts[i], 0) << "token " << i << " is outside the kept set";
      continue;
    }
    ++support;
    const double e = expected[i] * draws;
    chi2 += (counts[i] - e) * (counts[i] - e) / e;
  }
  ASSERT_GE(support, 1);
  if (support > 1) {
    EXPECT_LT(chi2, ChiSquaredCritical(support - 1)) << "support " << support;
  } else {
    EXPECT_EQ(*std::max_element(counts.begin(), counts.end()), draws);
  }
}

const std::vector<float> kLogits = {2.0f, 1.5f, 1.1f, 0.7f, 0.3f, 0.0f, -0.6f, -1.2f, -2.0f, -3.0f};

TEST(SamplingDistributionTest, TemperatureOne) {
  SamplingSpec s;
  ExpectDistribution(s, kLogits, Expected(kLogits, 1.0, 0, 1.0, 0.0));
}

TEST(SamplingDistributionTest, LowAndHighTemperature) {
  SamplingSpec s;
  s.temperature = 0.5f;
  ExpectDistribution(s, kLogits, Expected(kLogits, 0.5, 0, 1.0, 0.0));
  s.temperature = 2.0f;
  ExpectDistribution(s, kLogits, Expected(kLogits, 2.0, 0, 1.0, 0.0));
}

TEST(SamplingDistributionTest, TopK) {
  SamplingSpec s;
  s.top_k = 3;
  ExpectDistribution(s, kLogits, Expected(kLogits, 1.0, 3, 1.0, 0.0));
}

TEST(SamplingDistributionTest, TopP) {
  SamplingSpec s;
  s.top_p = 0.7f;  // cumulative masses 0.33, 0.53, 0.67, 0.77: the nucleus is 4 tokens
  ExpectDistribution(s, kLogits, Expected(kLogits, 1.0, 0, 0.7, 0.0));
}

TEST(SamplingDistributionTest, MinP) {
  SamplingSpec s;
  s.min_p = 0.2f;  // keeps exp(l - 2) >= 0.2, i.e. l >= 0.39: 4 tokens
  ExpectDistribution(s, kLogits, Expected(kLogits, 1.0, 0, 1.0, 0.2));
}

TEST(SamplingDistributionTest, Combinations) {
  SamplingSpec s;
  s.temperature = 1.5f;
  s.top_k = 6;
  s.top_p = 0.85f;
  ExpectDistribution(s, kLogits, Expected(kLogits, 1.5, 6, 0.85, 0.0));
  s.min_p = 0.3f;
  ExpectDistribution(s, kLogits, Expected(kLogits, 1.5, 6, 0.85, 0.3));
  s = SamplingSpec{};
  s.temperature = 0.8f;
  s.top_p = 0.9f;
  s.min_p = 0.05f;
  ExpectDistribution(s, kLogits, Expected(kLogits, 0.8, 0, 0.9, 0.05));
}

TEST(SamplingDistributionTest, TinyTopPKeepsOnlyTheTopToken) {
  SamplingSpec s;
  s.top_p = 0.01f;
  ExpectDistribution(s, kLogits, Expected(kLogits, 1.0, 0, 0.01, 0.0), 2000);
}

TEST(SamplingDistributionTest, TopPKeepsEveryTokenTiedAtTheThreshold) {
  const std::vector<float> l = {1.0f, 0.5f, 0.5f, 0.5f, -1.0f};
  SamplingSpec s;
  s.top_p = 0.5f;  // the top token has 0.36 of the mass; the cut falls among three equal logits
  std::vector<int> seen(l.size(), 0);
  for (int d = 1; d <= 3000; ++d) {
    s.seed = d;
    ++seen[Draw(s, l)];
  }
  EXPECT_GT(seen[1], 0);
  EXPECT_GT(seen[2], 0);
  EXPECT_GT(seen[3], 0);
  EXPECT_EQ(seen[4], 0);
}

TEST(SamplingTest, GreedyIsTheProcessedArgmaxWithLowestIdOnTies) {
  SamplingSpec s;
  s.temperature = 0.0f;
  for (uint64_t seed = 0; seed < 20; ++seed) {
    s.seed = seed;
    EXPECT_EQ(Draw(s, kLogits), 0u);
  }
  s.logit_bias = {{4, 1.7f}};  // 0.3 + 1.7 = 2.0 ties token 0: the lower id wins
  EXPECT_EQ(Draw(s, kLogits), 0u);
  s.logit_bias = {{4, 1.75f}};
  EXPECT_EQ(Draw(s, kLogits), 4u);
}

TEST(SamplingTest, BiasIsAddedExactly) {
  SamplingSpec s;
  s.logit_bias = {{2, -0.25f}, {7, 3.0f}};
  EXPECT_EQ(ProcessLogit(s, 2, 1.1f), 1.1f - 0.25f);
  EXPECT_EQ(ProcessLogit(s, 7, -1.2f), -1.2f + 3.0f);
  EXPECT_EQ(ProcessLogit(s, 3, 0.7f), 0.7f);
  s.temperature = 2.0f;
  EXPECT_EQ(ProcessLogit(s, 7, -1.2f), (-1.2f + 3.0f) / 2.0f);
}

TEST(SamplingTest, MasksExcludeTokens) {
  SamplingSpec allowed;
  allowed.allowed_token_ids = {3, 8};
  SamplingSpec banned;
  banned.banned_token_ids = {0, 1};
  std::set<uint32_t> seen_allowed, seen_banned;
  for (uint64_t seed = 1; seed <= 500; ++seed) {
    allowed.seed = banned.seed = seed;
    seen_allowed.insert(Draw(allowed, kLogits));
    seen_banned.insert(Draw(banned, kLogits));
  }
  EXPECT_EQ(seen_allowed, (std::set<uint32_t>{3, 8}));
  EXPECT_EQ(seen_banned.count(0), 0u);
  EXPECT_EQ(seen_banned.count(1), 0u);
  EXPECT_GT(seen_banned.size(), 3u);
  EXPECT_EQ(ProcessLogit(allowed, 2, 1.1f), -kInf);
  EXPECT_EQ(ProcessLogit(banned, 1, 1.5f), -kInf);
  // A banned token stays banned whatever its bias.
  banned.logit_bias = {{0, 100.0f}};
  EXPECT_EQ(ProcessLogit(banned, 0, 2.0f), -kInf);
}

TEST(SamplingTest, PenaltiesFollowTheirDefinitions) {
  SamplingSpec s;
  s.previous_counts = {{1, 1}, {4, 3}};
  s.repetition_penalty = 2.0f;
  EXPECT_EQ(ProcessLogit(s, 1, 3.0f), 1.5f);    // positive: divided
  EXPECT_EQ(ProcessLogit(s, 4, -3.0f), -6.0f);  // negative: multiplied
  EXPECT_EQ(ProcessLogit(s, 2, 3.0f), 3.0f);    // not in the context
  s.repetition_penalty = 1.0f;
  s.presence_penalty = 0.5f;
  EXPECT_EQ(ProcessLogit(s, 1, 3.0f), 2.5f);
  EXPECT_EQ(ProcessLogit(s, 4, 3.0f), 2.5f);  // once, whatever the count
  s.presence_penalty = 0.0f;
  s.frequency_penalty = 0.25f;
  EXPECT_EQ(ProcessLogit(s, 1, 3.0f), 2.75f);
  EXPECT_EQ(ProcessLogit(s, 4, 3.0f), 2.25f);  // per occurrence
  s.frequency_penalty = -0.5f;                 // negative values encourage repeats
  EXPECT_EQ(ProcessLogit(s, 4, 3.0f), 4.5f);
  // All together, in the documented order: repetition, presence, frequency, then temperature.
  s.repetition_penalty = 1.25f;
  s.presence_penalty = 0.5f;
  s.frequency_penalty = 0.25f;
  s.temperature = 0.5f;
  EXPECT_EQ(ProcessLogit(s, 4, 5.0f), ((5.0f / 1.25f - 0.5f) - 0.75f) / 0.5f);
}

TEST(SamplingTest, SameSeedAndStepGiveTheSameTokenAndStepsDiffer) {
  SamplingSpec s;
  s.temperature = 1.0f;
  s.seed = 1234;
  std::set<uint32_t> over_steps;
  for (uint64_t step = 0; step < 200; ++step) {
    s.step = step;
    const uint32_t first = Draw(s, kLogits);
    EXPECT_EQ(Draw(s, kLogits), first);
    over_steps.insert(first);
  }
  EXPECT_GT(over_steps.size(), 4u);
}

TEST(SamplingTest, NoiseDependsOnlyOnSeedStepAndToken) {
  EXPECT_EQ(GumbelNoise(7, 3, 11), GumbelNoise(7, 3, 11));
  EXPECT_NE(GumbelNoise(7, 3, 11), GumbelNoise(7, 4, 11));
  EXPECT_NE(GumbelNoise(7, 3, 11), GumbelNoise(8, 3, 11));
  EXPECT_NE(GumbelNoise(7, 3, 11), GumbelNoise(7, 3, 12));
  // Uniforms stay strictly inside (0, 1) and have the right mean.
  double sum = 0;
  for (uint32_t t = 0; t < 100000; ++t) {
    const float u = SamplingUniform(99, 0, t);
    ASSERT_GT(u, 0.0f);
    ASSERT_LT(u, 1.0f);
    sum += u;
  }
  EXPECT_NEAR(sum / 100000, 0.5, 0.005);
}

// The one 24-bit value whose centred uniform rounds to 1 in float (about 1 token in 2^24 per draw):
// its noise must stay finite and under the bound the draws prune by, and such a token must not win
// a draw its logit loses by more than the noise's range.
TEST(SamplingTest, TheTopUniformStaysBelowOne) {
  uint32_t token = 0;
  while ((Mix64(Mix64(Mix64(99 ^ 0x6a09e667f3bcc909ull) ^ 0) ^ token) >> 40) != 0xffffffu) ++token;
  EXPECT_LT(SamplingUniform(99, 0, token), 1.0f);
  const float noise = GumbelNoise(99, 0, token);
  EXPECT_TRUE(std::isfinite(noise));
  EXPECT_NEAR(noise, 16.64f, 0.01f);
  // Two tokens (a vocab shard's offset puts id 1 at that token), id 1 trailing id 0's score by
  // 0.43 after its noise, and near enough for the draw not to prune it (within kMaxGumbel).
  SamplingSpec s;
  s.temperature = 1.0f, s.seed = 99, s.step = 0, s.token_offset = token - 1;
  const float gap = 17.07f - GumbelNoise(99, 0, token - 1);
  EXPECT_EQ(Draw(s, {0.0f, -gap}), 0u);
}

TEST(SamplingTest, TopPMassTargetRoundsUp) {
  EXPECT_EQ(TopPTarget(0.5f, 10), 5u);
  EXPECT_EQ(TopPTarget(0.3f, 10), 4u);  // 0.3f is slightly above 0.3: 3.0000001 -> 4
  EXPECT_EQ(TopPTarget(1e-9f, 10), 1u);
  EXPECT_EQ(TopPMass(1.0f, 1.0f), uint64_t{1} << 40);
}

// The CPU backend: sampled rows, raw and processed logprobs, batch independence.
class CpuSamplingTest : public ::testing::Test {
 protected:
  static constexpr int64_t kVocab = 300, kHidden = 64;
  void SetUp() override {
    const std::vector<float> w = testing::RandomWeights(kVocab, kHidden, 5);
    auto weights = QuantizeHead(testing::F32HeadSource(w, kVocab, kHidden), QuantizeOptions{});
    ASSERT_TRUE(weights.ok());
    auto b = NewCpuBackend(*std::move(weights), LogitTransform{}, 2);
    ASSERT_TRUE(b.ok());
    backend_ = *std::move(b);
    std::mt19937 rng(3);
    std::normal_distribution<float> normal(0.0f, 30.0f);
    hidden_.resize(4 * kHidden);
    for (float& v : hidden_) v = normal(rng);
  }
  std::vector<RowOutput> Run(const std::vector<RowSpec>& specs, const float* hidden) {
    std::vector<RowOutput> out;
    EXPECT_TRUE(backend_->ComputeLogits({hidden, static_cast<int64_t>(specs.size()), specs}, &out).ok());
    return out;
  }
  std::unique_ptr<Backend> backend_;
  std::vector<float> hidden_;
};

TEST_F(CpuSamplingTest, RawAndProcessedLogprobs) {
  SamplingSpec s;
  s.temperature = 0.7f;
  s.seed = 9;
  s.logit_bias = {{5, 2.0f}};
  std::vector<uint32_t> ids = {5, 6};
  RowSpec raw{4, ids, true, &s, false};
  RowSpec processed{4, ids, true, &s, true};
  const std::vector<RowOutput> out = Run({raw, processed}, hidden_.data());
  // Each mode on hidden row 0 alone.
  const std::vector<RowOutput> a = Run({raw}, hidden_.data());
  const std::vector<RowOutput> b = Run({processed}, hidden_.data());
  ASSERT_TRUE(a[0].sampled && b[0].sampled);
  EXPECT_EQ(a[0].sampled_id, b[0].sampled_id);  // the mode changes what is reported, not the draw
  const std::vector<float>& l = a[0].logits;
  EXPECT_NEAR(a[0].sampled_logprob, l[a[0].sampled_id] - a[0].logsumexp, 1e-5);
  // Processed: log_softmax((l + bias) / T) over the whole vocabulary.
  std::vector<double> z(kVocab);
  double m = -1e30;
  for (int64_t i = 0; i < kVocab; ++i) {
    z[i] = (l[i] + (i == 5 ? 2.0 : 0.0)) / 0.7;
    m = std::max(m, z[i]);
  }
  double sum = 0;
  for (double v : z) sum += std::exp(v - m);
  const double lse = m + std::log(sum);
  EXPECT_NEAR(b[0].sampled_logprob, z[b[0].sampled_id] - lse, 1e-4);
  EXPECT_NEAR(b[0].logprob_lse, lse, 1e-4);
  EXPECT_NEAR(b[0].token_logits[0], z[5], 1e-4);
  ASSERT_EQ(b[0].top_ids.size(), 4u);
  for (size_t k = 0; k < 4; ++k) EXPECT_NEAR(b[0].top_logits[k], z[b[0].top_ids[k]], 1e-4);
  // Raw mode leaves top-k and the normalizer raw.
  EXPECT_EQ(a[0].logprob_lse, a[0].logsumexp);
  EXPECT_EQ(a[0].top_logits[0], a[0].max_logit);
  // Raw results do not depend on sampling.
  EXPECT_EQ(out[0].argmax_id, a[0].argmax_id);
}

TEST_F(CpuSamplingTest, SampleDoesNotDependOnTheBatch) {
  SamplingSpec s;
  s.temperature = 1.3f;
  s.top_p = 0.95f;
  s.seed = 77;
  s.step = 5;
  std::vector<RowSpec> alone = {RowSpec{0, {}, false, &s, false}};
  const uint32_t expected = Run(alone, hidden_.data() + 2 * kHidden)[0].sampled_id;
  std::vector<RowSpec> batch(4, RowSpec{0, {}, false, &s, false});
  batch[0].sampling = nullptr;
  const std::vector<RowOutput> out = Run(batch, hidden_.data());
  EXPECT_FALSE(out[0].sampled);
  EXPECT_TRUE(out[0].logits.empty());
  EXPECT_EQ(out[2].sampled_id, expected);
  EXPECT_TRUE(out[2].logits.empty());  // materialized for the selection only
}

TEST_F(CpuSamplingTest, GreedyRowMatchesArgmaxAndMasksHold) {
  SamplingSpec greedy;
  greedy.temperature = 0.0f;
  SamplingSpec masked;
  masked.allowed_token_ids = {10, 20, 30};
  masked.seed = 1;
  std::vector<RowSpec> specs = {RowSpec{0, {}, false, &greedy, false}, RowSpec{0, {}, false, &masked, false}};
  for (int rep = 0; rep < 20; ++rep) {
    masked.seed = rep;
    const std::vector<RowOutput> out = Run(specs, hidden_.data());
    EXPECT_EQ(out[0].sampled_id, out[0].argmax_id);
    EXPECT_TRUE(out[1].sampled_id == 10 || out[1].sampled_id == 20 || out[1].sampled_id == 30);
  }
}

}  // namespace
}  // namespace lmhead
