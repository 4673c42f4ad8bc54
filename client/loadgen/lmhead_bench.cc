// lmhead-bench: load generator. N concurrent streams (or unary callers) send requests of R rows,
// closed loop (each waits for its answer) or at a target total rate (open loop: latency counted
// from each request's scheduled send time), for a duration or a count. A progress line every
// second; a final table (rows/s, requests/s, latency percentiles, errors by code) or --json.
#include <atomic>
#include <cstdio>
#include <deque>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "client/lmhead_client.h"
#include "client/cli/client_flags.h"
#include "client/sampling_text.h"
#include "client/sharded_client.h"
#include "client/loadgen/load_stats.h"
#include "client/random_hidden.h"

ABSL_FLAG(std::string, target, "127.0.0.1:50051", "Server address host:port");
ABSL_FLAG(std::string, shards, "",
          "A vocab-sharded head instead of --target: shards separated by ';', a shard's replicas by ',' "
          "(e.g. 127.0.0.1:50051;127.0.0.1:50052)");
ABSL_FLAG(std::string, mode, "stream", "stream (StreamLogits sessions) | unary (ComputeLogits calls)");
ABSL_FLAG(int, concurrency, 16, "Concurrent streams or unary callers");
ABSL_FLAG(int, rows, 1, "Hidden-state rows per request");
ABSL_FLAG(absl::Duration, duration, absl::Seconds(10), "How long to send (ignored when --count > 0)");
ABSL_FLAG(int64_t, count, 0, "Total requests to send (0: run for --duration)");
ABSL_FLAG(double, rate, 0, "Target total requests/s (0: closed loop, as fast as answers come)");
ABSL_FLAG(int, top_k, 0, "top_k per row");
ABSL_FLAG(bool, logits, false, "Ask for full logits");
ABSL_FLAG(std::string, sample, "",
          "Ask for a sampled token per row with these settings (e.g. temperature=0.8,top_p=0.95,top_k=50; "
          "see `lmhead --help`)");
ABSL_FLAG(std::string, dtype, "bf16", "Wire dtype of hidden states: fp32 | bf16 | fp16");
ABSL_FLAG(uint64_t, seed, 1, "Seed of the hidden states");
ABSL_FLAG(absl::Duration, timeout, absl::Seconds(30), "Per-request deadline (unary)");
ABSL_FLAG(bool, json, false, "Print the summary as one JSON object instead of a table");
ABSL_FLAG(bool, progress, true, "Print a progress line to stderr every second");

namespace {

using namespace lmhead::client;  // NOLINT: a tool's main

struct Plan {
  ClientOptions client;                // connection options (deadline, TLS, token)
  std::vector<HiddenStates> payloads;  // cycled through
  OutputOptions output;
  int64_t rows = 1;
  double per_worker_rate = 0;  // requests/s per worker; 0 = closed loop
  absl::Time start, stop;
  int64_t count = 0;  // 0 = until stop
};

// Claims the next request slot; false when the run is over.
bool Claim(const Plan& plan, std::atomic<int64_t>& issued) {
  if (plan.count > 0) return issued.fetch_add(1) < plan.count;
  return absl::Now() < plan.stop;
}

// When the i-th request of a paced worker should be sent.
absl::Time Scheduled(const Plan& plan, int64_t i) {
  return plan.start + absl::Seconds(static_cast<double>(i) / plan.per_worker_rate);
}

absl::Status StatusOf(const absl::StatusOr<LogitsResult>& r) { return r.ok() ? r->error : r.status(); }
int64_t BytesOf(const absl::StatusOr<LogitsResult>& r) { return r.ok() ? r->wire_bytes : 0; }

// One server, or a sharded head behind ShardedClient: the two calls the workers make.
struct Endpoint {
  std::function<absl::StatusOr<LogitsResult>(const HiddenStates&, const OutputOptions&)> compute;
  std::function<std::unique_ptr<StreamSession>()> open_stream;
};

Endpoint Connect(const std::string& target, const Plan& plan) {
  const std::string shards = absl::GetFlag(FLAGS_shards);
  if (shards.empty()) {
    std::shared_ptr<LmHeadClient> client = LmHeadClient::Connect(target, plan.client);
    return {[client](const HiddenStates& h, const OutputOptions& o) { return client->ComputeLogits(h, o); },
            [client] { return client->OpenStream(); }};
  }
  auto sharded = ShardedClient::Connect(ParseShardList(shards), plan.client);
  if (!sharded.ok()) {
    const absl::Status error = sharded.status();
    return {[error](const HiddenStates&, const OutputOptions&) { return absl::StatusOr<LogitsResult>(error); },
            nullptr};
  }
  std::shared_ptr<ShardedClient> client = std::move(*sharded);
  return {[client](const HiddenStates& h, const OutputOptions& o) { return client->ComputeLogits(h, o); },
          [client] { return client->OpenStream(); }};
}

void UnaryWorker(const std::string& target, const Plan& plan, int w, std::atomic<int64_t>& issued, LoadStats& stats) {
  Endpoint client = Connect(target, plan);
  for (int64_t i = 0; Claim(plan, issued); ++i) {
    absl::Time sent = absl::Now();
    if (plan.per_worker_rate > 0) {
      sent = Scheduled(plan, i);
      if (sent > absl::Now()) absl::SleepFor(sent - absl::Now());
    }
    auto r = client.compute(plan.payloads[(w + i) % plan.payloads.size()], plan.output);
    stats.Record(StatusOf(r), absl::Now() - sent, plan.rows, BytesOf(r));
  }
}

void StreamWorker(const std::string& target, const Plan& plan, int w, std::atomic<int64_t>& issued, LoadStats& stats) {
  Endpoint client = Connect(target, plan);
  if (!client.open_stream) {
    stats.Record(client.compute({}, {}).status(), absl::ZeroDuration(), 0);
    return;
  }
  auto stream = client.open_stream();
  if (plan.per_worker_rate <= 0) {  // closed loop: one message in flight
    for (int64_t i = 0; Claim(plan, issued); ++i) {
      const absl::Time sent = absl::Now();
      absl::Status s = stream->Send(plan.payloads[(w + i) % plan.payloads.size()], plan.output, "");
      absl::StatusOr<LogitsResult> r = s.ok() ? stream->Receive() : absl::StatusOr<LogitsResult>(s);
      stats.Record(StatusOf(r), absl::Now() - sent, plan.rows, BytesOf(r));
      if (!r.ok()) stream = client.open_stream();  // transport failure: start a new stream
    }
    stream->Close().IgnoreError();
    return;
  }
  // Open loop: a sender paced by the schedule, and this thread reading answers in order.
  std::mutex mu;
  std::deque<absl::Time> in_flight;  // scheduled send times, in order
  std::thread sender([&] {
    for (int64_t i = 0; Claim(plan, issued); ++i) {
      const absl::Time at = Scheduled(plan, i);
      if (at > absl::Now()) absl::SleepFor(at - absl::Now());
      {
        std::lock_guard<std::mutex> lock(mu);
        in_flight.push_back(at);
      }
      if (!stream->Send(plan.payloads[(w + i) % plan.payloads.size()], plan.output, "").ok()) {
        std::lock_guard<std::mutex> lock(mu);
        in_flight.pop_back();
        stats.Record(absl::UnavailableError("stream broken"), absl::ZeroDuration(), 0);
        break;
      }
    }
    stream->CloseSend().IgnoreError();  // Receive ends once the last answer is in
  });
  while (true) {
    auto r = stream->Receive();
    if (!r.ok()) break;  // all answered (OUT_OF_RANGE) or the stream broke
    absl::Time at;
    {
      std::lock_guard<std::mutex> lock(mu);
      if (in_flight.empty()) continue;
      at = in_flight.front();
      in_flight.pop_front();
    }
    stats.Record(StatusOf(r), absl::Now() - at, plan.rows, BytesOf(r));
  }
  sender.join();
  stream->Close().IgnoreError();
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage("lmhead-bench [--target=host:port --mode=stream|unary --concurrency=N --rows=R ...]");
  absl::ParseCommandLine(argc, argv);
  const std::string target = absl::GetFlag(FLAGS_target);
  const std::string mode = absl::GetFlag(FLAGS_mode);
  const int concurrency = absl::GetFlag(FLAGS_concurrency);
  const std::string dtype_name = absl::GetFlag(FLAGS_dtype);
  if (mode != "stream" && mode != "unary") return std::fprintf(stderr, "--mode must be stream or unary\n"), 2;
  if (concurrency < 1 || absl::GetFlag(FLAGS_rows) < 1 || absl::GetFlag(FLAGS_rate) < 0 ||
      absl::GetFlag(FLAGS_count) < 0 || absl::GetFlag(FLAGS_top_k) < 0) {
    return std::fprintf(stderr, "--concurrency and --rows must be >= 1; --rate, --count, --top_k >= 0\n"), 2;
  }
  lmhead::DType dtype;
  if (dtype_name == "fp32") dtype = lmhead::DType::kFp32;
  else if (dtype_name == "bf16") dtype = lmhead::DType::kBf16;
  else if (dtype_name == "fp16") dtype = lmhead::DType::kFp16;
  else return std::fprintf(stderr, "--dtype must be fp32, bf16 or fp16\n"), 2;

  ClientOptions base;
  base.timeout = absl::GetFlag(FLAGS_timeout);
  auto client_options = SecureClientOptionsFromFlags(base);
  if (!client_options.ok()) return std::fprintf(stderr, "%s\n", client_options.status().ToString().c_str()), 2;
  absl::StatusOr<ModelInfo> info;
  if (absl::GetFlag(FLAGS_shards).empty()) {
    info = LmHeadClient::Connect(target, *client_options)->GetModelInfo();
  } else if (auto sharded = ShardedClient::Connect(ParseShardList(absl::GetFlag(FLAGS_shards)), *client_options);
             sharded.ok()) {
    info = (*sharded)->model_info();
  } else {
    info = sharded.status();
  }
  if (!info.ok()) return std::fprintf(stderr, "cannot reach %s: %s\n", target.c_str(), info.status().ToString().c_str()), 1;

  Plan plan;
  plan.client = *client_options;
  plan.rows = absl::GetFlag(FLAGS_rows);
  for (int i = 0; i < 16; ++i) {
    plan.payloads.push_back(RandomHidden(plan.rows, info->hidden_size, absl::GetFlag(FLAGS_seed) + i, 1.0f, dtype));
  }
  plan.output.top_k = static_cast<uint32_t>(absl::GetFlag(FLAGS_top_k));
  plan.output.return_logits = absl::GetFlag(FLAGS_logits);
  if (!absl::GetFlag(FLAGS_sample).empty()) {
    auto sampling = ParseSamplingText(absl::GetFlag(FLAGS_sample));
    if (!sampling.ok()) return std::fprintf(stderr, "%s\n", sampling.status().ToString().c_str()), 2;
    plan.output.sampling = *sampling;
  }
  plan.per_worker_rate = absl::GetFlag(FLAGS_rate) / concurrency;
  plan.count = absl::GetFlag(FLAGS_count);
  plan.start = absl::Now();
  plan.stop = plan.start + absl::GetFlag(FLAGS_duration);

  LoadStats stats;
  std::atomic<int64_t> issued{0};
  std::atomic<bool> finished{false};
  std::thread progress([&] {
    while (!finished) {
      absl::SleepFor(absl::Seconds(1));
      if (finished || !absl::GetFlag(FLAGS_progress)) continue;
      int64_t ok, errors, rows;
      stats.Totals(&ok, &errors, &rows);
      const double t = absl::ToDoubleSeconds(absl::Now() - plan.start);
      std::fprintf(stderr, "t=%5.1fs  ok=%lld  errors=%lld  %.0f req/s  %.0f rows/s\n", t, static_cast<long long>(ok),
                   static_cast<long long>(errors), ok / t, rows / t);
    }
  });
  std::vector<std::thread> workers;
  for (int w = 0; w < concurrency; ++w) {
    workers.emplace_back([&, w] {
      if (mode == "unary") UnaryWorker(target, plan, w, issued, stats);
      else StreamWorker(target, plan, w, issued, stats);
    });
  }
  for (auto& t : workers) t.join();
  const LoadSummary summary = stats.Summarize(absl::Now() - plan.start);
  finished = true;
  progress.join();
  if (absl::GetFlag(FLAGS_json)) {
    std::printf("%s\n", summary.Json().c_str());
  } else {
    std::printf("%s %s x%d, %d rows per request%s\n%s", target.c_str(), mode.c_str(), concurrency, absl::GetFlag(FLAGS_rows),
                plan.per_worker_rate > 0 ? " (open loop)" : " (closed loop)", summary.Table().c_str());
  }
  return summary.ok > 0 ? 0 : 1;
}
