#include "client/loadgen/load_stats.h"

#include <algorithm>
#include <numeric>

#include "absl/strings/str_format.h"
#include "nlohmann/json.hpp"

namespace lmhead::client {

int64_t LoadSummary::error_count() const {
  int64_t n = 0;
  for (const auto& [code, count] : errors) n += count;
  return n;
}

std::string LoadSummary::Table() const {
  std::string out = absl::StrFormat(
      "duration      %.2f s\nrequests      %d ok, %d errors\nrequests/s    %.1f\nrows/s        %.1f\n"
      "latency (ms)  p50 %.3f  p90 %.3f  p99 %.3f  max %.3f  mean %.3f\nresponse      %.0f bytes (mean)\n",
      seconds, ok, error_count(), requests_per_second(), rows_per_second(), p50_ms, p90_ms, p99_ms, max_ms, mean_ms,
      mean_response_bytes);
  for (const auto& [code, count] : errors) out += absl::StrFormat("errors        %s: %d\n", code, count);
  return out;
}

std::string LoadSummary::Json() const {
  nlohmann::json j = {{"seconds", seconds},       {"ok", ok},
                      {"rows", rows},             {"requests_per_second", requests_per_second()},
                      {"rows_per_second", rows_per_second()},
                      {"latency_ms", {{"p50", p50_ms}, {"p90", p90_ms}, {"p99", p99_ms}, {"max", max_ms}, {"mean", mean_ms}}},
                      {"mean_response_bytes", mean_response_bytes},
                      {"errors", errors}};
  return j.dump();
}

void LoadStats::Record(const absl::Status& status, absl::Duration latency, int64_t rows, int64_t response_bytes) {
  std::lock_guard<std::mutex> lock(mu_);
  if (status.ok()) {
    latencies_ms_.push_back(absl::ToDoubleMilliseconds(latency));
    rows_ += rows;
    response_bytes_ += response_bytes;
  } else {
    ++errors_[absl::StatusCodeToString(status.code())];
  }
}

void LoadStats::Totals(int64_t* ok, int64_t* errors, int64_t* rows) const {
  std::lock_guard<std::mutex> lock(mu_);
  *ok = static_cast<int64_t>(latencies_ms_.size());
  *errors = 0;
  for (const auto& [code, count] : errors_) *errors += count;
  *rows = rows_;
}

LoadSummary LoadStats::Summarize(absl::Duration elapsed) const {
  std::lock_guard<std::mutex> lock(mu_);
  LoadSummary s;
  s.seconds = absl::ToDoubleSeconds(elapsed);
  s.ok = static_cast<int64_t>(latencies_ms_.size());
  s.rows = rows_;
  s.errors = errors_;
  if (!latencies_ms_.empty()) {
    std::vector<double> v = latencies_ms_;
    std::sort(v.begin(), v.end());
    auto at = [&](double q) { return v[std::min(v.size() - 1, static_cast<size_t>(q * v.size()))]; };
    s.p50_ms = at(0.50);
    s.p90_ms = at(0.90);
    s.p99_ms = at(0.99);
    s.max_ms = v.back();
    s.mean_ms = std::accumulate(v.begin(), v.end(), 0.0) / v.size();
    s.mean_response_bytes = static_cast<double>(response_bytes_) / v.size();
  }
  return s;
}

}  // namespace lmhead::client
