// lmhead-shard-check: checks a vocab-sharded head against one unsharded server on the same
// checkpoint and times the client-side merge.
//
//   lmhead-shard-check --whole=HOST:PORT --shards="HOST:PORT;HOST:PORT" [--batches=1,64,512 --requests=5
//                      --top_k=20 --tolerance=1e-3]
//
// For each batch size: random hidden states (fresh per request) go to both; argmax and top-k ids
// must be equal wherever the unsharded logits separate them by more than the tolerance, and
// logprobs must agree within the tolerance; seeded samples (temperature 0.8) are counted equal or
// not (on a GPU a shard's GEMM may round differently from the whole head's, which can flip a draw
// whose two best perturbed scores are that close). Then the merge alone (MergeShardResults on the
// shards' own answers) is timed. Prints a markdown table; exits 1 on a mismatch.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "client/lmhead_client.h"
#include "client/sharded_client.h"

ABSL_FLAG(std::string, whole, "127.0.0.1:50051", "The unsharded server");
ABSL_FLAG(std::string, shards, "", "The shards: ';' between shards, ',' between a shard's replicas");
ABSL_FLAG(std::string, batches, "1,64,512", "Rows per request");
ABSL_FLAG(int, requests, 5, "Requests per batch size");
ABSL_FLAG(int, top_k, 20, "top_k asked");
ABSL_FLAG(double, tolerance, 1e-3, "Logprob tolerance and the logit gap that makes ids comparable");

using namespace lmhead::client;  // NOLINT: a tool's main

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage("lmhead-shard-check --whole=HOST:PORT --shards=A;B [--batches=1,64,512]");
  absl::ParseCommandLine(argc, argv);
  const double tol = absl::GetFlag(FLAGS_tolerance);
  auto whole = LmHeadClient::Connect(absl::GetFlag(FLAGS_whole));
  const auto shard_list = ParseShardList(absl::GetFlag(FLAGS_shards));
  auto sharded = ShardedClient::Connect(shard_list);
  auto info = whole->GetModelInfo();
  if (!sharded.ok() || !info.ok()) {
    std::fprintf(stderr, "cannot connect: %s %s\n", sharded.status().ToString().c_str(), info.status().ToString().c_str());
    return 1;
  }
  std::vector<std::unique_ptr<LmHeadClient>> direct;
  for (const auto& shard : shard_list) direct.push_back(LmHeadClient::Connect(shard.front()));
  std::vector<ShardRange> ranges;
  for (auto& d : direct) {
    auto i = d->GetModelInfo();
    if (!i.ok()) return std::fprintf(stderr, "%s\n", i.status().ToString().c_str()), 1;
    ranges.push_back({i->vocab_begin, i->vocab_end});
  }
  std::printf("| B | rows compared | argmax equal (separated) | top-%d ids equal (separated ranks) | max logprob diff | "
              "seeded samples equal | merge ms (client) |\n|---|---|---|---|---|---|---|\n",
              absl::GetFlag(FLAGS_top_k));
  std::mt19937_64 rng(7);
  bool ok = true;
  for (absl::string_view b : absl::StrSplit(absl::GetFlag(FLAGS_batches), ',')) {
    int rows = 0;
    if (!absl::SimpleAtoi(b, &rows) || rows < 1) return std::fprintf(stderr, "bad --batches\n"), 2;
    int64_t compared = 0, argmax_sep = 0, argmax_eq = 0, ranks_sep = 0, ranks_eq = 0, samples_sep = 0, samples_eq = 0;
    double max_diff = 0, merge_ms = 0;
    for (int q = 0; q < absl::GetFlag(FLAGS_requests); ++q) {
      std::normal_distribution<float> normal(0, 1);
      std::vector<float> x(static_cast<size_t>(rows) * info->hidden_size);
      for (float& v : x) v = normal(rng);
      const HiddenStates h = HiddenStates::FromFloats(x, rows, lmhead::DType::kBf16);
      OutputOptions out;
      out.top_k = static_cast<uint32_t>(absl::GetFlag(FLAGS_top_k));
      out.sampling = SamplingOptions{};
      out.sampling->temperature = 0.8f;
      out.sampling->seed = 1000 + q;
      OutputOptions ref_out = out;
      ref_out.top_k = out.top_k + 1;  // one more rank: the gap after the last one is known
      auto want = whole->ComputeLogits(h, ref_out);
      auto got = (*sharded)->ComputeLogits(h, out);
      if (!want.ok() || !got.ok()) {
        std::fprintf(stderr, "request failed: %s %s\n", want.status().ToString().c_str(), got.status().ToString().c_str());
        return 1;
      }
      for (int r = 0; r < rows; ++r) {
        const RowResult& w = want->rows[r];
        const RowResult& g = got->rows[r];
        ++compared;
        if (w.top_logits.size() >= 2 && w.top_logits[0] - w.top_logits[1] > 2 * tol) {
          ++argmax_sep;
          argmax_eq += g.argmax_id == w.argmax_id;
        }
        for (size_t k = 0; k < g.top_ids.size(); ++k) {
          const bool sep = (k == 0 || w.top_logits[k - 1] - w.top_logits[k] > 2 * tol) &&
                           w.top_logits[k] - w.top_logits[k + 1] > 2 * tol;
          if (sep) {
            ++ranks_sep;
            ranks_eq += g.top_ids[k] == w.top_ids[k];
          }
          max_diff = std::max(max_diff, static_cast<double>(std::fabs(g.top_logprobs[k] - w.top_logprobs[k])));
        }
        max_diff = std::max(max_diff, static_cast<double>(std::fabs(g.logsumexp - w.logsumexp)));
        ++samples_sep;
        samples_eq += g.sampled_id == w.sampled_id;
      }
      // The merge alone, on the shards' own answers.
      std::vector<LogitsResult> parts;
      for (auto& d : direct) parts.push_back(*d->ComputeLogits(h, out));
      const auto t0 = std::chrono::steady_clock::now();
      constexpr int kReps = 20;
      for (int i = 0; i < kReps; ++i) (void)MergeShardResults(ranges, parts, out, info->vocab_size);
      merge_ms += std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count() / kReps;
    }
    ok = ok && argmax_eq == argmax_sep && ranks_eq == ranks_sep && max_diff <= tol;
    std::printf("| %d | %lld | %lld/%lld | %lld/%lld | %.2g | %lld/%lld | %.3f |\n", rows, static_cast<long long>(compared),
                static_cast<long long>(argmax_eq), static_cast<long long>(argmax_sep), static_cast<long long>(ranks_eq),
                static_cast<long long>(ranks_sep), max_diff, static_cast<long long>(samples_eq),
                static_cast<long long>(samples_sep), merge_ms / absl::GetFlag(FLAGS_requests));
  }
  return ok ? 0 : 1;
}
