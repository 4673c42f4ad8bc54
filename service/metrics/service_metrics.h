// Every Prometheus family lmhead exports, built once at startup with label sets resolved up
// front, so the request path only touches pre-resolved children. Thread-safe (prometheus-cpp
// metrics are atomic).
#ifndef LMHEAD_SERVICE_METRICS_SERVICE_METRICS_H_
#define LMHEAD_SERVICE_METRICS_SERVICE_METRICS_H_

#include <array>
#include <cstdint>
#include <string>

#include "prometheus/counter.h"
#include "prometheus/gauge.h"
#include "prometheus/histogram.h"
#include "prometheus/registry.h"

namespace lmhead {

enum class Rpc { kComputeLogits = 0, kStreamLogits = 1, kGetModelInfo = 2 };
// Why the batcher refused a request at Schedule.
enum class Rejection { kQueueFull = 0, kShuttingDown = 1, kUnauthenticated = 2 };
// Why accepted work was dropped before compute.
enum class Dropped { kDeadlineExceeded = 0, kCancelled = 1 };
inline constexpr int kNumRpcs = 3;
inline constexpr int kNumStatusCodes = 17;  // grpc::StatusCode 0..16

// Facts about the served head, set once when it is loaded.
struct ModelFacts {
  std::string weight_format;  // "fp8_e4m3" | "bf16"
  int64_t weight_bytes = 0;
  int64_t reference_bytes = 0;
  int64_t vocab = 0;
  int64_t hidden = 0;
  double load_seconds = 0.0;
};

class ServiceMetrics {
 public:
  // Registers every family in `registry`, which must outlive this object.
  explicit ServiceMetrics(prometheus::Registry& registry);

  // Call once, after the head is loaded.
  void SetModel(const ModelFacts& facts);
  void SetReady(bool ready) { ready_.Set(ready ? 1 : 0); }

  // One finished request (a unary call or one stream message). code: a grpc::StatusCode value.
  void RecordRequest(Rpc rpc, int code, double seconds, int64_t rows);
  // One backend batch.
  void RecordBatch(double compute_seconds, int64_t rows);
  // Time a task waited in the queue before its batch started.
  void RecordQueueWait(double seconds) { queue_wait_.Observe(seconds); }
  void RecordRejection(Rejection r) { rejections_[static_cast<int>(r)]->Increment(); }
  void RecordDropped(Dropped d) { (d == Dropped::kCancelled ? cancelled_ : deadline_exceeded_).Increment(); }

  // Device memory of the backend's GPU (used by all processes, and total), and the backend's own
  // working memory beyond the weights.
  void SetDeviceMemory(int64_t used, int64_t total, int64_t workspace);

  prometheus::Gauge& inflight_requests() { return inflight_; }
  prometheus::Gauge& queued_rows() { return queued_rows_; }
  prometheus::Gauge& queue_capacity_rows() { return queue_capacity_rows_; }
  prometheus::Gauge& open_streams() { return open_streams_; }

 private:
  prometheus::Family<prometheus::Gauge>& weight_bytes_family_;
  prometheus::Gauge& reference_bytes_;
  prometheus::Gauge& saved_bytes_;
  prometheus::Gauge& vocab_size_;
  prometheus::Gauge& hidden_size_;
  prometheus::Gauge& load_seconds_;
  prometheus::Gauge& ready_;
  prometheus::Gauge& inflight_;
  prometheus::Gauge& queued_rows_;
  prometheus::Gauge& queue_capacity_rows_;
  prometheus::Gauge& open_streams_;
  prometheus::Gauge& gpu_used_;
  prometheus::Gauge& gpu_total_;
  prometheus::Gauge& workspace_;
  std::array<std::array<prometheus::Counter*, kNumStatusCodes>, kNumRpcs> requests_{};
  std::array<prometheus::Counter*, kNumRpcs> rows_{};
  std::array<prometheus::Histogram*, kNumRpcs> request_seconds_{};
  prometheus::Histogram& compute_seconds_;
  prometheus::Histogram& batch_rows_;
  prometheus::Histogram& queue_wait_;
  std::array<prometheus::Counter*, 3> rejections_{};
  prometheus::Counter& deadline_exceeded_;
  prometheus::Counter& cancelled_;
};

}  // namespace lmhead

#endif  // LMHEAD_SERVICE_METRICS_SERVICE_METRICS_H_
