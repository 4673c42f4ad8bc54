// lmhead-decoder-sim: a decoder-stack stand-in. S sequences each step at a given rate: send the
// step's hidden state (derived from the sequence's previous token, so runs are reproducible) on
// the sequence's stream, read back the greedy token, feed it into the next step. When the server
// goes away, a sequence reconnects with backoff and carries on. Reports progress every 5 s and a
// summary at the end (--duration; 0 runs until killed).
#include <atomic>
#include <cstdio>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/hash/hash.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "client/lmhead_client.h"
#include "client/cli/client_flags.h"
#include "client/sampling_text.h"
#include "client/sharded_client.h"
#include "client/random_hidden.h"

ABSL_FLAG(std::string, target, "127.0.0.1:50051", "Server address host:port");
ABSL_FLAG(std::string, shards, "",
          "A vocab-sharded head instead of --target: shards separated by ';', replicas by ','");
ABSL_FLAG(int, sequences, 8, "Concurrent sequences (one stream each)");
ABSL_FLAG(double, steps_per_second, 20, "Decode steps per second per sequence (0: as fast as possible)");
ABSL_FLAG(absl::Duration, duration, absl::ZeroDuration(), "Run time; 0 runs until killed");
ABSL_FLAG(uint64_t, seed, 7, "Seed of the hidden states");
ABSL_FLAG(int, top_k, 5, "top_k asked per step");
ABSL_FLAG(std::string, sample, "",
          "Sample each step's token with these settings (e.g. temperature=0.8,top_p=0.95); the seed is "
          "per sequence and the step is the decode position. Empty: greedy (argmax)");

namespace {

using namespace lmhead::client;  // NOLINT: a tool's main

struct Counters {
  std::atomic<int64_t> steps{0};
  std::atomic<int64_t> errors{0};
  std::atomic<int64_t> reconnects{0};
};

// Runs one sequence until `stop`.
void Sequence(const std::string& target, const ClientOptions& options, int id, absl::Time stop, Counters& counters) {
  const double rate = absl::GetFlag(FLAGS_steps_per_second);
  OutputOptions output;
  output.top_k = static_cast<uint32_t>(absl::GetFlag(FLAGS_top_k));
  if (!absl::GetFlag(FLAGS_sample).empty()) {
    auto sampling = ParseSamplingText(absl::GetFlag(FLAGS_sample));  // checked in main
    output.sampling = *sampling;
    if (!output.sampling->seed) output.sampling->seed = absl::HashOf(absl::GetFlag(FLAGS_seed), id);
  }
  uint32_t token = 0;
  int64_t step = 0;
  absl::Duration backoff = absl::Milliseconds(100);
  while (absl::Now() < stop) {
    // One server, or the shards of a sharded head (then streams go to every shard and merge).
    std::unique_ptr<LmHeadClient> client;
    std::unique_ptr<ShardedClient> sharded;
    absl::StatusOr<ModelInfo> info;
    if (absl::GetFlag(FLAGS_shards).empty()) {
      client = LmHeadClient::Connect(target, options);
      info = client->GetModelInfo();
    } else if (auto c = ShardedClient::Connect(ParseShardList(absl::GetFlag(FLAGS_shards)), options); c.ok()) {
      sharded = std::move(*c);
      info = sharded->model_info();
    } else {
      info = c.status();
    }
    if (!info.ok()) {
      counters.errors++;
      absl::SleepFor(backoff);
      backoff = std::min(backoff * 2, absl::Seconds(1));
      continue;
    }
    auto stream = sharded ? sharded->OpenStream() : client->OpenStream();
    absl::Time next = absl::Now();
    while (absl::Now() < stop) {
      const uint64_t seed = absl::HashOf(absl::GetFlag(FLAGS_seed), id, token, step);
      if (output.sampling) output.sampling->step = static_cast<uint64_t>(step);
      absl::Status sent = stream->Send(RandomHidden(1, info->hidden_size, seed, 1.0f, lmhead::DType::kBf16), output,
                                       std::to_string(step));
      absl::StatusOr<LogitsResult> r = sent.ok() ? stream->Receive() : absl::StatusOr<LogitsResult>(sent);
      if (!r.ok()) break;  // transport failure: reconnect
      if (!r->error.ok() || r->rows.empty()) {
        counters.errors++;
      } else {
        token = r->rows[0].sampled_id.value_or(r->rows[0].argmax_id);
        ++step;
        counters.steps++;
        backoff = absl::Milliseconds(100);
      }
      if (rate > 0) {
        next += absl::Seconds(1.0 / rate);
        if (next > absl::Now()) absl::SleepFor(next - absl::Now());
      }
    }
    if (absl::Now() >= stop) {
      stream->Close().IgnoreError();
      return;
    }
    counters.reconnects++;
    std::fprintf(stderr, "sequence %d: stream lost at step %lld; reconnecting\n", id, static_cast<long long>(step));
    absl::SleepFor(backoff);
    backoff = std::min(backoff * 2, absl::Seconds(1));
  }
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage("lmhead-decoder-sim [--target=host:port --sequences=S --steps_per_second=R ...]");
  absl::ParseCommandLine(argc, argv);
  const int sequences = absl::GetFlag(FLAGS_sequences);
  if (sequences < 1 || absl::GetFlag(FLAGS_steps_per_second) < 0 || absl::GetFlag(FLAGS_top_k) < 0) {
    std::fprintf(stderr, "--sequences must be >= 1; --steps_per_second and --top_k >= 0\n");
    return 2;
  }
  if (auto sampling = ParseSamplingText(absl::GetFlag(FLAGS_sample)); !sampling.ok()) {
    std::fprintf(stderr, "--sample: %s\n", sampling.status().ToString().c_str());
    return 2;
  }
  auto client_options = SecureClientOptionsFromFlags();
  if (!client_options.ok()) {
    std::fprintf(stderr, "%s\n", client_options.status().ToString().c_str());
    return 2;
  }
  const absl::Duration duration = absl::GetFlag(FLAGS_duration);
  const absl::Time start = absl::Now();
  const absl::Time stop = duration > absl::ZeroDuration() ? start + duration : absl::InfiniteFuture();
  Counters counters;
  std::vector<std::thread> threads;
  for (int i = 0; i < sequences; ++i) {
    threads.emplace_back([&, i] { Sequence(absl::GetFlag(FLAGS_target), *client_options, i, stop, counters); });
  }
  std::atomic<bool> done{false};
  std::thread reporter([&] {
    while (!done) {
      for (int i = 0; i < 50 && !done; ++i) absl::SleepFor(absl::Milliseconds(100));
      if (done) break;
      const double t = absl::ToDoubleSeconds(absl::Now() - start);
      std::fprintf(stderr, "t=%.0fs steps=%lld (%.1f tokens/s) errors=%lld reconnects=%lld\n", t,
                   static_cast<long long>(counters.steps.load()), counters.steps.load() / t,
                   static_cast<long long>(counters.errors.load()), static_cast<long long>(counters.reconnects.load()));
    }
  });
  for (auto& t : threads) t.join();
  done = true;
  reporter.join();
  const double t = absl::ToDoubleSeconds(absl::Now() - start);
  std::printf("sequences=%d steps=%lld tokens_per_second=%.1f errors=%lld reconnects=%lld\n", sequences,
              static_cast<long long>(counters.steps.load()), counters.steps.load() / t,
              static_cast<long long>(counters.errors.load()), static_cast<long long>(counters.reconnects.load()));
  return counters.steps.load() > 0 ? 0 : 1;
}
