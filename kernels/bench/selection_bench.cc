// lmhead-selection-bench: what token selection costs on top of plain argmax, per backend.
// Builds a seeded head, then times Backend::ComputeLogits (median of --reps after warm-up) for
// B rows with: argmax only; argmax + top-20 logprobs; sampling T=0.8 top-p 0.95 over the whole
// vocabulary; sampling top-k 50 + top-p 0.9 with processed top-20 logprobs and penalties; and,
// for reference, full fp32 logits copied back. Prints a markdown table.
//
//   lmhead-selection-bench --backend=cpu|cuda [--vocab=V --hidden=H --batches=1,64,512 --reps=N
//                          --threads=T --cuda_module=PATH --hidden_scale=S]
// Hidden values are N(0, S^2) (S = 1 by default; 8 spreads the logits like a trained model's).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "kernels/backend_factory.h"
#include "kernels/half.h"

namespace {

using namespace lmhead;  // NOLINT: a tool's main

struct Args {
  std::string backend = "cpu";
  int64_t vocab = 32000, hidden = 4096;
  std::vector<int64_t> batches = {1, 64, 512};
  int reps = 5;
  int threads = 0;
  std::string cuda_module;
  float hidden_scale = 1.0f;
};

bool ParseArgs(int argc, char** argv, Args* a) {
  for (int i = 1; i < argc; ++i) {
    const std::string s = argv[i];
    auto value = [&](const char* key) -> const char* {
      const std::string prefix = std::string("--") + key + "=";
      return s.rfind(prefix, 0) == 0 ? argv[i] + prefix.size() : nullptr;
    };
    if (const char* v = value("backend")) a->backend = v;
    else if (const char* v = value("vocab")) a->vocab = std::atoll(v);
    else if (const char* v = value("hidden")) a->hidden = std::atoll(v);
    else if (const char* v = value("reps")) a->reps = std::atoi(v);
    else if (const char* v = value("threads")) a->threads = std::atoi(v);
    else if (const char* v = value("cuda_module")) a->cuda_module = v;
    else if (const char* v = value("hidden_scale")) a->hidden_scale = std::strtof(v, nullptr);
    else if (const char* v = value("batches")) {
      a->batches.clear();
      for (const char* p = v; *p != 0;) {
        a->batches.push_back(std::atoll(p));
        while (*p != 0 && *p != ',') ++p;
        if (*p == ',') ++p;
      }
    } else {
      std::fprintf(stderr, "unknown argument %s\n", argv[i]);
      return false;
    }
  }
  return (a->backend == "cpu" || a->backend == "cuda") && a->vocab > 0 && a->hidden > 0 && a->reps > 0 &&
         a->hidden_scale > 0.0f;
}

// Median milliseconds of each batch in `batches`, timed in interleaved rounds (one call of each per
// round, after one warm-up call each) so that drift hits every configuration alike. -1 on error.
std::vector<double> MedianMs(Backend& backend, const std::vector<float>& x,
                             const std::vector<std::vector<RowSpec>>& batches, int reps) {
  std::vector<RowOutput> out;
  std::vector<std::vector<double>> ms(batches.size());
  for (int round = -1; round < reps; ++round) {
    for (size_t c = 0; c < batches.size(); ++c) {
      const auto t0 = std::chrono::steady_clock::now();
      if (!backend.ComputeLogits({x.data(), static_cast<int64_t>(batches[c].size()), batches[c]}, &out).ok()) {
        return std::vector<double>(batches.size(), -1.0);
      }
      if (round >= 0) ms[c].push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
    }
  }
  std::vector<double> medians;
  for (auto& v : ms) {
    std::sort(v.begin(), v.end());
    medians.push_back(v[v.size() / 2]);
  }
  return medians;
}

}  // namespace

int main(int argc, char** argv) {
  Args a;
  if (!ParseArgs(argc, argv, &a)) {
    std::fprintf(stderr, "usage: lmhead-selection-bench --backend=cpu|cuda [--vocab=V --hidden=H --batches=1,64,512 "
                         "--reps=N --threads=T --cuda_module=PATH --hidden_scale=S]\n");
    return 2;
  }
  // A seeded BF16 head with row std ~0.02, quantized by the backend as the server does.
  std::vector<uint16_t> w(a.vocab * a.hidden);
  std::mt19937_64 rng(1);
  std::normal_distribution<float> normal(0.0f, 0.02f);
  for (uint16_t& v : w) v = FloatToBf16(normal(rng));
  HeadSource src;
  src.dtype = SourceDType::kBF16;
  src.rows = a.vocab;
  src.cols = a.hidden;
  src.data = reinterpret_cast<const uint8_t*>(w.data());
  BackendOptions options;
  options.kind = a.backend == "cuda" ? BackendKind::kCuda : BackendKind::kCpu;
  if (a.threads > 0) options.cpu_threads = a.threads;
  if (!a.cuda_module.empty()) options.cuda_module_path = a.cuda_module;
  auto backend = NewBackend(options, src, QuantizeOptions{});
  if (!backend.ok()) {
    std::fprintf(stderr, "backend: %s\n", std::string(backend.status().message()).c_str());
    return 1;
  }
  std::vector<uint16_t>().swap(w);  // the backend holds its own copy

  SamplingSpec nucleus;
  nucleus.temperature = 0.8f;
  nucleus.top_p = 0.95f;
  nucleus.seed = 7;
  SamplingSpec full;
  full.top_k = 50;
  full.top_p = 0.9f;
  full.seed = 7;
  full.repetition_penalty = 1.2f;
  full.presence_penalty = 0.3f;
  for (uint32_t id = 0; id < 64; ++id) full.previous_counts.push_back({id * 37 % a.vocab, 1 + id % 3});
  std::sort(full.previous_counts.begin(), full.previous_counts.end());
  full.previous_counts.erase(std::unique(full.previous_counts.begin(), full.previous_counts.end(),
                                         [](const auto& x, const auto& y) { return x.first == y.first; }),
                             full.previous_counts.end());

  std::printf("## Selection cost, %s backend, %lldx%lld head\n\n", (*backend)->Name(),
              static_cast<long long>(a.vocab), static_cast<long long>(a.hidden));
  std::printf("| B | argmax ms | + top-20 ms | sample T=0.8 top-p 0.95 ms | sample top-k 50 top-p 0.9 + penalties + "
              "processed top-20 ms | full fp32 logits ms | sampling overhead vs argmax |\n");
  std::printf("|---|---|---|---|---|---|---|\n");
  for (int64_t rows : a.batches) {
    std::vector<float> x(rows * a.hidden);
    std::normal_distribution<float> hs(0.0f, a.hidden_scale);
    for (float& v : x) v = hs(rng);
    auto specs_of = [&](RowSpec spec) { return std::vector<RowSpec>(rows, spec); };
    const std::vector<double> t = MedianMs(**backend, x,
                                           {specs_of(RowSpec{}), specs_of(RowSpec{20, {}, false}),
                                            specs_of(RowSpec{0, {}, false, &nucleus, false}),
                                            specs_of(RowSpec{20, {}, false, &full, true}), specs_of(RowSpec{0, {}, true})},
                                           a.reps);
    const double argmax = t[0], top20 = t[1], sample = t[2], sample_full = t[3], logits = t[4];
    std::printf("| %lld | %.3f | %.3f | %.3f | %.3f | %.3f | %+.1f%% / %+.1f%% |\n", static_cast<long long>(rows), argmax,
                top20, sample, sample_full, logits, 100.0 * (sample / argmax - 1), 100.0 * (sample_full / argmax - 1));
    std::fflush(stdout);
  }
  return 0;
}
