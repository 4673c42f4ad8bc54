// Thread-safe accumulation of request outcomes for the load generator: latencies of successes,
// error counts by gRPC status code, rows; plus percentile summaries.
#ifndef LMHEAD_CLIENT_LOADGEN_LOAD_STATS_H_
#define LMHEAD_CLIENT_LOADGEN_LOAD_STATS_H_

#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"

namespace lmhead::client {

struct LoadSummary {
  double seconds = 0;
  int64_t ok = 0;
  int64_t rows = 0;
  std::map<std::string, int64_t> errors;  // status code name -> count
  double p50_ms = 0, p90_ms = 0, p99_ms = 0, max_ms = 0, mean_ms = 0;
  double mean_response_bytes = 0;  // serialized response size of the successes

  double requests_per_second() const { return seconds > 0 ? ok / seconds : 0; }
  double rows_per_second() const { return seconds > 0 ? rows / seconds : 0; }
  int64_t error_count() const;
  std::string Table() const;  // human-readable
  std::string Json() const;   // one JSON object
};

class LoadStats {
 public:
  // One finished request: its latency, rows and response size on success, its code otherwise.
  void Record(const absl::Status& status, absl::Duration latency, int64_t rows, int64_t response_bytes = 0);
  // Totals so far (for the progress line).
  void Totals(int64_t* ok, int64_t* errors, int64_t* rows) const;
  LoadSummary Summarize(absl::Duration elapsed) const;

 private:
  mutable std::mutex mu_;
  std::vector<double> latencies_ms_;  // guarded by mu_
  std::map<std::string, int64_t> errors_;  // guarded by mu_
  int64_t rows_ = 0;  // guarded by mu_
  int64_t response_bytes_ = 0;  // guarded by mu_
};

}  // namespace lmhead::client

#endif  // LMHEAD_CLIENT_LOADGEN_LOAD_STATS_H_
