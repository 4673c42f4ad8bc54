// lmhead-cpu-bench: the CPU backend alone (FP8 per-row head) at B = 1, 4, 16, 64 against its
// memory floor (FP8 weight bytes over the read bandwidth measured in the same run), its compute
// floor (B x V x H fp32 FMAs over the FMA rate measured in the same run), and an fp32 GEMV/GEMM
// through OpenBLAS on the same shape (which reads 4 bytes per weight).
//
//   lmhead-cpu-bench [--shapes=32000x4096,128256x4096] [--batches=1,4,16,64] [--out=FILE.md]
//                    [--kernel=best|avx512|avx2|portable]
#include <cblas.h>
#include <sys/utsname.h>
#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "kernels/cpu/cpu_backend.h"
#include "kernels/fp8.h"

namespace {

using Clock = std::chrono::steady_clock;

double Ms(Clock::time_point a, Clock::time_point b) { return std::chrono::duration<double, std::milli>(b - a).count(); }

template <typename Fn>
double MedianMs(Fn fn, double budget_ms = 1500) {
  fn();  // warm-up
  std::vector<double> t;
  const auto start = Clock::now();
  while (t.size() < 3 || (Ms(start, Clock::now()) < budget_ms && t.size() < 50)) {
    const auto a = Clock::now();
    fn();
    t.push_back(Ms(a, Clock::now()));
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

// Read bandwidth with every hardware thread summing its share of a 1 GiB buffer (best of 5).
double ReadBandwidth() {
  const size_t n = (size_t{1} << 30) / sizeof(uint64_t);
  std::vector<uint64_t> buf(n, 1);
  const int threads = std::max(1u, std::thread::hardware_concurrency());
  double best = 0;
  for (int rep = 0; rep < 5; ++rep) {
    std::vector<uint64_t> sums(threads);
    const auto a = Clock::now();
    std::vector<std::thread> pool;
    for (int t = 0; t < threads; ++t) {
      pool.emplace_back([&, t] {
        uint64_t s = 0;
        for (size_t i = n * t / threads; i < n * (t + 1) / threads; ++i) s += buf[i];
        sums[t] = s;
      });
    }
    for (auto& th : pool) th.join();
    const double sec = Ms(a, Clock::now()) / 1e3;
    if (sums[0] == 0) std::printf("impossible\n");
    best = std::max(best, n * sizeof(uint64_t) / sec);
  }
  return best;
}

#if defined(__x86_64__)
// One thread running independent FMA chains, 256- or 512-bit wide (12 chains for AVX2, whose 16
// registers must also hold the two constants; 16 for AVX-512): enough to cover the FMA latency.
constexpr int kChains256 = 12, kChains512 = 16;
__attribute__((target("avx2,fma"))) float FmaChains256(int64_t iters) {
  __m256 a[kChains256];
  for (int i = 0; i < kChains256; ++i) a[i] = _mm256_set1_ps(i * 1e-3f);
  const __m256 m = _mm256_set1_ps(0.999f), c = _mm256_set1_ps(1e-4f);
  for (int64_t it = 0; it < iters; ++it) {
    for (int i = 0; i < kChains256; ++i) a[i] = _mm256_fmadd_ps(a[i], m, c);
  }
  for (int i = 1; i < kChains256; ++i) a[0] = _mm256_add_ps(a[0], a[i]);
  return _mm256_cvtss_f32(a[0]);
}
__attribute__((target("avx512f"))) float FmaChains512(int64_t iters) {
  __m512 a[kChains512];
  for (int i = 0; i < kChains512; ++i) a[i] = _mm512_set1_ps(i * 1e-3f);
  const __m512 m = _mm512_set1_ps(0.999f), c = _mm512_set1_ps(1e-4f);
  for (int64_t it = 0; it < iters; ++it) {
    for (int i = 0; i < kChains512; ++i) a[i] = _mm512_fmadd_ps(a[i], m, c);
  }
  for (int i = 1; i < kChains512; ++i) a[0] = _mm512_add_ps(a[0], a[i]);
  alignas(64) float lanes[16];
  _mm512_store_ps(lanes, a[0]);
  return lanes[0];
}

// FMA rate of every hardware thread together (fp32 FMAs per second); 0 if the ISA is absent.
double FmaRate(int width) {
  __builtin_cpu_init();
  if (width == 512 ? !__builtin_cpu_supports("avx512f") : !(__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))) {
    return 0;
  }
  const int threads = std::max(1u, std::thread::hardware_concurrency());
  const int64_t iters = 20000000;
  std::vector<float> sink(threads);
  const auto a = Clock::now();
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t) {
    pool.emplace_back([&, t] { sink[t] = width == 512 ? FmaChains512(iters) : FmaChains256(iters); });
  }
  for (auto& th : pool) th.join();
  const double sec = Ms(a, Clock::now()) / 1e3;
  if (sink[0] == 12345.0f) std::printf("impossible\n");
  return double(iters) * (width == 512 ? kChains512 : kChains256) * (width / 32) * threads / sec;
}
#endif

std::vector<std::string> Split(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ',')) out.push_back(item);
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  std::string shapes = "32000x4096,128256x4096", batches = "1,4,16,64", out_path, kernel_name = "best";
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a.rfind("--shapes=", 0) == 0) shapes = a.substr(9);
    else if (a.rfind("--batches=", 0) == 0) batches = a.substr(10);
    else if (a.rfind("--out=", 0) == 0) out_path = a.substr(6);
    else if (a.rfind("--kernel=", 0) == 0) kernel_name = a.substr(9);
    else { std::fprintf(stderr, "unknown argument %s\n", a.c_str()); return 2; }
  }
  lmhead::CpuKernel kernel;
  if (kernel_name == "best") kernel = lmhead::CpuKernel::kBest;
  else if (kernel_name == "avx512") kernel = lmhead::CpuKernel::kAvx512;
  else if (kernel_name == "avx2") kernel = lmhead::CpuKernel::kAvx2;
  else if (kernel_name == "portable") kernel = lmhead::CpuKernel::kPortable;
  else { std::fprintf(stderr, "--kernel must be best, avx512, avx2 or portable\n"); return 2; }
  const int threads = std::max(1u, std::thread::hardware_concurrency());
  const double bw = ReadBandwidth();
#if defined(__x86_64__)
  const double fma256 = FmaRate(256), fma512 = FmaRate(512);
#else
  const double fma256 = 0, fma512 = 0;
#endif
  // The rate of the instructions the chosen kernel uses (the portable one is compiled for AVX2 where
  // the CPU has it).
  const double fma_rate = kernel == lmhead::CpuKernel::kAvx512 || (kernel == lmhead::CpuKernel::kBest && fma512 > 0)
                              ? fma512
                              : fma256;
  utsname u;
  uname(&u);
  std::ostringstream md;
  md << "# lmhead CPU backend benchmark\n\nMachine: " << u.machine << ", " << threads
     << " hardware threads; CPU kernel: " << kernel_name << ". Read bandwidth measured in this run: " << bw / 1e9
     << " GB/s; fp32 FMA rate of all threads (independent chains): " << fma256 / 1e9 << " G/s with "
     << "256-bit AVX2, " << fma512 / 1e9 << " G/s with 512-bit AVX-512 (0 = absent). "
     << "Times in ms (median). Floor = FP8 weight bytes / read bandwidth; compute floor = B x V x H FMAs / "
        "the FMA rate of the kernel's instructions (the backend multiplies fp32 activations by decoded fp32 "
        "weights). OpenBLAS = fp32 cblas_sgemv (B = 1) or cblas_sgemm on the same shape, reading 4 bytes per "
        "weight.\n\n"
     << "| shape | B | lmhead CPU (FP8 per-row) | floor | lmhead/floor | compute floor | lmhead/compute floor | "
        "OpenBLAS fp32 | OpenBLAS/floor |\n"
     << "|---|---|---|---|---|---|---|---|---|\n";
  std::printf("%s", md.str().c_str());
  for (const std::string& shape : Split(shapes)) {
    const int64_t vocab = std::stoll(shape.substr(0, shape.find('x')));
    const int64_t hidden = std::stoll(shape.substr(shape.find('x') + 1));
    // A synthetic FP8 head: Gaussian weights of std 0.02 quantized per row.
    lmhead::HeadWeights w;
    w.vocab = vocab;
    w.hidden = hidden;
    w.data.resize(vocab * hidden);
    w.row_scales.resize(vocab);
    std::vector<float> w32(vocab * hidden);
    std::mt19937 rng(1);
    std::normal_distribution<float> normal(0.0f, 0.02f);
    for (float& v : w32) v = normal(rng);
    for (int64_t r = 0; r < vocab; ++r) {
      float amax = 0;
      for (int64_t c = 0; c < hidden; ++c) amax = std::max(amax, std::fabs(w32[r * hidden + c]));
      w.row_scales[r] = lmhead::Fp8ScaleForAmax(amax);
      lmhead::QuantizeFp8(&w32[r * hidden], hidden, w.row_scales[r], &w.data[r * hidden]);
    }
    auto backend = lmhead::NewCpuBackend(std::move(w), {}, threads, kernel);
    if (!backend.ok()) {
      std::fprintf(stderr, "%s\n", backend.status().ToString().c_str());
      return 1;
    }
    const double floor_ms = vocab * hidden / bw * 1e3;
    for (const std::string& bs : Split(batches)) {
      const int64_t b = std::stoll(bs);
      std::vector<float> x(b * hidden), y(b * vocab);
      for (float& v : x) v = normal(rng) * 50;
      std::vector<lmhead::RowSpec> specs(b, lmhead::RowSpec{0, {}, false});
      std::vector<lmhead::RowOutput> out;
      const double t_lmhead = MedianMs([&] { (void)(*backend)->ComputeLogits({x.data(), b, specs}, &out); });
      const double t_blas = MedianMs([&] {
        if (b == 1) {
          cblas_sgemv(CblasRowMajor, CblasNoTrans, vocab, hidden, 1.0f, w32.data(), hidden, x.data(), 1, 0.0f, y.data(), 1);
        } else {
          cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, b, vocab, hidden, 1.0f, x.data(), hidden, w32.data(), hidden,
                      0.0f, y.data(), vocab);
        }
      });
      const double compute_ms = fma_rate > 0 ? double(b) * vocab * hidden / fma_rate * 1e3 : NAN;
      char row[256];
      std::snprintf(row, sizeof(row), "| %lldx%lld | %lld | %.2f | %.2f | %.2f | %.2f | %.2f | %.2f | %.2f |\n",
                    static_cast<long long>(vocab), static_cast<long long>(hidden), static_cast<long long>(b), t_lmhead,
                    floor_ms, t_lmhead / floor_ms, compute_ms, t_lmhead / compute_ms, t_blas, t_blas / floor_ms);
      std::printf("%s", row);
      std::fflush(stdout);
      md << row;
    }
  }
  if (!out_path.empty()) std::ofstream(out_path) << md.str();
  return 0;
}
