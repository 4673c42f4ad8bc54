// lmhead: command-line client.
//   lmhead info                         model shape, formats, memory saved
//   lmhead health                       exit 0 when SERVING
//   lmhead logits [--npy=F | --rows=N --seed=S] [--top_k=K --ids=a,b --dtype=bf16 --logits]
//   lmhead stream --steps=N [--rows=R --top_k=K]   N requests on one stream, in order
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "client/lmhead_client.h"
#include "client/npy.h"
#include "client/cli/client_flags.h"
#include "client/random_hidden.h"
#include "client/sampling_text.h"

ABSL_FLAG(std::string, target, "127.0.0.1:50051", "Server address host:port");
ABSL_FLAG(std::string, npy, "", "logits: hidden states from a .npy file ([hidden] or [rows, hidden])");
ABSL_FLAG(int, rows, 1, "Rows of seeded random hidden states (when --npy is not given)");
ABSL_FLAG(uint64_t, seed, 0, "Seed of the random hidden states");
ABSL_FLAG(double, scale, 1.0, "Standard deviation of the random hidden states");
ABSL_FLAG(std::string, dtype, "bf16", "Wire dtype of the hidden states: fp32 | bf16 | fp16");
ABSL_FLAG(int, top_k, 5, "Top tokens to print per row");
ABSL_FLAG(std::string, ids, "", "Comma-separated token ids whose logprobs to print");
ABSL_FLAG(bool, logits, false, "Also fetch the full logits and print their size");
ABSL_FLAG(std::string, sample, "",
          "Sample a token per row with these settings, e.g. temperature=0.8,top_p=0.95,seed=7 "
          "(keys: temperature top_k top_p min_p seed step repetition_penalty presence_penalty "
          "frequency_penalty allowed banned bias previous; lists use '|', bias id:value)");
ABSL_FLAG(bool, processed_logprobs, false, "With --sample: print processed logprobs instead of raw ones");
ABSL_FLAG(int, steps, 8, "stream: number of decode steps");
ABSL_FLAG(absl::Duration, timeout, absl::Seconds(30), "Per-call deadline");

namespace {

using lmhead::client::HiddenStates;
using lmhead::client::LmHeadClient;
using lmhead::client::LogitsResult;
using lmhead::client::OutputOptions;

int Fail(const absl::Status& s) {
  std::fprintf(stderr, "error: %s\n", s.ToString().c_str());
  return 1;
}

absl::StatusOr<lmhead::DType> ParseDType(const std::string& text) {
  if (text == "fp32") return lmhead::DType::kFp32;
  if (text == "bf16") return lmhead::DType::kBf16;
  if (text == "fp16") return lmhead::DType::kFp16;
  return absl::InvalidArgumentError("--dtype must be fp32, bf16 or fp16");
}

absl::StatusOr<OutputOptions> Output() {
  OutputOptions out;
  if (absl::GetFlag(FLAGS_top_k) < 0) return absl::InvalidArgumentError("--top_k must be >= 0");
  out.top_k = static_cast<uint32_t>(absl::GetFlag(FLAGS_top_k));
  for (absl::string_view piece : absl::StrSplit(absl::GetFlag(FLAGS_ids), ',', absl::SkipEmpty())) {
    uint32_t id;
    if (!absl::SimpleAtoi(piece, &id)) return absl::InvalidArgumentError(absl::StrCat("bad token id '", piece, "'"));
    out.logprob_token_ids.push_back(id);
  }
  out.return_logits = absl::GetFlag(FLAGS_logits);
  if (!absl::GetFlag(FLAGS_sample).empty()) {
    auto sampling = lmhead::client::ParseSamplingText(absl::GetFlag(FLAGS_sample));
    if (!sampling.ok()) return sampling.status();
    out.sampling = *sampling;
    out.processed_logprobs = absl::GetFlag(FLAGS_processed_logprobs);
  }
  return out;
}

// Hidden states from --npy, or `rows` seeded Gaussian rows.
absl::StatusOr<HiddenStates> Hidden(int64_t hidden_size, int rows, uint64_t seed) {
  auto dtype = ParseDType(absl::GetFlag(FLAGS_dtype));
  if (!dtype.ok()) return dtype.status();
  if (!absl::GetFlag(FLAGS_npy).empty()) {
    auto m = lmhead::client::ReadNpy(absl::GetFlag(FLAGS_npy));
    if (!m.ok()) return m.status();
    if (m->cols != hidden_size) {
      return absl::InvalidArgumentError(absl::StrCat("the .npy rows have ", m->cols,
                                                     " values; the model's hidden_size is ", hidden_size));
    }
    return HiddenStates::FromFloats(m->values, m->rows, *dtype);
  }
  if (rows < 1) return absl::InvalidArgumentError("--rows must be >= 1");
  return lmhead::client::RandomHidden(rows, hidden_size, seed, static_cast<float>(absl::GetFlag(FLAGS_scale)), *dtype);
}

void PrintResult(const LogitsResult& r, const OutputOptions& out) {
  for (size_t i = 0; i < r.rows.size(); ++i) {
    const auto& row = r.rows[i];
    std::printf("row %zu: argmax=%u logsumexp=%.4f\n", i, row.argmax_id, row.logsumexp);
    if (row.sampled_id) {
      std::printf("  sampled token %u  logprob %.4f  (seed %llu)\n", *row.sampled_id, row.sampled_logprob,
                  static_cast<unsigned long long>(row.seed));
    }
    for (size_t k = 0; k < row.top_ids.size(); ++k) {
      std::printf("  #%-3zu token %-7u logit %9.4f  logprob %9.4f  p=%.4f\n", k + 1, row.top_ids[k],
                  row.top_logits[k], row.top_logprobs[k], std::exp(row.top_logprobs[k]));
    }
    for (size_t k = 0; k < row.token_logprobs.size(); ++k) {
      std::printf("  token %-7u logprob %9.4f\n", out.logprob_token_ids[k], row.token_logprobs[k]);
    }
  }
  if (!r.logits.empty()) std::printf("logits: %zu values\n", r.logits.size());
  std::printf("server: queue %lld us, compute %lld us, batch of %lld rows\n",
              static_cast<long long>(r.queue_us), static_cast<long long>(r.compute_us),
              static_cast<long long>(r.batch_rows));
}

int Info(LmHeadClient& client) {
  auto info = client.GetModelInfo();
  if (!info.ok()) return Fail(info.status());
  std::printf("model        %s (%s)\n", info->model_name.c_str(), info->model_path.c_str());
  std::printf("head         %s [%lld, %lld] from %s%s\n", info->weight_name.c_str(),
              static_cast<long long>(info->vocab_size), static_cast<long long>(info->hidden_size),
              info->source_dtype.c_str(), info->tied_embeddings ? " (tied embeddings)" : "");
  std::printf("format       %s %s on the %s backend\n", info->weight_format.c_str(),
              info->scale_mode.c_str(), info->backend.c_str());
  std::printf("resident     %.2f MiB (BF16 would be %.2f MiB; saved %.2f MiB, %.1f%%)\n",
              info->weight_bytes / 1048576.0, info->reference_bytes / 1048576.0,
              (info->reference_bytes - info->weight_bytes) / 1048576.0,
              100.0 * (info->reference_bytes - info->weight_bytes) / info->reference_bytes);
  std::printf("limits       %lld rows per request, top_k <= %lld\n",
              static_cast<long long>(info->max_rows_per_request), static_cast<long long>(info->max_top_k));
  if (!info->backend_tuning.empty()) std::printf("tuning       %s\n", info->backend_tuning.c_str());
  return 0;
}

int Logits(LmHeadClient& client) {
  auto info = client.GetModelInfo();
  if (!info.ok()) return Fail(info.status());
  auto out = Output();
  if (!out.ok()) return Fail(out.status());
  auto hidden = Hidden(info->hidden_size, absl::GetFlag(FLAGS_rows), absl::GetFlag(FLAGS_seed));
  if (!hidden.ok()) return Fail(hidden.status());
  const absl::Time start = absl::Now();
  auto result = client.ComputeLogits(*hidden, *out, "cli");
  if (!result.ok()) return Fail(result.status());
  PrintResult(*result, *out);
  std::printf("round trip %.3f ms\n", absl::ToDoubleMilliseconds(absl::Now() - start));
  return 0;
}

int Stream(LmHeadClient& client) {
  auto info = client.GetModelInfo();
  if (!info.ok()) return Fail(info.status());
  auto out = Output();
  if (!out.ok()) return Fail(out.status());
  const int steps = absl::GetFlag(FLAGS_steps);
  if (steps < 1) return Fail(absl::InvalidArgumentError("--steps must be >= 1"));
  auto stream = client.OpenStream();
  const absl::Time start = absl::Now();
  for (int step = 0; step < steps; ++step) {
    auto hidden = Hidden(info->hidden_size, absl::GetFlag(FLAGS_rows), absl::GetFlag(FLAGS_seed) + step);
    if (!hidden.ok()) return Fail(hidden.status());
    if (absl::Status s = stream->Send(*hidden, *out, absl::StrCat("step-", step)); !s.ok()) return Fail(s);
    auto r = stream->Receive();
    if (!r.ok()) return Fail(r.status());
    if (!r->error.ok()) return Fail(r->error);
    std::printf("%s: argmax %u", r->request_id.c_str(), r->rows[0].argmax_id);
    if (!r->rows[0].top_logprobs.empty()) std::printf(" (logprob %.4f)", r->rows[0].top_logprobs[0]);
    std::printf("\n");
  }
  if (absl::Status s = stream->Close(); !s.ok()) return Fail(s);
  const double ms = absl::ToDoubleMilliseconds(absl::Now() - start);
  std::printf("%d steps in %.2f ms (%.3f ms per step)\n", steps, ms, ms / steps);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage("lmhead info|health|logits|stream [--target=host:port] [flags]");
  std::vector<char*> args = absl::ParseCommandLine(argc, argv);
  if (args.size() != 2) {
    std::fprintf(stderr, "usage: lmhead info|health|logits|stream [flags]  (--help for flags)\n");
    return 2;
  }
  lmhead::client::ClientOptions base;
  base.timeout = absl::GetFlag(FLAGS_timeout);
  auto options = lmhead::client::SecureClientOptionsFromFlags(base);
  if (!options.ok()) return Fail(options.status());
  auto client = LmHeadClient::Connect(absl::GetFlag(FLAGS_target), *options);
  const std::string command = args[1];
  if (command == "info") return Info(*client);
  if (command == "logits") return Logits(*client);
  if (command == "stream") return Stream(*client);
  if (command == "health") {
    auto serving = client->IsServing();
    if (!serving.ok()) return Fail(serving.status());
    std::printf("%s\n", *serving ? "SERVING" : "NOT_SERVING");
    return *serving ? 0 : 1;
  }
  std::fprintf(stderr, "unknown command '%s'\n", command.c_str());
  return 2;
}
