#include "kernels/cpu/cpu_backend.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#if defined(__x86_64__)
#include <immintrin.h>
#endif
#include <limits>
#include <utility>

#include "absl/strings/str_cat.h"
#include "kernels/cpu/row_sampling.h"
#include "kernels/cpu/thread_pool.h"
#include "kernels/fp8.h"
#include "kernels/half.h"
#include "kernels/status_macros.h"

namespace lmhead {
namespace {

using Candidate = std::pair<float, uint32_t>;  // (logit, token id)

// True when a ranks above b: higher logit, then lower id.
inline bool Better(const Candidate& a, const Candidate& b) {
  return a.first > b.first || (a.first == b.first && a.second < b.second);
}

// Fixed-order fp32 dot product (two 8-lane accumulators, then a scalar tail), so a given
// logit has the same value wherever it is computed. Cloned for AVX2 (same operations in the same
// order, so the same bits; no FMA contraction in ISO C++ mode).
__attribute__((target_clones("avx2", "default"))) float Dot(const float* a, const float* b, int64_t n) {
  typedef float V8 __attribute__((vector_size(32)));
  V8 acc0 = {}, acc1 = {};
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    V8 a0, a1, b0, b1;
    std::memcpy(&a0, a + i, 32);
    std::memcpy(&a1, a + i + 8, 32);
    std::memcpy(&b0, b + i, 32);
    std::memcpy(&b1, b + i + 8, 32);
    acc0 += a0 * b0;
    acc1 += a1 * b1;
  }
  const V8 acc = acc0 + acc1;
  float sum = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
  for (; i < n; ++i) sum += a[i] * b[i];
  return sum;
}

// Running reduction of one batch row over part of the vocabulary.
struct RowReduction {
  Candidate best{-std::numeric_limits<float>::infinity(), 0};
  double sum_exp = 0.0;  // sum of exp(logit - best.first)
  std::vector<Candidate> heap;  // up to k candidates; front is the worst (heap under Better)

  void Add(float logit, uint32_t id, uint32_t k) {
    const Candidate c{logit, id};
    if (logit > best.first) {
      sum_exp = sum_exp * std::exp(static_cast<double>(best.first) - logit) + 1.0;
      best = c;
    } else {
      sum_exp += std::exp(logit - best.first);  // float exp: 1 ulp per term, summed in double
      if (logit == best.first && id < best.second) best = c;
    }
    if (k == 0) return;
    if (heap.size() < k) {
      heap.push_back(c);
      std::push_heap(heap.begin(), heap.end(), Better);
    } else if (Better(c, heap.front())) {
      std::pop_heap(heap.begin(), heap.end(), Better);
      heap.back() = c;
      std::push_heap(heap.begin(), heap.end(), Better);
    }
  }
};

// E4M3 codes -> their values times 2^-8, exactly (the scale the AVX2 kernel below produces).
// Codes are never NaN here (checked at load).
void DecodeFp8Scaled(const uint8_t* q, int64_t n, float* dst) {
  constexpr float kScaled = 1.0f / 256.0f;
  const auto& table = Fp8E4m3DecodeTable();
  for (int64_t i = 0; i < n; ++i) dst[i] = table[q[i]] * kScaled;
}

#if defined(__x86_64__)
// out[b] = sum_i x[b][i] * decode(q[i]) * 2^-8 for NB (<= 6: 12 accumulators) batch rows. Decoding:
// the code's bits moved into an IEEE half (sign to bit 15, exponent and mantissa to bits 7..13)
// give value * 2^-8 for normals and subnormals alike (E4M3's bias 7 vs the half's 15). (x rows `stride` apart), FP8
// decoded in registers and FMA-accumulated: the weights are read once for all NB rows. Each
// row's sum has the same order whatever NB is, so a token's logit does not depend on its batch.
template <int NB>
__attribute__((target("avx2,fma,f16c"))) void Fp8DotsAvx2(const uint8_t* q, int64_t n, const float* x,
                                                         int64_t stride, float* out) {
  // Sign-extending the code to 16 bits and shifting left by 7 puts the exponent and mantissa at
  // bits 7..13 and, for negative codes, ones at bits 14 and 15; the mask keeps bit 15 only.
  const __m256i half_mask = _mm256_set1_epi16(static_cast<int16_t>(0xBF80));
  __m256 acc0[NB], acc1[NB];
  for (int b = 0; b < NB; ++b) acc0[b] = acc1[b] = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m256i codes = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(q + i)));
    const __m256i half = _mm256_and_si256(_mm256_slli_epi16(codes, 7), half_mask);
    const __m256 w0 = _mm256_cvtph_ps(_mm256_castsi256_si128(half));
    const __m256 w1 = _mm256_cvtph_ps(_mm256_extracti128_si256(half, 1));
    for (int b = 0; b < NB; ++b) {
      acc0[b] = _mm256_fmadd_ps(_mm256_loadu_ps(x + b * stride + i), w0, acc0[b]);
      acc1[b] = _mm256_fmadd_ps(_mm256_loadu_ps(x + b * stride + i + 8), w1, acc1[b]);
    }
  }
  for (int b = 0; b < NB; ++b) {
    alignas(32) float lanes[8];
    _mm256_store_ps(lanes, _mm256_add_ps(acc0[b], acc1[b]));
    float sum = ((lanes[0] + lanes[1]) + (lanes[2] + lanes[3])) + ((lanes[4] + lanes[5]) + (lanes[6] + lanes[7]));
    for (int64_t j = i; j < n; ++j) sum += x[b * stride + j] * (Fp8E4m3Decode(q[j]) * (1.0f / 256.0f));
    out[b] = sum;
  }
}

bool HasAvx2Fp8() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
}

// GCC 12 warns inside its own AVX-512 intrinsics (_mm512_undefined_* placeholders, GCC bug 105593).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

// AVX-512: 32 E4M3 codes -> their values times 2^-8 in two vectors (k 0..15, 16..31), by the same
// bit moves as the AVX2 kernel.
__attribute__((target("avx512f,avx512bw"))) inline void DecodeFp8x32(const uint8_t* q, __m512* lo, __m512* hi) {
  const __m512i codes = _mm512_cvtepi8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(q)));
  const __m512i half = _mm512_and_si512(_mm512_slli_epi16(codes, 7), _mm512_set1_epi16(static_cast<int16_t>(0xBF80)));
  *lo = _mm512_cvtph_ps(_mm512_castsi512_si256(half));
  *hi = _mm512_cvtph_ps(_mm512_extracti64x4_epi64(half, 1));
}

__attribute__((target("avx512f,avx512bw"))) inline __m512 DecodeFp8x16(const uint8_t* q) {
  const __m256i codes = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(q)));
  return _mm512_cvtph_ps(_mm256_and_si256(_mm256_slli_epi16(codes, 7), _mm256_set1_epi16(static_cast<int16_t>(0xBF80))));
}

// dots[m * dots_stride + b] = sum_i x[b][i] * decode(q[m][i]) * 2^-8 for MR consecutive head rows
// (q rows n apart) and NB batch rows (x rows `stride` apart): each decoded weight vector serves NB
// rows and each loaded activation vector MR rows, so the kernel is bound by its FMAs, not by
// decoding or loads. Every (m, b) sum has the same order whatever MR and NB are (lane j takes
// k = 32s + j, then 32s + 16 + j, s = 0, 1, ...; then one 16-wide step if 16 or more remain;
// then the lanes in a fixed tree and the last < 16 products one by one), so a logit does not
// depend on the batch or on where its row falls in a tile.
template <int MR, int NB>
__attribute__((target("avx512f,avx512bw"))) void Fp8TileAvx512(const uint8_t* q, int64_t n, const float* x,
                                                               int64_t stride, float* dots, int64_t dots_stride) {
  __m512 acc[MR][NB];
  for (int m = 0; m < MR; ++m) {
    for (int b = 0; b < NB; ++b) acc[m][b] = _mm512_setzero_ps();
  }
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    __m512 lo[MR], hi[MR];
    for (int m = 0; m < MR; ++m) DecodeFp8x32(q + m * n + i, &lo[m], &hi[m]);
    for (int b = 0; b < NB; ++b) {
      const __m512 xv = _mm512_loadu_ps(x + b * stride + i);
      for (int m = 0; m < MR; ++m) acc[m][b] = _mm512_fmadd_ps(xv, lo[m], acc[m][b]);
    }
    for (int b = 0; b < NB; ++b) {
      const __m512 xv = _mm512_loadu_ps(x + b * stride + i + 16);
      for (int m = 0; m < MR; ++m) acc[m][b] = _mm512_fmadd_ps(xv, hi[m], acc[m][b]);
    }
  }
  if (i + 16 <= n) {
    for (int m = 0; m < MR; ++m) {
      const __m512 w = DecodeFp8x16(q + m * n + i);
      for (int b = 0; b < NB; ++b) acc[m][b] = _mm512_fmadd_ps(_mm512_loadu_ps(x + b * stride + i), w, acc[m][b]);
    }
    i += 16;
  }
  for (int m = 0; m < MR; ++m) {
    for (int b = 0; b < NB; ++b) {
      alignas(64) float l[16];
      _mm512_store_ps(l, acc[m][b]);
      float sum = (((l[0] + l[1]) + (l[2] + l[3])) + ((l[4] + l[5]) + (l[6] + l[7]))) +
                  (((l[8] + l[9]) + (l[10] + l[11])) + ((l[12] + l[13]) + (l[14] + l[15])));
      for (int64_t j = i; j < n; ++j) sum += x[b * stride + j] * (Fp8E4m3Decode(q[m * n + j]) * (1.0f / 256.0f));
      dots[m * dots_stride + b] = sum;
    }
  }
}

using TileFn = void (*)(const uint8_t*, int64_t, const float*, int64_t, float*, int64_t);
template <int MR, int... NB>
constexpr std::array<TileFn, sizeof...(NB)> TilesFor(std::integer_sequence<int, NB...>) {
  return {&Fp8TileAvx512<MR, NB + 1>...};
}
template <int kBatch, int... MR>
constexpr std::array<std::array<TileFn, kBatch>, sizeof...(MR)> AllTiles(std::integer_sequence<int, MR...>) {
  return {TilesFor<MR + 1>(std::make_integer_sequence<int, kBatch>())...};
}

// Tile shapes (measured on the 2-core dev VM, 32000x4096): 4 head rows x 4 batch rows (16
// accumulators, 8 weight vectors) serve batches of 3 or more best (B = 16: 15.8 ms, against 17.1
// for 5 x 3, 21.9 for 3 x 6, 23.4 for 2 x 8); one or two rows go faster with 6 head rows per
// tile (more independent accumulators: B = 1 3.7 ms against 4.3 for 4 x 4). A tile's shape
// changes no sum (see Fp8TileAvx512), only which sums are formed together.
struct TileShape {
  int rows, batch;
};
constexpr TileShape kNarrowTile{6, 2}, kSquareTile{4, 4};
constexpr auto kNarrowTiles = AllTiles<kNarrowTile.batch>(std::make_integer_sequence<int, kNarrowTile.rows>());
constexpr auto kSquareTiles = AllTiles<kSquareTile.batch>(std::make_integer_sequence<int, kSquareTile.rows>());
constexpr TileShape TileFor(int64_t rows) { return rows <= kNarrowTile.batch ? kNarrowTile : kSquareTile; }

// dots[m * rows + b] for m < count <= TileFor(rows).rows head rows from q and every batch row.
__attribute__((target("avx512f,avx512bw"))) void Fp8DotsAvx512(const uint8_t* q, int count, int64_t n,
                                                               const float* x, int64_t rows, float* dots) {
  const TileShape shape = TileFor(rows);
  for (int64_t b = 0; b < rows; b += shape.batch) {
    const int nb = static_cast<int>(std::min<int64_t>(shape.batch, rows - b));
    const TileFn tile = shape.rows == kNarrowTile.rows ? kNarrowTiles[count - 1][nb - 1] : kSquareTiles[count - 1][nb - 1];
    tile(q, n, x + b * n, n, dots + b, rows);
  }
}

#pragma GCC diagnostic pop

bool HasAvx512Fp8() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw");
}
#endif

class CpuBackend final : public Backend {
 public:
  // kernel: kAvx512, kAvx2 or kPortable (resolved and checked by NewCpuBackend).
  CpuBackend(HeadWeights weights, LogitTransform transform, int threads, CpuKernel kernel)
      : w_(std::move(weights)), transform_(transform), pool_(threads),
        kernel_(w_.format == WeightFormat::kFp8E4m3 ? kernel : CpuKernel::kPortable) {}

  const char* Name() const override { return "cpu"; }
  int64_t vocab() const override { return w_.vocab; }
  int64_t hidden() const override { return w_.hidden; }
  int64_t ResidentWeightBytes() const override { return w_.ResidentBytes(); }

  absl::Status ComputeLogits(const LogitsBatch& batch, std::vector<RowOutput>* out) override;
  absl::StatusOr<HeadWeights> ExportWeights() const override { return w_; }
  std::string Tuning() const override {
    return absl::StrCat("dot products: ", CpuKernelName(kernel_), " kernel, ", pool_.threads(), " thread(s)");
  }

 private:
  // Token selection for the rows with a SamplingSpec, from their materialized logits.
  absl::Status SampleRows(const LogitsBatch& batch, std::vector<RowOutput>* out);

  // Writes row v's weights, without its scale, as fp32 into dst[hidden]; FP8 rows come out
  // times 2^-8 (see DecodeFp8Scaled), which Logit undoes exactly.
  void DecodeRow(int64_t v, float* dst) const {
    const int64_t h = w_.hidden;
    if (w_.format == WeightFormat::kFp8E4m3) {
      DecodeFp8Scaled(w_.data.data() + v * h, h, dst);
    } else {
      const uint8_t* b = w_.data.data() + v * h * 2;
      for (int64_t i = 0; i < h; ++i) {
        dst[i] = Bf16ToFloat(static_cast<uint16_t>(b[2 * i] | (b[2 * i + 1] << 8)));
      }
    }
  }

  // Head rows whose dot products RowDots forms together for a batch of `rows`.
  int VocabTile(int64_t rows) const {
#if defined(__x86_64__)
    if (kernel_ == CpuKernel::kAvx512) return TileFor(rows).rows;
#endif
    return 4;
  }

  // dots[m * rows + b] = x_b . (row v + m without its scale) for m < count <= VocabTile(rows) and rows
  // b of x ([rows, hidden]); `scratch` holds hidden floats. The one place dot products are formed,
  // so a logit is the same wherever it is computed (scan, token logits, full logits).
  void RowDots(int64_t v, int count, const float* x, int64_t rows, float* scratch, float* dots) const {
    const int64_t h = w_.hidden;
#if defined(__x86_64__)
    if (kernel_ == CpuKernel::kAvx512) {
      Fp8DotsAvx512(w_.data.data() + v * h, count, h, x, rows, dots);
      return;
    }
    if (kernel_ == CpuKernel::kAvx2) {
      for (int m = 0; m < count; ++m) {
        const uint8_t* q = w_.data.data() + (v + m) * h;
        float* out = dots + m * rows;
        int64_t b = 0;
        for (; b + 6 <= rows; b += 6) Fp8DotsAvx2<6>(q, h, x + b * h, h, out + b);
        if (b + 4 <= rows) Fp8DotsAvx2<4>(q, h, x + b * h, h, out + b), b += 4;
        if (b + 2 <= rows) Fp8DotsAvx2<2>(q, h, x + b * h, h, out + b), b += 2;
        if (b < rows) Fp8DotsAvx2<1>(q, h, x + b * h, h, out + b);
      }
      return;
    }
#endif
    for (int m = 0; m < count; ++m) {
      DecodeRow(v + m, scratch);
      for (int64_t b = 0; b < rows; ++b) dots[m * rows + b] = Dot(x + b * h, scratch, h);
    }
  }

  float Logit(float dot, int64_t v) const {
    // FP8: (dot * 2^-8) * (scale * 2^8) equals dot * scale (powers of two; products below fp32's
    // normal range aside).
    float logit = w_.row_scales.empty() ? dot : dot * (w_.row_scales[v] * 256.0f);
    logit *= transform_.scale;
    if (transform_.softcap > 0.0f) logit = transform_.softcap * std::tanh(logit / transform_.softcap);
    return logit;
  }

  HeadWeights w_;
  LogitTransform transform_;
  ThreadPool pool_;
  const CpuKernel kernel_;
};

absl::Status CpuBackend::ComputeLogits(const LogitsBatch& batch, std::vector<RowOutput>* out) {
  const int64_t rows = batch.rows;
  const int64_t vocab = w_.vocab;
  const int64_t hidden = w_.hidden;
  if (rows <= 0 || static_cast<int64_t>(batch.specs.size()) != rows) {
    return absl::InvalidArgumentError(
        absl::StrCat("batch has ", rows, " rows and ", batch.specs.size(), " row specs"));
  }
  if (batch.hidden == nullptr || batch.hidden_bf16 != nullptr || batch.hidden_half != nullptr) {
    return absl::InvalidArgumentError("the CPU backend takes fp32 rows only (LogitsBatch::hidden)");
  }
  for (int64_t b = 0; b < rows; ++b) {
    const RowSpec& spec = batch.specs[b];
    if (spec.top_k > vocab || (spec.sampling != nullptr && spec.sampling->top_k > vocab)) {
      return absl::InvalidArgumentError(absl::StrCat("row ", b, ": top_k exceeds vocab size ", vocab));
    }
    for (uint32_t id : spec.token_ids) {
      if (id >= vocab) {
        return absl::InvalidArgumentError(
            absl::StrCat("row ", b, ": token id ", id, " >= vocab size ", vocab));
      }
    }
  }

  // Rows that sample keep their logits for the selection pass (dropped after it).
  auto keeps_logits = [&](int64_t b) { return batch.specs[b].want_logits || batch.specs[b].sampling != nullptr; };
  out->assign(rows, RowOutput{});
  for (int64_t b = 0; b < rows; ++b) {
    if (keeps_logits(b)) (*out)[b].logits.resize(vocab);
  }

  // Each shard reduces a contiguous vocab range for every batch row.
  const int shards = static_cast<int>(std::min<int64_t>(pool_.threads(), vocab));
  std::vector<std::vector<RowReduction>> partial(shards, std::vector<RowReduction>(rows));
  pool_.ParallelFor(shards, [&](int s) {
    const int64_t begin = vocab * s / shards;
    const int64_t end = vocab * (s + 1) / shards;
    const int tile = VocabTile(rows);
    std::vector<float> scratch(hidden), dots(tile * rows);
    std::vector<RowReduction>& red = partial[s];
    for (int64_t v0 = begin; v0 < end; v0 += tile) {
      const int count = static_cast<int>(std::min<int64_t>(tile, end - v0));
      RowDots(v0, count, batch.hidden, rows, scratch.data(), dots.data());
      for (int m = 0; m < count; ++m) {
        const int64_t v = v0 + m;
        for (int64_t b = 0; b < rows; ++b) {
          const float logit = Logit(dots[m * rows + b], v);
          red[b].Add(logit, static_cast<uint32_t>(v), batch.specs[b].top_k);
          if (keeps_logits(b)) (*out)[b].logits[v] = logit;
        }
      }
    }
  });

  std::vector<float> scratch(hidden);
  for (int64_t b = 0; b < rows; ++b) {
    const RowSpec& spec = batch.specs[b];
    RowOutput& o = (*out)[b];
    Candidate best = partial[0][b].best;
    std::vector<Candidate> candidates;
    for (int s = 0; s < shards; ++s) {
      if (Better(partial[s][b].best, best)) best = partial[s][b].best;
      candidates.insert(candidates.end(), partial[s][b].heap.begin(), partial[s][b].heap.end());
    }
    double sum_exp = 0.0;
    for (int s = 0; s < shards; ++s) {
      sum_exp += partial[s][b].sum_exp * std::exp(static_cast<double>(partial[s][b].best.first) -
                                                  best.first);
    }
    const double lse = best.first + std::log(sum_exp);
    if (!std::isfinite(best.first) || !std::isfinite(lse)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "row ", b, ": logits are not finite (hidden-state magnitudes too large)"));
    }
    o.argmax_id = best.second;
    o.max_logit = best.first;
    o.logsumexp = static_cast<float>(lse);
    o.logprob_lse = o.logsumexp;
    std::sort(candidates.begin(), candidates.end(), Better);
    candidates.resize(std::min<size_t>(candidates.size(), spec.top_k));
    for (const Candidate& c : candidates) {
      o.top_ids.push_back(c.second);
      o.top_logits.push_back(c.first);
    }
    for (uint32_t id : spec.token_ids) {
      float dot;
      RowDots(id, 1, batch.hidden + b * hidden, 1, scratch.data(), &dot);
      o.token_logits.push_back(Logit(dot, id));
    }
  }
  return SampleRows(batch, out);
}

absl::Status CpuBackend::SampleRows(const LogitsBatch& batch, std::vector<RowOutput>* out) {
  std::vector<int64_t> sampled;
  for (int64_t b = 0; b < batch.rows; ++b) {
    if (batch.specs[b].sampling != nullptr) sampled.push_back(b);
  }
  std::vector<absl::Status> status(sampled.size());
  pool_.ParallelFor(static_cast<int>(sampled.size()), [&](int i) {
    const int64_t b = sampled[i];
    RowOutput& o = (*out)[b];
    status[i] = SampleRow(batch.specs[b], o.logits.data(), w_.vocab, &o);
    if (!status[i].ok()) status[i] = absl::InvalidArgumentError(absl::StrCat("row ", b, ": ", status[i].message()));
    if (!batch.specs[b].want_logits) std::vector<float>().swap(o.logits);
  });
  for (const absl::Status& s : status) RETURN_IF_ERROR(s);
  return absl::OkStatus();
}

}  // namespace

const char* CpuKernelName(CpuKernel kernel) {
  switch (kernel) {
    case CpuKernel::kAvx512:
      return "avx512";
    case CpuKernel::kAvx2:
      return "avx2";
    case CpuKernel::kPortable:
      return "portable";
    case CpuKernel::kBest:
      break;
  }
  return "best";
}

absl::StatusOr<std::unique_ptr<Backend>> NewCpuBackend(HeadWeights weights, LogitTransform transform, int threads,
                                                       CpuKernel kernel) {
  if (threads < 1) return absl::InvalidArgumentError("cpu backend needs at least one thread");
#if defined(__x86_64__)
  const bool avx512 = HasAvx512Fp8(), avx2 = HasAvx2Fp8();
#else
  const bool avx512 = false, avx2 = false;
#endif
  if ((kernel == CpuKernel::kAvx512 && !avx512) || (kernel == CpuKernel::kAvx2 && !avx2)) {
    return absl::FailedPreconditionError("this CPU lacks the instructions of the requested CPU kernel");
  }
  if (kernel == CpuKernel::kBest) kernel = avx512 ? CpuKernel::kAvx512 : avx2 ? CpuKernel::kAvx2 : CpuKernel::kPortable;
  if (weights.vocab <= 0 || weights.hidden <= 0) {
    return absl::InvalidArgumentError("head has an empty shape");
  }
  const int64_t elem = weights.format == WeightFormat::kFp8E4m3 ? 1 : 2;
  if (static_cast<int64_t>(weights.data.size()) != weights.vocab * weights.hidden * elem ||
      (weights.format == WeightFormat::kFp8E4m3 &&
       static_cast<int64_t>(weights.row_scales.size()) != weights.vocab)) {
    return absl::InvalidArgumentError("head weights do not match their shape");
  }
  return std::unique_ptr<Backend>(new CpuBackend(std::move(weights), transform, threads, kernel));
}

}  // namespace lmhead
