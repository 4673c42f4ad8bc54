#include "client/shard_merge.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <utility>

#include "absl/strings/str_cat.h"

namespace lmhead::client {
namespace {

constexpr double kNegInf = -std::numeric_limits<double>::infinity();

// log(sum(exp(v))) in double; -inf for an empty or all -inf input.
double LogSumExp(const std::vector<double>& v) {
  double m = kNegInf;
  for (double x : v) m = std::max(m, x);
  if (!std::isfinite(m)) return m;
  double s = 0.0;
  for (double x : v) s += std::exp(x - m);
  return m + std::log(s);
}

bool Better(float a_logit, uint32_t a_id, float b_logit, uint32_t b_id) {
  return a_logit > b_logit || (a_logit == b_logit && a_id < b_id);
}

}  // namespace

absl::StatusOr<LogitsResult> MergeShardResults(const std::vector<ShardRange>& ranges, const std::vector<LogitsResult>& parts,
                                               const OutputOptions& output, int64_t vocab) {
  if (parts.empty() || parts.size() != ranges.size()) return absl::InternalError("no shard results to merge");
  const size_t rows = parts[0].rows.size();
  for (size_t s = 0; s < parts.size(); ++s) {
    if (parts[s].rows.size() != rows) {
      return absl::InternalError(absl::StrCat("shard [", ranges[s].begin, ", ", ranges[s].end, ") answered ",
                                              parts[s].rows.size(), " rows, another ", rows));
    }
  }
  LogitsResult out;
  out.request_id = parts[0].request_id;
  for (const LogitsResult& p : parts) {
    out.queue_us = std::max(out.queue_us, p.queue_us);
    out.compute_us = std::max(out.compute_us, p.compute_us);
    out.batch_rows = std::max(out.batch_rows, p.batch_rows);
    out.wire_bytes += p.wire_bytes;
  }
  out.rows.resize(rows);
  for (size_t r = 0; r < rows; ++r) {
    RowResult& row = out.rows[r];
    std::vector<double> lses, norms;
    const RowResult* best = nullptr;
    const RowResult* winner = nullptr;
    for (const LogitsResult& p : parts) {
      const RowResult& shard = p.rows[r];
      lses.push_back(shard.logsumexp);
      norms.push_back(shard.logprob_logsumexp);  // -inf from a shard with no processed mass
      if (best == nullptr || Better(shard.max_logit, shard.argmax_id, best->max_logit, best->argmax_id)) best = &shard;
      if (shard.sampled_id &&
          (winner == nullptr || Better(shard.sampled_score, *shard.sampled_id, winner->sampled_score, *winner->sampled_id))) {
        winner = &shard;
      }
    }
    row.logsumexp = static_cast<float>(LogSumExp(lses));
    const double norm = LogSumExp(norms);
    row.logprob_logsumexp = static_cast<float>(norm);
    row.argmax_id = best->argmax_id;
    row.max_logit = best->max_logit;

    // Top-k: every shard sent its own best k; the global best k are among them.
    std::vector<std::pair<float, uint32_t>> candidates;
    for (size_t s = 0; s < parts.size(); ++s) {
      const RowResult& shard = parts[s].rows[r];
      for (size_t i = 0; i < shard.top_ids.size(); ++i) candidates.emplace_back(shard.top_logits[i], shard.top_ids[i]);
    }
    std::sort(candidates.begin(), candidates.end(),
              [](const auto& a, const auto& b) { return Better(a.first, a.second, b.first, b.second); });
    candidates.resize(std::min<size_t>(candidates.size(), output.top_k));
    for (const auto& [logit, id] : candidates) {
      row.top_ids.push_back(id);
      row.top_logits.push_back(logit);
      row.top_logprobs.push_back(static_cast<float>(logit - norm));
    }
    // Requested ids: from the shard that holds each.
    for (size_t j = 0; j < output.logprob_token_ids.size(); ++j) {
      const uint32_t id = output.logprob_token_ids[j];
      size_t s = 0;
      while (s < ranges.size() && !(id >= ranges[s].begin && id < ranges[s].end)) ++s;
      if (s == ranges.size()) return absl::InvalidArgumentError(absl::StrCat("token id ", id, " is in no shard"));
      const RowResult& shard = parts[s].rows[r];
      if (j >= shard.token_logprobs.size()) return absl::InternalError("a shard returned too few token logprobs");
      const double logit = norms[s] == kNegInf ? kNegInf : static_cast<double>(shard.token_logprobs[j]) + norms[s];
      row.token_logprobs.push_back(static_cast<float>(logit - norm));
    }
    if (winner != nullptr) {
      row.sampled_id = winner->sampled_id;
      row.sampled_score = winner->sampled_score;
      row.seed = winner->seed;
      row.sampled_logprob = static_cast<float>(static_cast<double>(winner->sampled_logprob) +
                                               winner->logprob_logsumexp - norm);
    }
  }
  if (output.return_logits) {
    out.logits.assign(rows * vocab, 0.0f);
    for (size_t s = 0; s < parts.size(); ++s) {
      const int64_t width = ranges[s].end - ranges[s].begin;
      if (static_cast<int64_t>(parts[s].logits.size()) != static_cast<int64_t>(rows) * width) {
        return absl::InternalError(absl::StrCat("shard [", ranges[s].begin, ", ", ranges[s].end,
                                                ") returned logits of the wrong size"));
      }
      for (size_t r = 0; r < rows; ++r) {
        std::copy(parts[s].logits.begin() + r * width, parts[s].logits.begin() + (r + 1) * width,
                  out.logits.begin() + r * vocab + ranges[s].begin);
      }
    }
  }
  return out;
}

}  // namespace lmhead::client
