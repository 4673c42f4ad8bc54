#include "kernels/cpu/cpu_backend.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <utility>

#include "absl/strings/str_cat.h"
#include "kernels/cpu/thread_pool.h"
#include "kernels/fp8.h"
#include "kernels/half.h"

namespace lmhead {
namespace {

using Candidate = std::pair<float, uint32_t>;  // (logit, token id)

// True when a ranks above b: higher logit, then lower id.
inline bool Better(const Candidate& a, const Candidate& b) {
  return a.first > b.first || (a.first == b.first && a.second < b.second);
}

// Fixed-order fp32 dot product (two 8-lane accumulators, then a scalar tail), so a given
// logit has the same value wherever it is computed.
float Dot(const float* a, const float* b, int64_t n) {
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
      sum_exp += std::exp(static_cast<double>(logit) - best.first);
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

class CpuBackend final : public Backend {
 public:
  CpuBackend(HeadWeights weights, LogitTransform transform, int threads)
      : w_(std::move(weights)), transform_(transform), pool_(threads) {}

  const char* Name() const override { return "cpu"; }
  int64_t vocab() const override { return w_.vocab; }
  int64_t hidden() const override { return w_.hidden; }
  int64_t ResidentWeightBytes() const override { return w_.ResidentBytes(); }

  absl::Status ComputeLogits(const LogitsBatch& batch, std::vector<RowOutput>* out) override;
  absl::StatusOr<HeadWeights> ExportWeights() const override { return w_; }

 private:
  // Writes row v's weights, without its scale, as fp32 into dst[hidden].
  void DecodeRow(int64_t v, float* dst) const {
    const int64_t h = w_.hidden;
    if (w_.format == WeightFormat::kFp8E4m3) {
      const auto& table = Fp8E4m3DecodeTable();
      const uint8_t* q = w_.data.data() + v * h;
      for (int64_t i = 0; i < h; ++i) dst[i] = table[q[i]];
    } else {
      const uint8_t* b = w_.data.data() + v * h * 2;
      for (int64_t i = 0; i < h; ++i) {
        dst[i] = Bf16ToFloat(static_cast<uint16_t>(b[2 * i] | (b[2 * i + 1] << 8)));
      }
    }
  }

  float Logit(float dot, int64_t v) const {
    float logit = w_.row_scales.empty() ? dot : dot * w_.row_scales[v];
    logit *= transform_.scale;
    if (transform_.softcap > 0.0f) logit = transform_.softcap * std::tanh(logit / transform_.softcap);
    return logit;
  }

  HeadWeights w_;
  LogitTransform transform_;
  ThreadPool pool_;
};

absl::Status CpuBackend::ComputeLogits(const LogitsBatch& batch, std::vector<RowOutput>* out) {
  const int64_t rows = batch.rows;
  const int64_t vocab = w_.vocab;
  const int64_t hidden = w_.hidden;
  if (rows <= 0 || batch.hidden == nullptr || static_cast<int64_t>(batch.specs.size()) != rows) {
    return absl::InvalidArgumentError(
        absl::StrCat("batch has ", rows, " rows and ", batch.specs.size(), " row specs"));
  }
  for (int64_t b = 0; b < rows; ++b) {
    const RowSpec& spec = batch.specs[b];
    if (spec.top_k > vocab) {
      return absl::InvalidArgumentError(absl::StrCat("row ", b, ": top_k ", spec.top_k,
                                                     " exceeds vocab size ", vocab));
    }
    for (uint32_t id : spec.token_ids) {
      if (id >= vocab) {
        return absl::InvalidArgumentError(
            absl::StrCat("row ", b, ": token id ", id, " >= vocab size ", vocab));
      }
    }
  }

  out->assign(rows, RowOutput{});
  for (int64_t b = 0; b < rows; ++b) {
    if (batch.specs[b].want_logits) (*out)[b].logits.resize(vocab);
  }

  // Each shard reduces a contiguous vocab range for every batch row.
  const int shards = static_cast<int>(std::min<int64_t>(pool_.threads(), vocab));
  std::vector<std::vector<RowReduction>> partial(shards, std::vector<RowReduction>(rows));
  pool_.ParallelFor(shards, [&](int s) {
    const int64_t begin = vocab * s / shards;
    const int64_t end = vocab * (s + 1) / shards;
    std::vector<float> row(hidden);
    std::vector<RowReduction>& red = partial[s];
    for (int64_t v = begin; v < end; ++v) {
      DecodeRow(v, row.data());
      for (int64_t b = 0; b < rows; ++b) {
        const float logit = Logit(Dot(batch.hidden + b * hidden, row.data(), hidden), v);
        red[b].Add(logit, static_cast<uint32_t>(v), batch.specs[b].top_k);
        if (batch.specs[b].want_logits) (*out)[b].logits[v] = logit;
      }
    }
  });

  std::vector<float> row(hidden);
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
    std::sort(candidates.begin(), candidates.end(), Better);
    candidates.resize(std::min<size_t>(candidates.size(), spec.top_k));
    for (const Candidate& c : candidates) {
      o.top_ids.push_back(c.second);
      o.top_logits.push_back(c.first);
    }
    for (uint32_t id : spec.token_ids) {
      DecodeRow(id, row.data());
      o.token_logits.push_back(Logit(Dot(batch.hidden + b * hidden, row.data(), hidden), id));
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<Backend>> NewCpuBackend(HeadWeights weights,
                                                       LogitTransform transform, int threads) {
  if (threads < 1) return absl::InvalidArgumentError("cpu backend needs at least one thread");
  if (weights.vocab <= 0 || weights.hidden <= 0) {
    return absl::InvalidArgumentError("head has an empty shape");
  }
  const int64_t elem = weights.format == WeightFormat::kFp8E4m3 ? 1 : 2;
  if (static_cast<int64_t>(weights.data.size()) != weights.vocab * weights.hidden * elem ||
      (weights.format == WeightFormat::kFp8E4m3 &&
       static_cast<int64_t>(weights.row_scales.size()) != weights.vocab)) {
    return absl::InvalidArgumentError("head weights do not match their shape");
  }
  return std::unique_ptr<Backend>(new CpuBackend(std::move(weights), transform, threads));
}

}  // namespace lmhead
