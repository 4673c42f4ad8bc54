// Backend conformance on the GPU: the CUDA backend (loaded through the factory, as the server
// loads it) against the CPU backend on the same FP8 weights, with fresh random inputs each run.
// Skips where the module or a CUDA device is missing (CI).
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <ostream>
#include <random>
#include <set>
#include <string>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "kernels/backend_factory.h"
#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/row_sampling.h"
#include "kernels/cuda/cuda_module_api.h"
#include "kernels/fp8.h"
#include "kernels/half.h"
#include "kernels/half_rows.h"
#include "kernels/head_quantizer.h"
#include "tests/test_util.h"

namespace lmhead {
namespace {

// Batches of up to kCudaGemvMaxRows rows run the FP8 GEMV (fp16 hi + lo activations up to
// kCudaGemvExactRows rows, one fp16 each above), and larger ones with bf16-level activations the
// FP8 GEMM (one fp16 each; Hopper, which the GPU machines these tests run on are): they must match
// an fp32 sum over the same FP8 weights and the activations the kernels multiply to the 1e-3.
constexpr double kGemvTolerance = 1e-3;
// Otherwise larger batches run cuBLASLt's FP8 GEMM over FP8 high + residual activations; there an
// absolute tolerance plus a part relative to the magnitudes involved: on an H100 cuBLASLt differed
// from an fp32 CPU sum over the very same FP8 operands by up to ~4e-3 at |logit| ~ 5 (1e-3 to
// 1.7e-3 at |logit| ~ 0.2 to 1), for hidden sizes 256 and 1024 but not 136 (see
// gpu_bench_results.md).
constexpr double kAbsTolerance = 2e-3;
constexpr double kRelTolerance = 1e-3;
// On wider rows the absolute part grows with sqrt(hidden / 1024): the FP8 tensor cores sum 128
// columns at a time keeping ~14 bits, and those roundings add up over the row's chunks (2048 x
// 16400 with fp8 activations, 65 rows on the FP8 x FP8 GEMM: one logit 2.3e-3 off on an H100 with
// LMHEAD_TEST_SEED=208688255106279657, the same before and after session 17's kernel changes).
double AbsTolerance(int64_t hidden) { return kAbsTolerance * std::max(1.0, std::sqrt(hidden / 1024.0)); }

// A fresh seed for each run, or $LMHEAD_TEST_SEED: the tests trace their seed, so a failure can be
// replayed with it.
uint64_t FreshSeed() {
  if (const char* fixed = std::getenv("LMHEAD_TEST_SEED"); fixed != nullptr && *fixed != '\0') {
    return std::strtoull(fixed, nullptr, 10);
  }
  std::random_device source;
  return (uint64_t{source()} << 32) | source();
}

// The head's generator is seeded apart from the tests' rows, which draw from `seed` itself: on one
// stream a row can repeat a head row's draws (at 1000x16400 a row met one and gave a logit of 83).
HeadWeights Fp8Head(int64_t vocab, int64_t hidden, uint64_t seed) {
  const std::vector<float> w = testing::RandomWeights(vocab, hidden, seed ^ 0x9e3779b97f4a7c15ull);
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

// Options that load the module from $LMHEAD_CUDA_MODULE (a relocated build) or the build tree.
BackendOptions CudaOptions() {
  BackendOptions o;
  o.kind = BackendKind::kCuda;
  const char* module = std::getenv("LMHEAD_CUDA_MODULE");
  o.cuda_module_path = module != nullptr ? module : LMHEAD_CUDA_MODULE_PATH;
  return o;
}

// With LMHEAD_REQUIRE_CUDA=1 (set on GPU machines) a missing backend fails instead of skipping.
void ExpectSkippable(const absl::Status& status) {
  const char* require = std::getenv("LMHEAD_REQUIRE_CUDA");
  EXPECT_FALSE(require != nullptr && std::string(require) == "1") << status;
}

// output_workspace_bytes: 0 = the default.
std::unique_ptr<Backend> CudaOrSkip(HeadWeights w, LogitTransform t, ActivationPrecision precision,
                                    std::string* skip, int64_t output_workspace_bytes = 0, bool fp8_gemm = true,
                                    int gemv_blocks_per_sm = 0) {
  BackendOptions o = CudaOptions();
  o.transform = t;
  o.activation_precision = precision;
  o.gpu_fp8_gemm = fp8_gemm;
  o.gpu_gemv_blocks_per_sm = gemv_blocks_per_sm;
  if (output_workspace_bytes > 0) o.gpu_output_workspace_bytes = output_workspace_bytes;
  auto b = NewBackend(o, std::move(w));
  if (!b.ok()) {
    ExpectSkippable(b.status());
    *skip = std::string(b.status().message());
    return nullptr;
  }
  return std::move(*b);
}

// The activations the GPU actually multiplies, rebuilt on the CPU with the same rounding. The
// CPU backend fed these must agree to ~fp32 rounding.
// - GEMV, up to kCudaGemvExactRows rows: x itself (hi + lo keep it to ~2^-22).
// - GEMV, more rows, and the FP8 GEMM: fp16(x * s) / s with s = 2^(14 - e), max|x| = m * 2^e,
//   m in [0.5, 1).
// - cuBLASLt, and the FP8 x FP8 GEMM (fp8 activations above the GEMV): per-row scale amax/448,
//   E4M3 round-to-nearest-even of x/scale, and (bf16 precision, cuBLASLt) an E4M3 residual row
//   with its own scale.
// The path is that of a batch (or slice) of `batch_rows` rows (default: `rows`).
bool RunsOnFp8Kernels(int64_t batch_rows, ActivationPrecision precision, bool fp8_gemm) {
  return batch_rows <= kCudaGemvMaxRows || (fp8_gemm && precision == ActivationPrecision::kBf16);
}

std::vector<float> GpuEffectiveActivations(const std::vector<float>& x, int64_t rows, int64_t hidden,
                                           ActivationPrecision precision, int64_t batch_rows = -1,
                                           bool fp8_gemm = true) {
  if (batch_rows < 0) batch_rows = rows;
  if (batch_rows <= kCudaGemvExactRows) return x;
  std::vector<float> out(x.size());
  for (int64_t r = 0; r < rows; ++r) {
    const float* row = x.data() + r * hidden;
    float amax = 0;
    for (int64_t i = 0; i < hidden; ++i) amax = std::max(amax, std::fabs(row[i]));
    if (RunsOnFp8Kernels(batch_rows, precision, fp8_gemm)) {
      int e = 14;
      if (amax > 0) std::frexp(amax, &e);
      const float s = std::ldexp(1.0f, 14 - e);
      for (int64_t i = 0; i < hidden; ++i) out[r * hidden + i] = HalfToFloat(FloatToHalf(row[i] * s)) / s;
      continue;
    }
    const float s_hi = amax > 0 ? amax / 448.0f : 1.0f;
    std::vector<float> high(hidden), residual(hidden);
    float ramax = 0;
    for (int64_t i = 0; i < hidden; ++i) {
      high[i] = Fp8E4m3Decode(Fp8E4m3Encode(row[i] / s_hi)) * s_hi;
      residual[i] = row[i] - high[i];
      ramax = std::max(ramax, std::fabs(residual[i]));
    }
    const float s_lo = ramax > 0 ? ramax / 448.0f : 1.0f;
    for (int64_t i = 0; i < hidden; ++i) {
      const float low = precision == ActivationPrecision::kBf16
                            ? Fp8E4m3Decode(Fp8E4m3Encode(residual[i] / s_lo)) * (ramax > 0 ? s_lo : 0.0f)
                            : 0.0f;
      out[r * hidden + i] = high[i] + low;
    }
  }
  return out;
}

// One row of the GPU's output (g) against the CPU reference (w, which ranks two more tokens than
// asked, so that the gaps after the last rank are known): statistics, logprobs and full logits
// within tol(a, b) (a tolerance for values a and b); top ids and the argmax wherever the reference's
// neighbouring logits are more than twice that apart.
template <typename Tolerance>
void ExpectMatchesReference(const RowOutput& w, const RowOutput& g, const RowSpec& spec, int64_t vocab,
                            Tolerance tol_of) {
  ASSERT_NEAR(g.logsumexp, w.logsumexp, tol_of(w.logsumexp));
  EXPECT_NEAR(g.max_logit, w.max_logit, tol_of(w.max_logit));
  const double tol = tol_of(w.max_logit, w.logsumexp);  // for logprobs and id separation
  ASSERT_EQ(g.top_ids.size(), spec.top_k);
  std::set<uint32_t> distinct(g.top_ids.begin(), g.top_ids.end());
  EXPECT_EQ(distinct.size(), g.top_ids.size()) << "top ids repeat";
  for (size_t k = 0; k < g.top_ids.size(); ++k) {
    ASSERT_LT(g.top_ids[k], vocab);
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
  const bool argmax_separated = w.top_logits.size() >= 2 && w.top_logits[0] - w.top_logits[1] > 2 * tol;
  if (argmax_separated) {
    EXPECT_EQ(g.argmax_id, w.argmax_id);
  }
  ASSERT_EQ(g.token_logits.size(), spec.token_ids.size());
  for (size_t i = 0; i < spec.token_ids.size(); ++i) {
    EXPECT_NEAR(g.token_logits[i] - g.logsumexp, w.token_logits[i] - w.logsumexp, tol);
  }
  ASSERT_EQ(g.logits.size(), w.logits.size());
  for (size_t v = 0; v < g.logits.size(); ++v) ASSERT_NEAR(g.logits[v], w.logits[v], tol_of(w.logits[v])) << v;
}

struct Shape {
  int64_t vocab, hidden;
  LogitTransform transform;
  ActivationPrecision precision;
  bool large = false;  // a real-size vocab: fewer batches
  // Hidden states are drawn with this many times the tests' standard deviations, so that logits
  // (which grow with sqrt(hidden)) spread on wide rows as on the 1024-column head.
  float row_scale = 1.0f;
};

std::string ShapeName(const Shape& s) {
  return std::to_string(s.vocab) + "x" + std::to_string(s.hidden) +
         (s.precision == ActivationPrecision::kFp8 ? "_fp8" : "_bf16") + (s.transform.softcap > 0 ? "_softcap" : "");
}
void PrintTo(const Shape& s, std::ostream* os) { *os << ShapeName(s); }

// Each test: a fresh random seed, an FP8 head made from it, the CPU reference and the CUDA backend
// on that head (the test skips without a CUDA backend).
class CudaConformanceTest : public ::testing::TestWithParam<Shape> {
 protected:
  void SetUp() override {
    seed_ = FreshSeed();
    const Shape& s = GetParam();
    HeadWeights head = Fp8Head(s.vocab, s.hidden, seed_);
    auto cpu = NewCpuBackend(head, s.transform, 4);
    ASSERT_TRUE(cpu.ok());
    cpu_ = std::move(*cpu);
    std::string skip;
    gpu_ = CudaOrSkip(head, s.transform, s.precision, &skip);
    if (gpu_ == nullptr) GTEST_SKIP() << "no CUDA backend here: " << skip;
  }

  uint64_t seed_ = 0;
  std::unique_ptr<Backend> cpu_, gpu_;
};

TEST_P(CudaConformanceTest, MatchesCpuBackendOnTheSameFp8Weights) {
  const Shape s = GetParam();
  const uint64_t seed = seed_;
  SCOPED_TRACE(::testing::Message() << "seed " << seed);
  Backend* cpu = cpu_.get();
  Backend* gpu = gpu_.get();
  EXPECT_STREQ(gpu->Name(), "cuda");
  // Accuracy against exact (fp32) activations, as rms(logit error) / rms(logit): bf16-level for
  // the high + residual split, per-token FP8 otherwise.
  const double max_rel_rms = s.precision == ActivationPrecision::kBf16 ? 2e-3 : 5e-2;
  // Squared logit errors and squared logits by path: GEMV hi + lo, single fp16 (GEMV or FP8 GEMM),
  // E4M3 rows (the FP8 x FP8 GEMM with fp8 activations on Hopper, else cuBLASLt).
  enum Path { kExact, kHalf, kLt };
  double err2[3] = {}, ref2[3] = {};

  std::mt19937_64 rng(seed);
  const std::vector<int64_t> batches =
      s.large ? std::vector<int64_t>{1, 7, 16, 32, 48, 200}
              : std::vector<int64_t>{1, 7, 9, 16, 20, 32, 33, 48, 64, 65, 300};
  for (int64_t rows : batches) {
    const bool gemv = RunsOnFp8Kernels(rows, s.precision, /*fp8_gemm=*/true);
    const Path path = rows <= kCudaGemvExactRows ? kExact : gemv ? kHalf : kLt;
    auto Tol = [gemv, abs_tol = AbsTolerance(s.hidden)](double a, double b = 0) {
      return gemv ? kGemvTolerance : abs_tol + kRelTolerance * (std::fabs(a) + std::fabs(b));
    };
    for (int run = 0; run < 2; ++run) {  // a second run must not see the first one's values
      std::normal_distribution<float> normal(0.0f, (run == 0 ? 1.0f : 3.0f) * s.row_scale);
      std::vector<float> x(rows * s.hidden);
      for (float& v : x) v = normal(rng);
      std::vector<uint32_t> ids = {0, static_cast<uint32_t>(s.vocab - 1), static_cast<uint32_t>(rng() % s.vocab)};
      std::vector<RowSpec> specs(rows);
      for (int64_t r = 0; r < rows; ++r) {
        const uint32_t k = r % 4 == 0 ? 0 : r % 4 == 1 ? 1 : r % 4 == 2 ? 20 : std::min<int64_t>(1024, s.vocab);
        specs[r] = RowSpec{k, ids, r % 5 == 0};
      }
      std::vector<RowOutput> want, exact, got(rows);
      for (auto& o : got) o.argmax_id = 0xdeadbeef, o.logsumexp = NAN;  // poisoned
      const std::vector<float> x_gpu = GpuEffectiveActivations(x, rows, s.hidden, s.precision);
      // The reference ranks two tokens more than asked, so that the gaps after the last rank (and
      // after the argmax) are known.
      std::vector<RowSpec> ref_specs = specs;
      for (RowSpec& spec : ref_specs) spec.top_k = std::min<uint32_t>(spec.top_k + 2, s.vocab);
      ASSERT_TRUE(cpu->ComputeLogits({x_gpu.data(), rows, ref_specs}, &want).ok());
      ASSERT_TRUE(cpu->ComputeLogits({x.data(), rows, specs}, &exact).ok());
      // The second run assembles its rows in the backend's own (pinned) input buffer, as the
      // batcher does.
      const float* input = x.data();
      if (run == 1) {
        float* buffer = gpu->InputBuffer(rows);
        ASSERT_NE(buffer, nullptr) << "the CUDA backend offers an input buffer for one slice";
        std::copy(x.begin(), x.end(), buffer);
        input = buffer;
      }
      absl::Status st = gpu->ComputeLogits({input, rows, specs}, &got);
      ASSERT_TRUE(st.ok()) << st;
      ASSERT_EQ(got.size(), want.size());
      for (int64_t r = 0; r < rows; ++r) {
        const RowOutput& w = want[r];
        const RowOutput& g = got[r];
        SCOPED_TRACE(::testing::Message() << "rows " << rows << " row " << r << " run " << run);
        ASSERT_NO_FATAL_FAILURE(ExpectMatchesReference(w, g, specs[r], s.vocab, Tol));
        for (size_t v = 0; v < g.logits.size(); ++v) {
          const double e = g.logits[v] - double(exact[r].logits[v]);
          err2[path] += e * e;
          ref2[path] += exact[r].logits[v] * double(exact[r].logits[v]);
        }
      }
    }
  }
  // Accuracy against exact fp32 activations: ~fp32 for hi + lo; single fp16 rounds each
  // activation by <= 2^-11 relative (rms ~2^-13 over random signs); bf16-level or per-token FP8
  // for E4M3 rows.
  const double rel_rms[3] = {std::sqrt(err2[kExact] / ref2[kExact]), std::sqrt(err2[kHalf] / ref2[kHalf]),
                             ref2[kLt] > 0 ? std::sqrt(err2[kLt] / ref2[kLt]) : 0.0};
  std::printf("[ accuracy ] %lldx%lld: rms logit error / rms logit vs exact fp32: GEMV hi+lo (B <= %lld) %.3g, "
              "fp16 (GEMV up to B = %lld%s) %.3g",
              static_cast<long long>(s.vocab), static_cast<long long>(s.hidden),
              static_cast<long long>(kCudaGemvExactRows), rel_rms[kExact], static_cast<long long>(kCudaGemvMaxRows),
              s.precision == ActivationPrecision::kBf16 ? ", FP8 GEMM above" : "", rel_rms[kHalf]);
  // (fp32 sums of `hidden` products in another order than the CPU's: ~sqrt(hidden) roundings)
  EXPECT_LE(rel_rms[kExact], std::max(1e-5, 3e-7 * std::sqrt(double(s.hidden))));
  EXPECT_LE(rel_rms[kHalf], 3e-4);
  if (ref2[kLt] > 0) {
    std::printf(", %s %.3g",
                s.precision == ActivationPrecision::kBf16 ? "cuBLASLt with bf16 (high+residual) activations"
                                                          : "E4M3 activations (per-token scale)",
                rel_rms[kLt]);
    EXPECT_LE(rel_rms[kLt], max_rel_rms);
  }
  std::printf("\n");
}

// The batches of the tests below: each kernel path (mma.sync and wgmma GEMV, FP8 GEMM, several
// slices) on the small heads, fewer on the real-size vocab.
std::vector<int64_t> PathBatches(const Shape& s) {
  return s.large ? std::vector<int64_t>{5, 48, 200} : std::vector<int64_t>{1, 5, 9, 16, 33, 64, 65, 300};
}

// One call on both backends over fresh normal rows (standard deviation `scale`): every row's
// results must match the CPU reference, which ranks two more tokens than asked (at least two).
void ExpectCallMatches(Backend* cpu, Backend* gpu, const Shape& s, int64_t rows, float scale,
                       const std::vector<RowSpec>& specs, std::mt19937_64& rng) {
  const bool gemv = RunsOnFp8Kernels(rows, s.precision, /*fp8_gemm=*/true);
  auto tol = [gemv, abs_tol = AbsTolerance(s.hidden)](double a, double b = 0) {
    return gemv ? kGemvTolerance : abs_tol + kRelTolerance * (std::fabs(a) + std::fabs(b));
  };
  std::normal_distribution<float> normal(0.0f, scale * s.row_scale);
  std::vector<float> x(rows * s.hidden);
  for (float& v : x) v = normal(rng);
  std::vector<RowSpec> ref_specs = specs;
  for (RowSpec& spec : ref_specs) spec.top_k = std::min<uint32_t>(std::max<uint32_t>(spec.top_k + 2, 2), s.vocab);
  std::vector<RowOutput> want, got(rows);
  for (auto& o : got) o.argmax_id = 0xdeadbeef, o.logsumexp = NAN;  // poisoned
  const std::vector<float> x_gpu = GpuEffectiveActivations(x, rows, s.hidden, s.precision);
  ASSERT_TRUE(cpu->ComputeLogits({x_gpu.data(), rows, ref_specs}, &want).ok());
  const absl::Status st = gpu->ComputeLogits({x.data(), rows, specs}, &got);
  ASSERT_TRUE(st.ok()) << st;
  ASSERT_EQ(got.size(), want.size());
  for (int64_t r = 0; r < rows; ++r) {
    SCOPED_TRACE(::testing::Message() << "rows " << rows << " row " << r);
    ASSERT_NO_FATAL_FAILURE(ExpectMatchesReference(want[r], got[r], specs[r], s.vocab, tol));
  }
}

// Top-k calls without token ids or full logits (the conformance test above always asks for ids):
// the epilogue cuts at a threshold over the kernels' partial maxima (k <= 32, or slices of 128 rows
// and more) or at a histogram bin. Each batch runs first with larger logits, whose values stay in
// the backend's buffers: a range read but not written by the later calls would surface them.
TEST_P(CudaConformanceTest, TopKAloneMatchesCpuBackend) {
  const Shape s = GetParam();
  SCOPED_TRACE(::testing::Message() << "seed " << seed_);
  std::mt19937_64 rng(seed_);
  for (int64_t rows : PathBatches(s)) {
    for (int run = 0; run < 3; ++run) {
      SCOPED_TRACE(::testing::Message() << "run " << run);
      // Run 2 also has argmax-only rows, whose logits the kernels do not store (store_rows).
      const uint32_t big_k = run == 2 ? 40 : 32;
      std::vector<RowSpec> specs(rows);
      for (int64_t r = 0; r < rows; ++r) {
        const uint32_t k = run == 2 && r % 4 == 3 ? 0 : r % 3 == 0 ? 20 : r % 3 == 1 ? 5 : big_k;
        specs[r] = RowSpec{std::min<uint32_t>(k, s.vocab), {}, false};
      }
      ASSERT_NO_FATAL_FAILURE(ExpectCallMatches(cpu_.get(), gpu_.get(), s, rows, run == 0 ? 4.0f : 1.0f, specs, rng));
    }
  }
}

// Token logits without a top-k or full logits: lmhead's FP8 kernels finish them in their tile
// store and store no logits (KernelsFinishTokenLogits), up to one id per thread of a tile; with
// more ids per row the logits are stored and the epilogue reads them. Each call follows one with
// larger logits and the same ids, whose results stay in the backend's buffers.
TEST_P(CudaConformanceTest, TokenLogitsAloneMatchCpuBackend) {
  const Shape s = GetParam();
  SCOPED_TRACE(::testing::Message() << "seed " << seed_);
  std::mt19937_64 rng(seed_);
  for (int64_t rows : PathBatches(s)) {
    for (size_t id_count : {size_t{3}, size_t{40}}) {
      std::vector<uint32_t> ids = {0, static_cast<uint32_t>(s.vocab - 1)};
      while (ids.size() < id_count) ids.push_back(static_cast<uint32_t>(rng() % s.vocab));
      // Rows ask for the first 1..id_count ids, so the id slots past a row's own stay unused.
      std::vector<RowSpec> specs(rows);
      for (int64_t r = 0; r < rows; ++r) {
        specs[r] = RowSpec{0, absl::Span<const uint32_t>(ids).first(1 + r % id_count), false};
      }
      for (int run = 0; run < 2; ++run) {
        SCOPED_TRACE(::testing::Message() << "ids " << id_count << " run " << run);
        ASSERT_NO_FATAL_FAILURE(ExpectCallMatches(cpu_.get(), gpu_.get(), s, rows, run == 0 ? 4.0f : 1.0f, specs, rng));
      }
    }
  }
}

// Calls that ask for nothing but the argmax and logsumexp store no logits at all; with fp8
// activations above the GEMV's rows they run the warp-specialized FP8 x FP8 kernel, whose partial
// statistics cover 192 vocab rows (also past a batch's last full tile of 128 rows, and on the
// soft-capped head). Token logprobs of up to 4 ids per row run it too
// (TokenLogitsAloneMatchCpuBackend's 3-id calls).
TEST_P(CudaConformanceTest, ArgmaxAloneMatchesCpuBackend) {
  const Shape s = GetParam();
  SCOPED_TRACE(::testing::Message() << "seed " << seed_);
  std::mt19937_64 rng(seed_);
  std::vector<int64_t> batches = PathBatches(s);
  batches.push_back(129);
  for (int64_t rows : batches) {
    const std::vector<RowSpec> specs(rows, RowSpec{0, {}, false});
    for (int run = 0; run < 2; ++run) {
      SCOPED_TRACE(::testing::Message() << "rows " << rows << " run " << run);
      ASSERT_NO_FATAL_FAILURE(ExpectCallMatches(cpu_.get(), gpu_.get(), s, rows, run == 0 ? 4.0f : 1.0f, specs, rng));
    }
  }
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, CudaConformanceTest,
    ::testing::Values(Shape{4096, 256, {}, ActivationPrecision::kBf16},
                      Shape{2003, 136, {}, ActivationPrecision::kBf16},  // unaligned: padded inside
                      Shape{32000, 1024, {0.5f, 30.0f}, ActivationPrecision::kBf16},
                      Shape{4096, 256, {}, ActivationPrecision::kFp8},
                      // fp8 activations over more columns than the FP8 x FP8 GEMM's stages, and unaligned
                      Shape{32000, 1024, {0.5f, 30.0f}, ActivationPrecision::kFp8},
                      Shape{2003, 136, {}, ActivationPrecision::kFp8},
                      Shape{131072, 384, {}, ActivationPrecision::kBf16, /*large=*/true},
                      // rows wider than the activation kernels keep in registers (16384 columns at
                      // 1-8 rows, 8192 above): their tail loops
                      Shape{2048, 16400, {}, ActivationPrecision::kBf16, false, 0.25f},
                      Shape{2048, 16400, {}, ActivationPrecision::kFp8, false, 0.25f}),
    [](const ::testing::TestParamInfo<Shape>& info) { return ShapeName(info.param); });

// The GPU quantizer must give the host quantizer's codes and scales, bit for bit.
TEST(CudaBackendTest, GpuQuantizationIsBitIdenticalToTheHostQuantizer) {
  constexpr int64_t kVocab = 1001, kHidden = 200;  // unaligned: padded on the device
  std::vector<float> w = testing::RandomWeights(kVocab, kHidden, 77);
  w[5 * kHidden + 3] = 0.0f;
  std::fill(w.begin() + 9 * kHidden, w.begin() + 10 * kHidden, 0.0f);  // an all-zero row (scale 1)
  std::vector<uint16_t> bf16(w.size());
  for (size_t i = 0; i < w.size(); ++i) bf16[i] = FloatToBf16(w[i]);
  for (SourceDType dtype : {SourceDType::kF32, SourceDType::kBF16}) {
    HeadSource src;
    src.dtype = dtype;
    src.rows = kVocab;
    src.cols = kHidden;
    src.data = dtype == SourceDType::kF32 ? reinterpret_cast<const uint8_t*>(w.data())
                                          : reinterpret_cast<const uint8_t*>(bf16.data());
    for (auto [format, mode] : {std::pair{WeightFormat::kFp8E4m3, ScaleMode::kPerRow},
                                std::pair{WeightFormat::kFp8E4m3, ScaleMode::kPerTensor},
                                std::pair{WeightFormat::kFp8E4m3, ScaleMode::kNone},
                                std::pair{WeightFormat::kBf16, ScaleMode::kPerRow}}) {
      SCOPED_TRACE(::testing::Message() << "dtype " << static_cast<int>(dtype) << " format "
                                        << WeightFormatName(format) << " mode " << ScaleModeName(mode));
      QuantizeOptions q;
      q.format = format;
      q.scale_mode = mode;
      q.chunk_rows = 97;
      auto host = QuantizeHead(src, q);
      ASSERT_TRUE(host.ok()) << host.status();
      auto gpu = NewBackend(CudaOptions(), src, q);
      if (!gpu.ok()) {
        ExpectSkippable(gpu.status());
        GTEST_SKIP() << "no CUDA backend here: " << gpu.status();
      }
      auto exported = (*gpu)->ExportWeights();
      ASSERT_TRUE(exported.ok()) << exported.status();
      EXPECT_EQ(exported->scale_mode, host->scale_mode);
      EXPECT_EQ(exported->row_scales, host->row_scales);
      ASSERT_EQ(exported->data.size(), host->data.size());
      EXPECT_TRUE(exported->data == host->data) << "codes differ";
    }
  }
  // A non-finite weight is reported with its row, as the host quantizer does.
  w[700 * kHidden + 1] = std::numeric_limits<float>::infinity();
  auto failed = NewBackend(CudaOptions(), testing::F32HeadSource(w, kVocab, kHidden), QuantizeOptions{});
  ASSERT_FALSE(failed.ok());
  EXPECT_NE(failed.status().message().find("row 700"), std::string::npos) << failed.status();
}

// Every result of every row equal, bit for bit.
void ExpectBitIdentical(const std::vector<RowOutput>& got, const std::vector<RowOutput>& want) {
  ASSERT_EQ(got.size(), want.size());
  for (size_t r = 0; r < got.size(); ++r) {
    SCOPED_TRACE(::testing::Message() << "row " << r);
    EXPECT_EQ(got[r].argmax_id, want[r].argmax_id);
    EXPECT_EQ(got[r].logsumexp, want[r].logsumexp);
    EXPECT_EQ(got[r].top_ids, want[r].top_ids);
    EXPECT_EQ(got[r].top_logits, want[r].top_logits);
    EXPECT_EQ(got[r].token_logits, want[r].token_logits);
    EXPECT_EQ(got[r].logits, want[r].logits);
  }
}

// Rows that arrive as bf16 (Backend::Bf16InputBuffer) cross PCIe at half the bytes; the kernels
// widen them exactly, so every result must equal the call with the same values as fp32 rows, bit
// for bit: GEMV batches (hi + lo and single fp16) and FP8 GEMM batches (one or two tiles), with
// bf16-level activations (FP8 x fp16) and with fp8 activations (FP8 x FP8, per-token E4M3).
TEST(CudaBackendTest, Bf16RowsGiveTheSameResultsAsFp32Rows) {
  const int64_t vocab = 4096, hidden = 256;
  const uint64_t seed = FreshSeed();
  SCOPED_TRACE(::testing::Message() << "seed " << seed);
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  const std::vector<uint32_t> ids = {0, 7, static_cast<uint32_t>(vocab - 1)};
  for (ActivationPrecision precision : {ActivationPrecision::kBf16, ActivationPrecision::kFp8}) {
    SCOPED_TRACE(precision == ActivationPrecision::kBf16 ? "bf16 activations" : "fp8 activations");
    std::string skip;
    auto gpu = CudaOrSkip(Fp8Head(vocab, hidden, seed), {}, precision, &skip);
    if (gpu == nullptr) GTEST_SKIP() << "no CUDA backend here: " << skip;
    for (int64_t rows : {1, 7, 9, 33, 64, 65, 200}) {
      SCOPED_TRACE(::testing::Message() << "rows " << rows);
      std::vector<uint16_t> bits(rows * hidden);
      std::vector<float> x(rows * hidden);
      for (size_t i = 0; i < x.size(); ++i) {
        bits[i] = FloatToBf16(normal(rng));
        x[i] = Bf16ToFloat(bits[i]);
      }
      std::vector<RowSpec> specs(rows);
      for (int64_t r = 0; r < rows; ++r) specs[r] = RowSpec{r % 2 == 0 ? 20u : 0u, ids, r % 5 == 0};
      std::vector<RowOutput> want, got;
      float* buffer = gpu->InputBuffer(rows);
      ASSERT_NE(buffer, nullptr);
      std::copy(x.begin(), x.end(), buffer);
      ASSERT_TRUE(gpu->ComputeLogits({buffer, rows, specs}, &want).ok());
      uint16_t* buffer16 = gpu->Bf16InputBuffer(rows);
      ASSERT_NE(buffer16, nullptr) << "the GEMV and the FP8 GEMMs take bf16 rows";
      std::copy(bits.begin(), bits.end(), buffer16);
      LogitsBatch batch{nullptr, rows, specs};
      batch.hidden_bf16 = buffer16;
      const absl::Status st = gpu->ComputeLogits(batch, &got);
      ASSERT_TRUE(st.ok()) << st;
      ExpectBitIdentical(got, want);
    }
    // bf16 rows only in the buffer handed out.
    std::vector<uint16_t> elsewhere(hidden);
    std::vector<RowSpec> one(1);
    LogitsBatch stray{nullptr, 1, one};
    stray.hidden_bf16 = elsewhere.data();
    std::vector<RowOutput> out;
    EXPECT_EQ(gpu->ComputeLogits(stray, &out).code(), absl::StatusCode::kInvalidArgument);
    // cuBLASLt batches (lmhead's FP8 GEMMs off, above the GEMV's rows) take no bf16 rows.
    auto lt = CudaOrSkip(Fp8Head(vocab, hidden, seed), {}, precision, &skip, 0, /*fp8_gemm=*/false);
    ASSERT_NE(lt, nullptr);
    EXPECT_NE(lt->Bf16InputBuffer(64), nullptr);
    EXPECT_EQ(lt->Bf16InputBuffer(65), nullptr);
  }
}

// fp32 rows that the host scales and rounds to fp16 (ScaleRowToHalf, as the batcher does into
// Backend::HalfInputBuffer, or the backend itself when it stages caller rows for such a batch) cross
// PCIe at half the bytes, and the kernels multiply exactly what they make of the fp32 rows: every
// result bit-identical, for the GEMV's single-fp16 batches and the FP8 x fp16 GEMM's. Batches that
// multiply anything else (hi + lo up to kCudaGemvExactRows rows, E4M3 rows, cuBLASLt) get no
// such buffer; a buffer or scales from elsewhere are refused.
TEST(CudaBackendTest, Fp16RowsGiveTheSameResultsAsFp32Rows) {
  const int64_t vocab = 4096, hidden = 264;  // a partial last 128-column step
  const uint64_t seed = FreshSeed();
  SCOPED_TRACE(::testing::Message() << "seed " << seed);
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  const std::vector<uint32_t> ids = {0, 7, static_cast<uint32_t>(vocab - 1)};
  std::string skip;
  auto gpu = CudaOrSkip(Fp8Head(vocab, hidden, seed), {}, ActivationPrecision::kBf16, &skip);
  if (gpu == nullptr) GTEST_SKIP() << "no CUDA backend here: " << skip;
  if (!HalfRowsAreFast()) {  // (a host without a vector conversion keeps fp32 rows)
    EXPECT_EQ(gpu->HalfInputBuffer(16).values, nullptr);
    GTEST_SKIP() << "this host converts rows to fp16 without vector instructions: no fp16 rows";
  }
  for (int64_t rows : {9, 16, 17, 33, 64, 65, 200}) {
    SCOPED_TRACE(::testing::Message() << "rows " << rows);
    std::vector<float> x(rows * hidden);
    for (int64_t i = 0; i < rows * hidden; ++i) {
      const int64_t r = i / hidden;  // rows of every magnitude, one all zero
      x[i] = r == 3 ? 0.0f : normal(rng) * std::ldexp(1.0f, static_cast<int>(r % 9) * 7 - 30);
    }
    std::vector<RowSpec> specs(rows);
    for (int64_t r = 0; r < rows; ++r) specs[r] = RowSpec{r % 2 == 0 ? 20u : 0u, ids, r % 5 == 0};
    std::vector<RowOutput> want, got, staged;
    float* buffer = gpu->InputBuffer(rows);
    ASSERT_NE(buffer, nullptr);
    std::copy(x.begin(), x.end(), buffer);
    ASSERT_TRUE(gpu->ComputeLogits({buffer, rows, specs}, &want).ok());  // fp32 rows, scaled on the GPU
    const HalfRows half = gpu->HalfInputBuffer(rows);
    ASSERT_NE(half.values, nullptr) << "one fp16 per activation: the backend takes scaled fp16 rows";
    ScaleRowsToHalf(x.data(), rows, hidden, half);
    LogitsBatch batch{nullptr, rows, specs};
    batch.hidden_half = half.values;
    batch.half_inv_scales = half.inv_scales;
    absl::Status st = gpu->ComputeLogits(batch, &got);
    ASSERT_TRUE(st.ok()) << st;
    ExpectBitIdentical(got, want);
    st = gpu->ComputeLogits({x.data(), rows, specs}, &staged);  // caller memory: staged by the backend
    ASSERT_TRUE(st.ok()) << st;
    ExpectBitIdentical(staged, want);
  }
  // Only in the buffer handed out, with its scales; and one kind of rows per batch.
  const HalfRows half = gpu->HalfInputBuffer(9);
  std::vector<uint16_t> elsewhere(9 * hidden);
  std::vector<float> scales(9, 1.0f);
  std::vector<RowSpec> specs(9);
  std::vector<RowOutput> out;
  LogitsBatch stray{nullptr, 9, specs};
  stray.hidden_half = elsewhere.data(), stray.half_inv_scales = half.inv_scales;
  EXPECT_EQ(gpu->ComputeLogits(stray, &out).code(), absl::StatusCode::kInvalidArgument);
  stray.hidden_half = half.values, stray.half_inv_scales = scales.data();
  EXPECT_EQ(gpu->ComputeLogits(stray, &out).code(), absl::StatusCode::kInvalidArgument);
  std::vector<float> x(9 * hidden, 1.0f);
  stray.hidden = x.data(), stray.half_inv_scales = half.inv_scales;
  EXPECT_EQ(gpu->ComputeLogits(stray, &out).code(), absl::StatusCode::kInvalidArgument);
  // Which batches take them.
  EXPECT_EQ(gpu->HalfInputBuffer(kCudaGemvExactRows).values, nullptr) << "hi + lo planes need the fp32 rows";
  EXPECT_EQ(gpu->HalfInputBuffer(100000).values, nullptr) << "more than one slice";
  auto fp8 = CudaOrSkip(Fp8Head(vocab, hidden, seed), {}, ActivationPrecision::kFp8, &skip);
  ASSERT_NE(fp8, nullptr);
  EXPECT_NE(fp8->HalfInputBuffer(64).values, nullptr);
  EXPECT_EQ(fp8->HalfInputBuffer(65).values, nullptr) << "E4M3 rows from fp32";
  auto lt = CudaOrSkip(Fp8Head(vocab, hidden, seed), {}, ActivationPrecision::kBf16, &skip, 0, /*fp8_gemm=*/false);
  ASSERT_NE(lt, nullptr);
  EXPECT_NE(lt->HalfInputBuffer(64).values, nullptr);
  EXPECT_EQ(lt->HalfInputBuffer(65).values, nullptr) << "cuBLASLt's high + residual rows from fp32";
}

// The GEMV at 1-16 and at 17-32 rows runs one or two blocks per SM (per head and row range,
// whichever is faster at startup): both sum the same products in the same order, so every result
// is bit-identical; other counts are refused.
TEST(CudaBackendTest, GemvInTwoBlocksPerSmMatchesOneBlock) {
  const int64_t vocab = 30011, hidden = 1040;  // a partial last block, a partial last activation chunk
  const uint64_t seed = FreshSeed();
  SCOPED_TRACE(::testing::Message() << "seed " << seed);
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::string skip;
  auto one = CudaOrSkip(Fp8Head(vocab, hidden, seed), {}, ActivationPrecision::kBf16, &skip, 0, true, 1);
  if (one == nullptr) GTEST_SKIP() << "no CUDA backend here: " << skip;
  auto two = CudaOrSkip(Fp8Head(vocab, hidden, seed), {}, ActivationPrecision::kBf16, &skip, 0, true, 2);
  ASSERT_NE(two, nullptr) << skip;
  EXPECT_NE(two->Tuning().find("1-32 rows: 2 block(s) per SM (as configured)"), std::string::npos) << two->Tuning();
  auto timed = CudaOrSkip(Fp8Head(vocab, hidden, seed), {}, ActivationPrecision::kBf16, &skip);
  ASSERT_NE(timed, nullptr) << skip;
  for (const char* told : {"GEMV at 1-16 rows: ", "fastest 8-row argmax call", "GEMV at 17-32 rows: ",
                           "fastest 24-row argmax call"}) {
    EXPECT_NE(timed->Tuning().find(told), std::string::npos) << timed->Tuning();
  }
  const std::vector<uint32_t> ids = {0, 11, static_cast<uint32_t>(vocab - 1)};
  for (int64_t rows : {1, 4, 8, 9, 16, 17, 24, 32}) {
    SCOPED_TRACE(::testing::Message() << "rows " << rows);
    std::vector<float> x(rows * hidden);
    for (float& v : x) v = normal(rng);
    std::vector<RowSpec> specs(rows);
    for (int64_t r = 0; r < rows; ++r) {
      specs[r] = RowSpec{r % 2 == 0 ? 20u : 0u, r % 3 == 0 ? absl::MakeConstSpan(ids) : absl::Span<const uint32_t>(),
                         r % 4 == 1};
    }
    std::vector<RowOutput> want, got;
    ASSERT_TRUE(one->ComputeLogits({x.data(), rows, specs}, &want).ok());
    ASSERT_TRUE(two->ComputeLogits({x.data(), rows, specs}, &got).ok());
    ExpectBitIdentical(got, want);
  }
  BackendOptions o = CudaOptions();
  o.gpu_gemv_blocks_per_sm = 3;
  auto bad = NewBackend(o, Fp8Head(vocab, hidden, seed));
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument) << bad.status();
}

TEST(CudaBackendTest, EqualLogitsRankLowerIdFirstAndOverflowIsReported) {
  HeadWeights h;
  h.vocab = 40000;  // more equal logits than the candidate buffer holds
  h.hidden = 32;
  h.data.assign(h.vocab * h.hidden, Fp8E4m3Encode(1.0f));  // every row identical
  h.row_scales.assign(h.vocab, 1.0f);
  std::string skip;
  auto gpu = CudaOrSkip(h, {}, ActivationPrecision::kBf16, &skip);
  if (gpu == nullptr) GTEST_SKIP() << "no CUDA backend here: " << skip;
  std::vector<float> x(32, 0.25f);
  std::vector<RowOutput> out;
  // top_k 20 cuts at a threshold (the GEMV partials' maxima), 1024 at a histogram bin; both let
  // in every logit here and fall back to the exact selection.
  // One row (the mma.sync GEMV), several (the wgmma GEMV) and more than the GEMV takes (the FP8
  // GEMM): every row must rank the same way.
  for (int64_t rows : {1, 8, 40, 200}) {
    const std::vector<float> xs(rows * 32, 0.25f);
    for (uint32_t top_k : {20u, 1024u}) {
      const std::vector<RowSpec> specs(rows, RowSpec{top_k, {}, false});
      ASSERT_TRUE(gpu->ComputeLogits({xs.data(), rows, specs}, &out).ok());
      for (int64_t r = 0; r < rows; ++r) {
        SCOPED_TRACE(::testing::Message() << "rows " << rows << " row " << r << " top_k " << top_k);
        EXPECT_EQ(out[r].argmax_id, 0u);
        for (uint32_t k = 0; k < top_k; ++k) ASSERT_EQ(out[r].top_ids[k], k);
        EXPECT_NEAR(out[r].logsumexp, 8.0 + std::log(40000.0), 1e-4);
      }
    }
  }
  const RowSpec spec{1024, {}, false};
  std::fill(x.begin(), x.end(), 3e38f);
  EXPECT_EQ(gpu->ComputeLogits({x.data(), 1, {&spec, 1}}, &out).code(), absl::StatusCode::kInvalidArgument);
}

// Calls whose logits only the top-k reads store a vocab block's logits only where the block's
// second-largest logit can reach the row's top k (EpilogueParams::topk_bound); the others' maxima
// are taken from the partial statistics. Here the 65536 logits take two values: high for one id
// in each of the blocks 0-99 (256 ids each) and every id of the blocks 200-219, low elsewhere --
// more ties at the top than the candidate buffer holds, so the selection falls back to the exact
// one over the stored blocks and the maxima of the others. The call before each swaps high and
// low, which leaves high logits where the next call stores none: a block read as stored would
// rank them first. Last, the same call with full logits on one row must store all of them (its
// own CUDA graph).
TEST(CudaBackendTest, SparseTopKStoreKeepsEveryTopLogit) {
  constexpr int64_t kVocab = 65536, kHidden = 32, kBlock = 256;
  std::vector<bool> high(kVocab, false);
  for (int64_t i = 0; i < 100; ++i) high[i * kBlock + 7] = true;
  for (int64_t v = 200 * kBlock; v < 220 * kBlock; ++v) high[v] = true;
  const int64_t high_count = std::count(high.begin(), high.end(), true);
  HeadWeights h;
  h.vocab = kVocab;
  h.hidden = kHidden;
  h.data.resize(kVocab * kHidden);
  for (int64_t v = 0; v < kVocab; ++v) {
    std::fill_n(h.data.begin() + v * kHidden, kHidden, Fp8E4m3Encode(high[v] ? 1.0f : -1.0f));
  }
  h.row_scales.assign(kVocab, 1.0f);
  std::string skip;
  auto gpu = CudaOrSkip(h, {}, ActivationPrecision::kBf16, &skip);
  if (gpu == nullptr) GTEST_SKIP() << "no CUDA backend here: " << skip;
  constexpr uint32_t kTopK = 20;
  // One row (the mma.sync GEMV, which stores every logit), several (the wgmma GEMV) and more than
  // the GEMV takes (the FP8 GEMM).
  for (int64_t rows : {1, 8, 40, 200}) {
    for (float sign : {-1.0f, 1.0f, -1.0f, 1.0f}) {
      SCOPED_TRACE(::testing::Message() << "rows " << rows << " sign " << sign);
      const std::vector<float> xs(rows * kHidden, 0.25f * sign);  // logits +-8
      std::vector<uint32_t> want;
      for (int64_t v = 0; v < kVocab && want.size() < kTopK; ++v) {
        if (high[v] == (sign > 0)) want.push_back(static_cast<uint32_t>(v));
      }
      const int64_t top_count = sign > 0 ? high_count : kVocab - high_count;
      const double logsumexp = std::log(top_count * std::exp(8.0) + (kVocab - top_count) * std::exp(-8.0));
      std::vector<RowOutput> out;
      const std::vector<RowSpec> specs(rows, RowSpec{kTopK, {}, false});
      ASSERT_TRUE(gpu->ComputeLogits({xs.data(), rows, specs}, &out).ok());
      for (int64_t r = 0; r < rows; ++r) {
        SCOPED_TRACE(::testing::Message() << "row " << r);
        EXPECT_EQ(out[r].argmax_id, want[0]);
        ASSERT_EQ(out[r].top_ids, want);
        for (float l : out[r].top_logits) ASSERT_EQ(l, 8.0f);
        EXPECT_NEAR(out[r].logsumexp, logsumexp, 1e-4);
      }
    }
    std::vector<RowSpec> specs(rows, RowSpec{kTopK, {}, false});
    specs[0].want_logits = true;
    const std::vector<float> xs(rows * kHidden, 0.25f);
    std::vector<RowOutput> out;
    ASSERT_TRUE(gpu->ComputeLogits({xs.data(), rows, specs}, &out).ok());
    ASSERT_EQ(out[0].logits.size(), static_cast<size_t>(kVocab));
    for (int64_t v = 0; v < kVocab; ++v) ASSERT_EQ(out[0].logits[v], high[v] ? 8.0f : -8.0f) << "rows " << rows << " id " << v;
  }
}

}  // namespace
}  // namespace lmhead

namespace lmhead {
namespace {

// A spread of sampling settings: greedy, plain temperature, top-k (list path), top-p over the
// whole vocabulary (radix path), min-p, combinations, bias / masks / penalties, both logprob modes.
std::vector<SamplingSpec> SamplingMix(int64_t vocab, uint64_t seed) {
  std::vector<SamplingSpec> mix;
  auto add = [&](auto edit) {
    SamplingSpec s;
    s.seed = seed + mix.size();
    s.step = mix.size() * 7;
    edit(s);
    mix.push_back(s);
  };
  const uint32_t v = static_cast<uint32_t>(vocab);
  add([](SamplingSpec& s) { s.temperature = 0.0f; });
  add([](SamplingSpec& s) { s.temperature = 0.8f; });
  add([](SamplingSpec& s) { s.top_k = 50; });
  add([](SamplingSpec& s) { s.top_p = 0.9f; });
  add([](SamplingSpec& s) { s.top_p = 0.3f, s.temperature = 1.7f; });
  add([](SamplingSpec& s) { s.min_p = 0.1f; });
  add([](SamplingSpec& s) { s.top_k = 200, s.top_p = 0.8f, s.min_p = 0.02f; });
  add([](SamplingSpec& s) { s.top_k = 1024, s.top_p = 0.95f, s.temperature = 0.6f; });
  add([&](SamplingSpec& s) {
    s.logit_bias = {{1, 5.0f}, {v / 2, -3.0f}, {v - 1, 2.5f}};
    s.banned_token_ids = {0, 2, v - 2};
    s.previous_counts = {{3, 1}, {5, 4}, {v / 3, 2}};
    s.repetition_penalty = 1.3f, s.presence_penalty = 0.4f, s.frequency_penalty = 0.2f;
    s.top_p = 0.95f;
  });
  add([&](SamplingSpec& s) {
    s.allowed_token_ids = {7, 11, v / 4, v / 2, v - 1};
    s.temperature = 2.0f;
  });
  add([&](SamplingSpec& s) {
    s.temperature = 0.0f;
    s.logit_bias = {{v - 3, 100.0f}};
  });
  // Explicit kept sets (a vocab shard's second round): a cut through the middle, one that keeps
  // nothing of these rows, and one at a tie id.
  add([&](SamplingSpec& s) { s.has_keep = true, s.keep_above = 0.0f, s.keep_tie_max_id = v / 2; });
  add([&](SamplingSpec& s) { s.has_keep = true, s.keep_above = 1e30f, s.keep_tie_max_id = 0; });
  add([&](SamplingSpec& s) {
    s.has_keep = true, s.keep_above = -1.0f, s.keep_tie_max_id = v - 1, s.token_offset = 1000;
  });
  return mix;
}

// GPU selection against the CPU reference (kernels/cpu/row_sampling.cc) applied to the GPU's own
// raw logits: identical inputs, so the tokens must be the same (the two differ only in the last
// bit of logf/expf, which can flip a draw only on a near-exact tie). Then against the CPU
// backend's own logits, whose draws agree except where the logits differ by the GEMM tolerance.
TEST_P(CudaConformanceTest, SamplingMatchesTheCpuReference) {
  const Shape s = GetParam();
  const uint64_t seed = seed_;
  SCOPED_TRACE(::testing::Message() << "seed " << seed);
  Backend* cpu = cpu_.get();
  Backend* gpu = gpu_.get();
  const std::vector<SamplingSpec> mix = SamplingMix(s.vocab, seed);
  std::mt19937_64 rng(seed);
  int64_t compared = 0, same_on_gpu_logits = 0, same_on_cpu_logits = 0;
  for (int64_t rows : {1, 13, 40}) {
    for (float scale : {1.0f, 8.0f}) {
      std::normal_distribution<float> normal(0.0f, scale * s.row_scale);
      std::vector<float> x(rows * s.hidden);
      for (float& v : x) v = normal(rng);
      std::vector<uint32_t> ids = {1, static_cast<uint32_t>(s.vocab - 1)};
      std::vector<RowSpec> specs(rows);
      for (int64_t r = 0; r < rows; ++r) {
        specs[r] = RowSpec{r % 3 == 0 ? 0u : 8u, ids, true, &mix[r % mix.size()], r % 2 == 1};
      }
      std::vector<RowOutput> got(rows), cpu_out;
      for (auto& o : got) o.sampled_id = 0xdeadbeef, o.sampled_logprob = NAN;  // poisoned
      const absl::Status st = gpu->ComputeLogits({x.data(), rows, specs}, &got);
      ASSERT_TRUE(st.ok()) << st;
      ASSERT_TRUE(cpu->ComputeLogits({x.data(), rows, specs}, &cpu_out).ok());
      for (int64_t r = 0; r < rows; ++r) {
        SCOPED_TRACE(::testing::Message() << "rows " << rows << " row " << r << " scale " << scale);
        const RowOutput& g = got[r];
        ASSERT_LT(g.sampled_id, s.vocab);
        // The reference on the GPU's logits.
        RowOutput ref = g;
        ASSERT_TRUE(SampleRow(specs[r], g.logits.data(), s.vocab, &ref).ok());
        ASSERT_EQ(g.sampled, ref.sampled);  // false only when an explicit kept set holds no token here
        ++compared;
        if (ref.sampled_id == g.sampled_id) {
          ++same_on_gpu_logits;
          EXPECT_NEAR(g.sampled_logprob, ref.sampled_logprob, 1e-4 + 1e-5 * std::fabs(ref.sampled_logprob));
        } else {  // allowed near an exact tie (see above): say how near
          std::printf("[ sampling ] rows %lld row %lld scale %g mix %zu: GPU token %u (score %.9g, logit %.9g), "
                      "CPU reference %u (score %.9g, logit %.9g)\n",
                      static_cast<long long>(rows), static_cast<long long>(r), scale, r % mix.size(), g.sampled_id,
                      g.sampled_score, g.logits[g.sampled_id], ref.sampled_id, ref.sampled_score,
                      g.logits[ref.sampled_id]);
        }
        if (cpu_out[r].sampled_id == g.sampled_id) ++same_on_cpu_logits;
        const SamplingSpec& spec = *specs[r].sampling;
        if (spec.greedy() || !spec.allowed_token_ids.empty()) {
          if (spec.allowed_token_ids.empty()) EXPECT_EQ(g.sampled_id, ref.sampled_id);
          else EXPECT_TRUE(std::binary_search(spec.allowed_token_ids.begin(), spec.allowed_token_ids.end(), g.sampled_id));
        }
        EXPECT_FALSE(std::binary_search(spec.banned_token_ids.begin(), spec.banned_token_ids.end(), g.sampled_id));
        if (specs[r].processed_logprobs) {
          EXPECT_NEAR(g.logprob_lse, ref.logprob_lse, 1e-4 + 1e-5 * std::fabs(ref.logprob_lse));
          ASSERT_EQ(g.top_ids.size(), specs[r].top_k);
          for (size_t k = 0; k < g.top_ids.size(); ++k) {
            EXPECT_EQ(g.top_ids[k], ref.top_ids[k]) << "processed rank " << k;
            EXPECT_EQ(g.top_logits[k], ref.top_logits[k]) << "processed rank " << k;
          }
          for (size_t i = 0; i < ids.size(); ++i) EXPECT_EQ(g.token_logits[i], ref.token_logits[i]);
        } else {
          EXPECT_EQ(g.logprob_lse, g.logsumexp);
        }
      }
    }
  }
  std::printf("[ sampling ] %lldx%lld: %lld rows; same token as the CPU reference on the GPU's logits: %lld, "
              "on the CPU backend's own logits: %lld\n",
              static_cast<long long>(s.vocab), static_cast<long long>(s.hidden), static_cast<long long>(compared),
              static_cast<long long>(same_on_gpu_logits), static_cast<long long>(same_on_cpu_logits));
  EXPECT_GE(same_on_gpu_logits, compared - 1);
  EXPECT_GE(same_on_cpu_logits, compared * 9 / 10);
}

// Row bad_row of x overflowing (3e38) fails an argmax call over `rows` rows with INVALID_ARGUMENT
// naming the row, and the next call on x is exact against the CPU backend fed x_ref (the
// activations the GPU multiplies).
template <typename Tolerance>
void ExpectOverflowFailsAndNextCallIsExact(Backend& gpu, Backend& cpu, const std::vector<float>& x,
                                           const std::vector<float>& x_ref, int64_t rows, int64_t hidden,
                                           int64_t bad_row, Tolerance tol) {
  std::vector<float> bad = x;
  std::fill(bad.begin() + bad_row * hidden, bad.begin() + (bad_row + 1) * hidden, 3e38f);
  const std::vector<RowSpec> argmax_specs(rows, RowSpec{0, {}, false});
  std::vector<RowOutput> got, want;
  const absl::Status failed = gpu.ComputeLogits({bad.data(), rows, argmax_specs}, &got);
  EXPECT_EQ(failed.code(), absl::StatusCode::kInvalidArgument) << failed;
  EXPECT_NE(failed.message().find(absl::StrCat("row ", bad_row)), std::string::npos) << failed;
  ASSERT_TRUE(gpu.ComputeLogits({x.data(), rows, argmax_specs}, &got).ok());
  ASSERT_TRUE(cpu.ComputeLogits({x_ref.data(), rows, argmax_specs}, &want).ok());
  for (int64_t r = 0; r < rows; ++r) {
    ASSERT_NEAR(got[r].logsumexp, want[r].logsumexp, tol(want[r].logsumexp)) << "row " << r << " after the failure";
  }
}

// A batch larger than the output workspace runs in slices, each enqueued while the host reads the
// previous one's results (slots, rows staged through pinned memory, copies on a second stream).
// 400 rows in 5 slices of 80 (cuBLASLt), one of 16 and 6 of 64 (the GEMV, which reads the staged
// rows over PCIe) or one of 16 (the GEMV) and 3 of 128 (the FP8 GEMM -- FP8 x fp16 with bf16
// activations, FP8 x FP8 with fp8 activations) must give what the CPU backend gives: argmax-only
// calls with token logprobs (no logits are stored: the token logits come from the raw products or
// the kernels' tile store; with the FP8 GEMMs in wide slices of 128 and 272 rows instead, see
// StatisticsOnlyBatchesInWideSlicesMatchTheCpuBackend), mixed top-k / full-logit rows, and sampled
// rows; an overflowing row fails the call without harming the next one.
struct Slicing {
  int64_t rows;
  bool fp8_gemm;
};

void PrintTo(const Slicing& s, std::ostream* os) { *os << s.rows << " rows" << (s.fp8_gemm ? ", FP8 GEMM" : ""); }

class SlicedBatchTest : public ::testing::TestWithParam<Slicing> {};

TEST_P(SlicedBatchTest, MatchesTheCpuBackend) {
  const int64_t vocab = 4096, hidden = 256, rows = 400, slice_rows = GetParam().rows;
  const bool fp8_gemm = GetParam().fp8_gemm;
  const uint64_t seed = FreshSeed();
  SCOPED_TRACE(::testing::Message() << "seed " << seed);
  const HeadWeights head = Fp8Head(vocab, hidden, seed);
  auto cpu = NewCpuBackend(head, {}, 4);
  ASSERT_TRUE(cpu.ok());
  const std::vector<SamplingSpec> mix = SamplingMix(vocab, seed);
  std::mt19937_64 rng(seed);
  for (ActivationPrecision precision : {ActivationPrecision::kBf16, ActivationPrecision::kFp8}) {
    SCOPED_TRACE(precision == ActivationPrecision::kBf16 ? "bf16 activations" : "fp8 activations");
    // Output rows per batch row: two (high + residual) on cuBLASLt with bf16 activations.
    const int64_t gemm_rows_per_row = precision == ActivationPrecision::kBf16 && !fp8_gemm ? 2 : 1;
    std::string skip;
    auto gpu = CudaOrSkip(head, {}, precision, &skip, slice_rows * vocab * 4 * gemm_rows_per_row, fp8_gemm);
    if (gpu == nullptr) GTEST_SKIP() << "no CUDA backend here: " << skip;
    EXPECT_EQ(gpu->InputBuffer(rows), nullptr) << "a batch of several slices has no input buffer";
    ASSERT_NE(gpu->InputBuffer(slice_rows), nullptr);
    auto tol = [](double a, double b = 0) { return kAbsTolerance + kRelTolerance * (std::fabs(a) + std::fabs(b)); };
    std::normal_distribution<float> normal(0.0f, 1.0f);
    std::vector<float> x(rows * hidden);
    for (float& v : x) v = normal(rng);
    // The activations each slice's path multiplies. The backend cuts `rows` into equal slices of
    // whole tiles (128 rows) for the FP8 GEMMs, else of multiples of 16 rows, the remainder first.
    const int64_t granule = fp8_gemm ? 128 : 16;
    const int64_t slices = (rows + slice_rows - 1) / slice_rows;
    const int64_t per = std::min(slice_rows, ((rows + slices - 1) / slices + granule - 1) / granule * granule);
    std::vector<float> x_gpu;
    for (int64_t start = 0, n = rows - (rows - 1) / per * per; start < rows; start += n, n = per) {
      const std::vector<float> part(x.begin() + start * hidden, x.begin() + (start + n) * hidden);
      const std::vector<float> effective = GpuEffectiveActivations(part, n, hidden, precision, n, fp8_gemm);
      x_gpu.insert(x_gpu.end(), effective.begin(), effective.end());
    }
    // Calls that store no logits run in wide slices with the FP8 GEMMs: every row on the GEMMs.
    const std::vector<float> x_wide = fp8_gemm ? GpuEffectiveActivations(x, rows, hidden, precision, rows) : x_gpu;
    const std::vector<uint32_t> ids = {0, static_cast<uint32_t>(vocab - 1), static_cast<uint32_t>(rng() % vocab)};
    for (int kind = 0; kind < 3; ++kind) {
      SCOPED_TRACE(::testing::Message() << "kind " << kind);
      std::vector<RowSpec> specs(rows);
      for (int64_t r = 0; r < rows; ++r) {
        if (kind == 0) specs[r] = RowSpec{0, ids, false};                     // argmax + token logprobs
        if (kind == 1) specs[r] = RowSpec{r % 3 == 0 ? 20u : 0u, ids, r % 7 == 0};  // mixed
        if (kind == 2) specs[r] = RowSpec{0, ids, true, &mix[r % mix.size()], false};  // sampled
      }
      std::vector<RowOutput> got(rows), want;
      for (auto& o : got) o.argmax_id = 0xdeadbeef, o.logsumexp = NAN, o.sampled_id = 0xdeadbeef;  // poisoned
      absl::Status st = gpu->ComputeLogits({x.data(), rows, specs}, &got);
      ASSERT_TRUE(st.ok()) << st;
      std::vector<RowSpec> ref_specs = specs;
      for (RowSpec& spec : ref_specs) spec.top_k += 2, spec.sampling = nullptr;
      ASSERT_TRUE((*cpu)->ComputeLogits({(kind == 0 ? x_wide : x_gpu).data(), rows, ref_specs}, &want).ok());
      ASSERT_EQ(got.size(), static_cast<size_t>(rows));
      int64_t same_tokens = 0;
      for (int64_t r = 0; r < rows; ++r) {
        SCOPED_TRACE(::testing::Message() << "row " << r);
        ASSERT_NO_FATAL_FAILURE(ExpectMatchesReference(want[r], got[r], specs[r], vocab, tol));
        if (kind != 2) continue;
        // The CPU reference on the GPU's own logits (as in SamplingMatchesTheCpuReference: at most
        // one near-exact tie may draw differently).
        RowOutput ref = got[r];
        ASSERT_TRUE(SampleRow(specs[r], got[r].logits.data(), vocab, &ref).ok());
        ASSERT_EQ(got[r].sampled, ref.sampled);
        same_tokens += ref.sampled_id == got[r].sampled_id;
      }
      if (kind == 2) {
        EXPECT_GE(same_tokens, rows - 1);
      }
    }
    // A row whose logits overflow, in a middle slice with later slices already queued (the last of
    // the wide ones): the call fails naming the row, and the next call (the batcher retries each
    // request alone) is exact.
    ASSERT_NO_FATAL_FAILURE(ExpectOverflowFailsAndNextCallIsExact(*gpu, **cpu, x, x_wide, rows, hidden, 200, tol));
  }
}

INSTANTIATE_TEST_SUITE_P(SliceRows, SlicedBatchTest,
                         ::testing::Values(Slicing{64, false}, Slicing{80, false}, Slicing{128, true}),
                         [](const ::testing::TestParamInfo<Slicing>& info) {
                           const std::string rows = std::to_string(info.param.rows);
                           return info.param.rows <= kCudaGemvMaxRows ? "GemvSlicesOf" + rows
                                  : info.param.fp8_gemm             ? "Fp8GemmSlicesOf" + rows
                                                                    : "CublasLtSlicesOf" + rows;
                         });

// A batch of several slices whose kernels store no logits (argmax / logsumexp, up to 4 token logits
// per row) runs in wide slices, carved out of the logits workspace: 936 rows in slices of 128, 256
// and 552 where the workspace holds 128 rows of logits. With fp8 activations the narrow slicing's
// first slice (40 rows) would run the GEMV on fp16 activations instead of E4M3 ones, so the
// comparison below also shows that the wide slices ran. A call that stores logits in that
// workspace (top-k) comes first, so the wide slices' buffers start out holding its logits (their
// padding columns must be cleared); a row that overflows in the last slice fails the call, and the
// next call is exact.
TEST(CudaBackendTest, StatisticsOnlyBatchesInWideSlicesMatchTheCpuBackend) {
  const int64_t vocab = 4096, hidden = 250, rows = 936, workspace_rows = 128;  // 250: padding columns
  const uint64_t seed = FreshSeed();
  SCOPED_TRACE(::testing::Message() << "seed " << seed);
  const HeadWeights head = Fp8Head(vocab, hidden, seed);
  auto cpu = NewCpuBackend(head, {}, 4);
  ASSERT_TRUE(cpu.ok());
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> x(rows * hidden);
  for (float& v : x) v = normal(rng);
  auto tol = [](double a, double b = 0) { return kAbsTolerance + kRelTolerance * (std::fabs(a) + std::fabs(b)); };
  for (ActivationPrecision precision : {ActivationPrecision::kBf16, ActivationPrecision::kFp8}) {
    SCOPED_TRACE(precision == ActivationPrecision::kBf16 ? "bf16 activations" : "fp8 activations");
    std::string skip;
    auto gpu = CudaOrSkip(head, {}, precision, &skip, workspace_rows * vocab * 4);
    if (gpu == nullptr) GTEST_SKIP() << "no CUDA backend here: " << skip;
    std::vector<RowOutput> got;
    ASSERT_TRUE(gpu->ComputeLogits({x.data(), rows, std::vector<RowSpec>(rows, RowSpec{5, {}, false})}, &got).ok());
    // Every slice runs an FP8 GEMM (more than kCudaGemvMaxRows rows).
    const std::vector<float> x_gpu = GpuEffectiveActivations(x, rows, hidden, precision, rows);
    const std::vector<uint32_t> ids = {static_cast<uint32_t>(vocab - 1), static_cast<uint32_t>(rng() % vocab)};
    for (const std::vector<uint32_t>& row_ids : {std::vector<uint32_t>{}, ids}) {
      SCOPED_TRACE(::testing::Message() << row_ids.size() << " token ids");
      const std::vector<RowSpec> specs(rows, RowSpec{0, row_ids, false});
      got.assign(rows, RowOutput{});
      for (auto& o : got) o.argmax_id = 0xdeadbeef, o.logsumexp = NAN;  // poisoned
      const absl::Status st = gpu->ComputeLogits({x.data(), rows, specs}, &got);
      ASSERT_TRUE(st.ok()) << st;
      std::vector<RowSpec> ref_specs = specs;
      for (RowSpec& spec : ref_specs) spec.top_k += 2;
      std::vector<RowOutput> want;
      ASSERT_TRUE((*cpu)->ComputeLogits({x_gpu.data(), rows, ref_specs}, &want).ok());
      ASSERT_EQ(got.size(), static_cast<size_t>(rows));
      for (int64_t r = 0; r < rows; ++r) {
        SCOPED_TRACE(::testing::Message() << "row " << r);
        ASSERT_NO_FATAL_FAILURE(ExpectMatchesReference(want[r], got[r], specs[r], vocab, tol));
      }
    }
    ASSERT_NO_FATAL_FAILURE(ExpectOverflowFailsAndNextCallIsExact(*gpu, **cpu, x, x_gpu, rows, hidden, 700, tol));
  }
}

}  // namespace
}  // namespace lmhead
