#include "service/metrics/service_metrics.h"

namespace lmhead {
namespace {

constexpr const char* kRpcNames[kNumRpcs] = {"ComputeLogits", "StreamLogits", "GetModelInfo"};
constexpr const char* kCodeNames[kNumStatusCodes] = {
    "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
    "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED",
    "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED"};

// 50 µs .. ~13 s, doubling.
prometheus::Histogram::BucketBoundaries LatencyBuckets() {
  prometheus::Histogram::BucketBoundaries b;
  for (double v = 50e-6; v < 15.0; v *= 2) b.push_back(v);
  return b;
}

prometheus::Histogram::BucketBoundaries RowBuckets() {
  return {1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048};
}

prometheus::Gauge& SimpleGauge(prometheus::Registry& r, const std::string& name,
                               const std::string& help) {
  return prometheus::BuildGauge().Name(name).Help(help).Register(r).Add({});
}

}  // namespace

ServiceMetrics::ServiceMetrics(prometheus::Registry& r)
    : weight_bytes_family_(prometheus::BuildGauge()
                               .Name("lmhead_weight_bytes")
                               .Help("Bytes of the served head resident in backend memory (weights + scales)")
                               .Register(r)),
      reference_bytes_(SimpleGauge(r, "lmhead_weight_reference_bytes",
                                   "Bytes the same head takes in BF16")),
      saved_bytes_(SimpleGauge(r, "lmhead_weight_saved_bytes",
                               "BF16 reference bytes minus resident bytes")),
      vocab_size_(SimpleGauge(r, "lmhead_vocab_size", "Rows of the served head")),
      hidden_size_(SimpleGauge(r, "lmhead_hidden_size", "Columns of the served head")),
      load_seconds_(SimpleGauge(r, "lmhead_model_load_seconds",
                                "Seconds taken to read and quantize the head")),
      ready_(SimpleGauge(r, "lmhead_ready", "1 when the head is loaded and serving")),
      inflight_(SimpleGauge(r, "lmhead_inflight_requests",
                            "Requests (unary calls and stream messages) being processed")),
      queued_rows_(SimpleGauge(r, "lmhead_queued_rows", "Rows waiting for a batch")),
      queue_capacity_rows_(SimpleGauge(r, "lmhead_queue_capacity_rows",
                                       "Most rows the queue holds before refusing work (RESOURCE_EXHAUSTED)")),
      open_streams_(SimpleGauge(r, "lmhead_open_streams", "Open StreamLogits streams")),
      gpu_used_(SimpleGauge(r, "lmhead_gpu_memory_used_bytes",
                            "Memory in use on the backend's GPU, all processes (0 without a GPU)")),
      gpu_total_(SimpleGauge(r, "lmhead_gpu_memory_total_bytes", "Memory of the backend's GPU (0 without a GPU)")),
      workspace_(SimpleGauge(r, "lmhead_backend_workspace_bytes",
                             "Working memory the backend holds beyond the weights")),
      compute_seconds_(prometheus::BuildHistogram()
                           .Name("lmhead_compute_duration_seconds")
                           .Help("Backend time per batch")
                           .Register(r)
                           .Add({}, LatencyBuckets())),
      batch_rows_(prometheus::BuildHistogram()
                      .Name("lmhead_batch_rows")
                      .Help("Rows per backend batch")
                      .Register(r)
                      .Add({}, RowBuckets())),
      queue_wait_(prometheus::BuildHistogram()
                      .Name("lmhead_queue_wait_seconds")
                      .Help("Time a request's rows waited in the queue before compute")
                      .Register(r)
                      .Add({}, LatencyBuckets())),
      deadline_exceeded_(prometheus::BuildCounter()
                             .Name("lmhead_deadline_exceeded_total")
                             .Help("Accepted requests dropped before compute because their deadline passed")
                             .Register(r)
                             .Add({})),
      cancelled_(prometheus::BuildCounter()
                     .Name("lmhead_cancelled_total")
                     .Help("Accepted requests dropped before compute because their call was cancelled")
                     .Register(r)
                     .Add({})) {
  auto& rejected = prometheus::BuildCounter()
                       .Name("lmhead_rejected_requests_total")
                       .Help("Requests refused at admission, by reason")
                       .Register(r);
  rejections_[static_cast<int>(Rejection::kQueueFull)] = &rejected.Add({{"reason", "queue_full"}});
  rejections_[static_cast<int>(Rejection::kShuttingDown)] = &rejected.Add({{"reason", "shutting_down"}});
  rejections_[static_cast<int>(Rejection::kUnauthenticated)] = &rejected.Add({{"reason", "unauthenticated"}});
  auto& requests = prometheus::BuildCounter()
                       .Name("lmhead_requests_total")
                       .Help("Finished requests (unary calls and stream messages) by rpc and status code")
                       .Register(r);
  auto& rows = prometheus::BuildCounter()
                   .Name("lmhead_rows_total")
                   .Help("Hidden-state rows computed, by rpc")
                   .Register(r);
  auto& latency = prometheus::BuildHistogram()
                      .Name("lmhead_request_duration_seconds")
                      .Help("Time from receiving a request to its response, by rpc")
                      .Register(r);
  for (int rpc = 0; rpc < kNumRpcs; ++rpc) {
    for (int code = 0; code < kNumStatusCodes; ++code) {
      requests_[rpc][code] = &requests.Add({{"rpc", kRpcNames[rpc]}, {"code", kCodeNames[code]}});
    }
    rows_[rpc] = &rows.Add({{"rpc", kRpcNames[rpc]}});
    request_seconds_[rpc] = &latency.Add({{"rpc", kRpcNames[rpc]}}, LatencyBuckets());
  }
}

void ServiceMetrics::SetModel(const ModelFacts& facts) {
  weight_bytes_family_.Add({{"format", facts.weight_format}}).Set(static_cast<double>(facts.weight_bytes));
  reference_bytes_.Set(static_cast<double>(facts.reference_bytes));
  saved_bytes_.Set(static_cast<double>(facts.reference_bytes - facts.weight_bytes));
  vocab_size_.Set(static_cast<double>(facts.vocab));
  hidden_size_.Set(static_cast<double>(facts.hidden));
  load_seconds_.Set(facts.load_seconds);
}

void ServiceMetrics::SetDeviceMemory(int64_t used, int64_t total, int64_t workspace) {
  gpu_used_.Set(static_cast<double>(used));
  gpu_total_.Set(static_cast<double>(total));
  workspace_.Set(static_cast<double>(workspace));
}

void ServiceMetrics::RecordRequest(Rpc rpc, int code, double seconds, int64_t rows) {
  const int r = static_cast<int>(rpc);
  if (code < 0 || code >= kNumStatusCodes) code = 2;  // UNKNOWN
  requests_[r][code]->Increment();
  request_seconds_[r]->Observe(seconds);
  if (code == 0 && rows > 0) rows_[r]->Increment(static_cast<double>(rows));
}

void ServiceMetrics::RecordBatch(double compute_seconds, int64_t rows) {
  compute_seconds_.Observe(compute_seconds);
  batch_rows_.Observe(static_cast<double>(rows));
}

}  // namespace lmhead
