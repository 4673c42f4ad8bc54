// lmhead-gpu-bench: speed of the CUDA backend against cuBLASLt BF16, cuBLASLt FP8 with tensor-wise
// scales, and the seed's path (FP8 weights upcast to BF16, then a BF16 GEMM), with the byte floor
// (device-to-device copy bandwidth), a read floor (a read-only kernel over the weights) and the
// compute floor (FP8 GEMM rate) measured in the same run.
//
//   lmhead-gpu-bench [--shapes=128256x4096,131072x5120,152064x8192]
//                    [--batches=1,8,32,64,128,256,512,2048,8192] [--out=results.md]
//                    [--hidden_scale=1]   (hidden values uniform in [-2, 2] times this: 8 spreads
//                                          the logits like a trained model's, most far below the max)
//
// lmhead columns are end-to-end ComputeLogits calls (host fp32 rows in, host results out,
// synchronised), median of repeated calls; also the same call with lmhead's FP8 kernels off
// (cuBLASLt) and lmhead's FP8 kernel alone (the GEMV, or above its rows the FP8 GEMM). Baseline
// columns time the GEMM alone with CUDA events.
#include <cuda_bf16.h>
#include <cuda_fp8.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "kernels/cuda/cuda_backend.h"
#include "kernels/cuda/cuda_util.h"
#include "kernels/cuda/fp8_gemm.h"
#include "kernels/cuda/fp8_gemv.h"
#include "kernels/cuda/lt_gemm.h"
#include "kernels/fp8.h"
#include "kernels/half.h"
#include "kernels/half_rows.h"

namespace {

using lmhead::cuda::DeviceBuffer;
using lmhead::cuda::LtGemm;

#define CHECK_OK(expr)                                                          \
  do {                                                                          \
    absl::Status s_ = (expr);                                                   \
    if (!s_.ok()) {                                                             \
      std::fprintf(stderr, "%s:%d %s\n", __FILE__, __LINE__, s_.ToString().c_str()); \
      std::exit(1);                                                             \
    }                                                                           \
  } while (0)
#define CHECK_CUDA(expr) CHECK_OK(lmhead::cuda::CudaStatus((expr), #expr))

__global__ void UpcastKernel(const __nv_fp8_e4m3* q, const float* scales, int64_t rows, int64_t cols,
                             __nv_bfloat16* out) {
  const int64_t n = rows * cols;
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n; i += int64_t{gridDim.x} * blockDim.x) {
    out[i] = __float2bfloat16(static_cast<float>(q[i]) * scales[i / cols]);
  }
}

// Reads n 16-byte words once (a read-only stream, like the GEMV's weights); the sum keeps the
// loads alive.
__global__ void ReadKernel(const uint4* p, int64_t n, unsigned* sink) {
  unsigned acc = 0;
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n; i += int64_t{gridDim.x} * blockDim.x) {
    const uint4 v = __ldcs(p + i);
    acc ^= v.x ^ v.y ^ v.z ^ v.w;
  }
  if (acc == 0x12345678u) *sink = acc;
}

std::vector<int64_t> ParseList(const std::string& text) {
  std::vector<int64_t> out;
  std::stringstream ss(text);
  std::string item;
  while (std::getline(ss, item, ',')) out.push_back(std::stoll(item));
  return out;
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// Median milliseconds of fn() on `stream`, timed with events after two warm-up calls.
template <typename Fn>
double TimeDevice(cudaStream_t stream, int reps, Fn fn) {
  cudaEvent_t a, b;
  CHECK_CUDA(cudaEventCreate(&a));
  CHECK_CUDA(cudaEventCreate(&b));
  fn();
  fn();
  std::vector<double> ms;
  for (int i = 0; i < reps; ++i) {
    CHECK_CUDA(cudaEventRecord(a, stream));
    fn();
    CHECK_CUDA(cudaEventRecord(b, stream));
    CHECK_CUDA(cudaEventSynchronize(b));
    float t;
    CHECK_CUDA(cudaEventElapsedTime(&t, a, b));
    ms.push_back(t);
  }
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  return Median(ms);
}

template <typename Fn>
double TimeHost(int reps, Fn fn) {
  fn();
  fn();
  std::vector<double> ms;
  for (int i = 0; i < reps; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    fn();
    ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
  }
  return Median(ms);
}

// Synthetic head: per-row std lognormal around 0.02, as FP8 codes + per-row scales and as BF16.
struct Head {
  int64_t vocab, hidden;
  std::vector<uint8_t> fp8;
  std::vector<float> scales;
  std::vector<uint16_t> bf16;
};

Head MakeHead(int64_t vocab, int64_t hidden) {
  Head h{vocab, hidden, std::vector<uint8_t>(vocab * hidden), std::vector<float>(vocab),
         std::vector<uint16_t>(vocab * hidden)};
  const int threads = std::max(1u, std::thread::hardware_concurrency());
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t) {
    pool.emplace_back([&, t] {
      std::vector<float> row(hidden);
      uint64_t state = 0x9E3779B97F4A7C15ull * (t + 1);
      auto uniform = [&] {
        state ^= state << 13, state ^= state >> 7, state ^= state << 17;
        return (static_cast<double>(state >> 11) + 0.5) * (1.0 / 9007199254740992.0);
      };
      auto normal = [&] { return std::sqrt(-2 * std::log(uniform())) * std::cos(6.283185307179586 * uniform()); };
      for (int64_t r = t; r < vocab; r += threads) {
        const double std = 0.02 * std::exp(0.25 * normal());
        float amax = 0;
        for (int64_t c = 0; c < hidden; ++c) {
          row[c] = static_cast<float>(std * normal());
          amax = std::max(amax, std::fabs(row[c]));
          h.bf16[r * hidden + c] = lmhead::FloatToBf16(row[c]);
        }
        h.scales[r] = lmhead::Fp8ScaleForAmax(amax);
        lmhead::QuantizeFp8(row.data(), hidden, h.scales[r], h.fp8.data() + r * hidden);
      }
    });
  }
  for (auto& t : pool) t.join();
  return h;
}

// profile: record per-stage GPU times (costs a few microseconds per call, so the timed backends
// run without it and a separate one reports the stages).
std::unique_ptr<lmhead::Backend> MakeBackend(const Head& h, bool fp8_activations, int64_t gemv_max_rows,
                                             bool profile = false, bool fp8_gemm = true) {
  lmhead::HeadWeights w;
  w.vocab = h.vocab;
  w.hidden = h.hidden;
  w.data = h.fp8;
  w.row_scales = h.scales;
  lmhead::CudaModuleArgs args;
  args.fp8_activations = fp8_activations;
  args.gemv_max_rows = gemv_max_rows;
  args.fp8_gemm = fp8_gemm;
  args.profile_stages = profile;
  args.host_threads = static_cast<int>(std::thread::hardware_concurrency());  // as the server passes --threads
  const lmhead::HeadSource source = lmhead::SourceOf(w);
  args.source = &source;
  auto b = lmhead::cuda::NewCudaBackend(args);
  CHECK_OK(b.status());
  return std::move(*b);
}

}  // namespace

int main(int argc, char** argv) {
  std::string shapes = "128256x4096,131072x5120,152064x8192";
  std::string batches = "1,8,32,64,128,256,512,2048,8192";
  std::string out_path = "gpu_bench_results.md";
  float hidden_scale = 1.0f;  // x values are uniform in [-2, 2] times this
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a.rfind("--shapes=", 0) == 0) shapes = a.substr(9);
    else if (a.rfind("--batches=", 0) == 0) batches = a.substr(10);
    else if (a.rfind("--out=", 0) == 0) out_path = a.substr(6);
    else if (a.rfind("--hidden_scale=", 0) == 0) hidden_scale = std::stof(a.substr(15));
    else { std::fprintf(stderr, "unknown argument %s\n", a.c_str()); return 2; }
  }
  cudaDeviceProp prop;
  CHECK_CUDA(cudaGetDeviceProperties(&prop, 0));
  // Baseline for the server's memory: a CUDA context plus one cuBLASLt handle, nothing else.
  double context_mib;
  {
    CHECK_CUDA(cudaFree(nullptr));
    cublasLtHandle_t handle;
    if (cublasLtCreate(&handle) != CUBLAS_STATUS_SUCCESS) return 1;
    size_t free_bytes, total_bytes;
    CHECK_CUDA(cudaMemGetInfo(&free_bytes, &total_bytes));
    context_mib = (total_bytes - free_bytes) / 1048576.0;
    cublasLtDestroy(handle);
  }
  cudaStream_t stream;
  CHECK_CUDA(cudaStreamCreate(&stream));
  CHECK_CUDA(lmhead::cuda::PrepareFp8Gemv());

  // Ceilings: copy bandwidth (bytes read + written) and FP8 / BF16 GEMM rates at 8192^3.
  double copy_bw;
  {
    const size_t bytes = size_t{2} << 30;
    DeviceBuffer<uint8_t> a, b;
    CHECK_OK(a.Allocate(bytes));
    CHECK_OK(b.Allocate(bytes));
    CHECK_CUDA(cudaMemset(a.get(), 1, bytes));
    const double ms = TimeDevice(stream, 20, [&] { cudaMemcpyAsync(b.get(), a.get(), bytes, cudaMemcpyDeviceToDevice, stream); });
    copy_bw = 2.0 * bytes / (ms * 1e-3);
  }
  double fp8_rate, bf16_rate;
  {
    const int64_t n = 8192;
    DeviceBuffer<uint8_t> w, x;
    DeviceBuffer<float> d;
    CHECK_OK(w.Allocate(n * n * 2));
    CHECK_OK(x.Allocate(n * n * 2));
    CHECK_OK(d.Allocate(n * n));
    CHECK_CUDA(cudaMemset(w.get(), 0x3a, w.bytes()));  // nonzero operands (1.25 in E4M3; small bf16)
    CHECK_CUDA(cudaMemset(x.get(), 0x3a, x.bytes()));
    for (int fp8 = 1; fp8 >= 0; --fp8) {
      auto g = LtGemm::Create(fp8 ? CUDA_R_8F_E4M3 : CUDA_R_16BF, n, n, 32u << 20);
      CHECK_OK(g.status());
      const double ms = TimeDevice(stream, 10, [&] { CHECK_OK((*g)->Run(w.get(), x.get(), n, d.get(), stream)); });
      (fp8 ? fp8_rate : bf16_rate) = 2.0 * n * n * n / (ms * 1e-3);
    }
  }
  std::ostringstream md;
  md << "# lmhead GPU benchmark\n\nCard: " << prop.name << " (" << prop.multiProcessorCount << " SMs, "
     << prop.totalGlobalMem / (1 << 20) << " MiB). Measured in this run: device-to-device copy "
     << copy_bw / 1e12 << " TB/s (read + write), cuBLASLt FP8 " << fp8_rate / 1e12 << " TFLOP/s, BF16 "
     << bf16_rate / 1e12 << " TFLOP/s (8192^3). Device memory in use with only a CUDA context and a cuBLASLt "
     << "handle: " << context_mib << " MiB.\n\n"
     << "Times in ms (median). lmhead = end-to-end `ComputeLogits` (host fp32 rows in the caller's memory, "
        "results on the host): `argmax` returns argmax + logsumexp; `top20` adds top-20 logprobs and 2 token "
        "logprobs; `rows in input buffer` = the argmax call with the rows already in the backend's pinned "
        "input buffer, where the server's batcher assembles them (`bf16`: the same rows as bf16, as the batcher "
        "passes requests that sent bf16 hidden states; `fp16`: the rows scaled and rounded to fp16 by the host, as "
        "the batcher passes fp32 rows of batches with one fp16 per activation, 9-64 rows and bf16-act GEMM "
        "batches; the `argmax` and `top20` columns' calls stage their rows so too). B <= " << lmhead::cuda::GemvMaxRows()
     << " runs lmhead's FP8 GEMV in both modes (fp16 hi + lo activations up to 8 rows, one fp16 above; "
        "wgmma with TMA-fed shared memory, N = 16, 24, 32, 48 or 64). Above that `bf16 act` "
        "(the default) runs lmhead's FP8 GEMM (the same wgmma kernel over tiles of 128 rows, one fp16 per "
        "activation, the epilogue's first pass on its accumulators) and `fp8 act` lmhead's FP8 x FP8 GEMM over "
        "one E4M3 row per token (per-token scale; the epilogue's first pass on its accumulators); `fp8 act lt` = "
        "that call on cuBLASLt FP8 instead. `lt` = the bf16-act call with lmhead's kernels off: cuBLASLt FP8 over "
        "FP8 high + residual activation rows. `kernel` = lmhead's FP8 kernel alone (CUDA events) as an argmax call runs it: the GEMV, "
        "above that the FP8 GEMM, each with the epilogue's first pass (per-block max / argmax / sum of exp; no "
        "logits stored on Hopper: the mma.sync GEMV that other GPUs run stores them; at 1-32 rows the faster of "
        "the GEMV in one and two blocks per SM). "
        "Baselines are the GEMM alone (CUDA events): cuBLASLt BF16 (BF16 weights), cuBLASLt FP8 tensor-wise "
        "(FP8 weights and activations, no scales), and the seed (upcast FP8 -> BF16 every call, then BF16 GEMM). "
        "Byte floor = (FP8 weights + scales + fp32 inputs) / copy bandwidth (the issue's definition); read floor = "
        "FP8 weights / the rate of a plain read-only kernel over them; compute floor = 2*B*V*H / FP8 rate.\n\n"
     << "| shape | B | lmhead bf16 act argmax | lmhead argmax, rows in input buffer | bf16 rows in input buffer | "
        "fp16 rows in input buffer | lmhead bf16 act top20 | "
        "lmhead fp8 act argmax | lmhead fp8 act lt argmax | lmhead lt argmax | "
        "kernel | cuBLASLt BF16 | cuBLASLt FP8 tensor-wise | seed upcast+BF16 | byte floor | read floor | "
        "compute floor | lmhead/floor | kernel/floor | lmhead/BF16 | fp8 act/FP8 tw |\n"
     << "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n";
  std::printf("%s", md.str().c_str());

  for (const std::string& shape : [&] {
         std::vector<std::string> v;
         std::stringstream ss(shapes);
         std::string s;
         while (std::getline(ss, s, ',')) v.push_back(s);
         return v;
       }()) {
    const int64_t vocab = std::stoll(shape.substr(0, shape.find('x')));
    const int64_t hidden = std::stoll(shape.substr(shape.find('x') + 1));
    Head head = MakeHead(vocab, hidden);
    auto split = MakeBackend(head, false, lmhead::kCudaGemvMaxRows);
    auto fp8act = MakeBackend(head, true, lmhead::kCudaGemvMaxRows);
    auto lt_only = MakeBackend(head, false, 0, /*profile=*/false, /*fp8_gemm=*/false);
    auto fp8act_lt = MakeBackend(head, true, lmhead::kCudaGemvMaxRows, /*profile=*/false, /*fp8_gemm=*/false);
    auto profiled = MakeBackend(head, false, lmhead::kCudaGemvMaxRows, /*profile=*/true);
    std::fprintf(stderr, "backend tuning %s: %s\n", shape.c_str(), split->Tuning().c_str());
    DeviceBuffer<uint8_t> w8, w16, up16, act;
    DeviceBuffer<float> scales, d;
    CHECK_OK(w8.Allocate(head.fp8.size()));
    CHECK_OK(w16.Allocate(head.bf16.size() * 2));
    CHECK_OK(up16.Allocate(head.bf16.size() * 2));
    CHECK_OK(scales.Allocate(vocab));
    CHECK_CUDA(cudaMemcpy(w8.get(), head.fp8.data(), head.fp8.size(), cudaMemcpyHostToDevice));
    CHECK_CUDA(cudaMemcpy(w16.get(), head.bf16.data(), head.bf16.size() * 2, cudaMemcpyHostToDevice));
    CHECK_CUDA(cudaMemcpy(scales.get(), head.scales.data(), vocab * 4, cudaMemcpyHostToDevice));
    auto g8 = LtGemm::Create(CUDA_R_8F_E4M3, vocab, hidden, 32u << 20);
    auto g16 = LtGemm::Create(CUDA_R_16BF, vocab, hidden, 32u << 20);
    CHECK_OK(g8.status());
    CHECK_OK(g16.status());
    head.bf16.clear();
    head.bf16.shrink_to_fit();
    DeviceBuffer<unsigned> sink;
    CHECK_OK(sink.Allocate(1));
    const double read_floor = TimeDevice(stream, 20, [&] {
      ReadKernel<<<132 * 16, 256, 0, stream>>>(reinterpret_cast<const uint4*>(w8.get()), head.fp8.size() / 16,
                                               sink.get());
    });
    DeviceBuffer<__half> gemv_act;
    DeviceBuffer<float> gemv_scales, x_dev;
    CHECK_OK(gemv_act.Allocate(lmhead::cuda::kGemvPlaneRows * lmhead::cuda::GemvActivationStride(hidden)));
    CHECK_CUDA(cudaMemset(gemv_act.get(), 0, gemv_act.bytes()));
    CHECK_OK(gemv_scales.Allocate(lmhead::cuda::kGemvMaxRows));
    DeviceBuffer<float> part_max, part_sum;
    DeviceBuffer<int32_t> part_arg;
    const int64_t partials = lmhead::cuda::kGemvMaxRows * lmhead::cuda::GemvMaxPartials(vocab);
    CHECK_OK(part_max.Allocate(partials));
    CHECK_OK(part_sum.Allocate(partials));
    CHECK_OK(part_arg.Allocate(partials));
    lmhead::cuda::GemvWeights gemv_weights;
    CHECK_CUDA(lmhead::cuda::DescribeGemvWeights(w8.get(), vocab, hidden, &gemv_weights));
    lmhead::cuda::Fp8GemmOperands gemm_operands;  // the FP8 x fp16 GEMM's (above the GEMV's rows)
    if (lmhead::cuda::Fp8GemmAvailable()) {
      CHECK_CUDA(lmhead::cuda::PrepareFp8Gemms());
      CHECK_CUDA(lmhead::cuda::DescribeFp8Gemm(w8.get(), vocab, hidden, nullptr, 0, &gemm_operands));
    }
    lmhead::cuda::EpilogueParams gemv_epilogue;  // what the GEMV alone reads and writes (an argmax call)
    gemv_epilogue.keep_logits = false;
    gemv_epilogue.ld = vocab;
    gemv_epilogue.act_scales = gemv_scales.get();
    gemv_epilogue.row_scales = scales.get();
    gemv_epilogue.vocab = vocab;
    gemv_epilogue.part_max = part_max.get();
    gemv_epilogue.part_arg = part_arg.get();
    gemv_epilogue.part_sum = part_sum.get();

    for (int64_t b : ParseList(batches)) {
      const int reps = b <= 512 ? 30 : 5;
      const int64_t n = LtGemm::PadRows(b);
      CHECK_OK(act.Allocate(n * hidden * 2));
      CHECK_CUDA(cudaMemset(act.get(), 0x3a, act.bytes()));
      CHECK_OK(d.Allocate(n * vocab));
      std::vector<float> x(b * hidden);
      uint64_t st = 12345 + b;
      for (float& v : x) {
        st = st * 6364136223846793005ull + 1442695040888963407ull;
        v = hidden_scale * static_cast<float>(static_cast<int64_t>(st >> 33) % 2001 - 1000) / 500.0f;
      }
      const std::vector<uint32_t> ids = {0, static_cast<uint32_t>(vocab - 1)};
      std::vector<lmhead::RowSpec> argmax_specs(b, lmhead::RowSpec{0, {}, false});
      std::vector<lmhead::RowSpec> top_specs(b, lmhead::RowSpec{20, ids, false});
      std::vector<lmhead::RowOutput> out;
      auto call = [&](lmhead::Backend& be, std::vector<lmhead::RowSpec>& specs) {
        CHECK_OK(be.ComputeLogits({x.data(), b, specs}, &out));
      };
      const double t_split = TimeHost(reps, [&] { call(*split, argmax_specs); });
      // The server's batcher assembles a batch's rows in the backend's input buffer (pinned):
      // the same call with the rows already there (NAN when the batch is larger than the buffer).
      double t_staged = NAN;
      if (float* staged = split->InputBuffer(b); staged != nullptr) {
        std::copy(x.begin(), x.end(), staged);
        t_staged = TimeHost(reps, [&] { CHECK_OK(split->ComputeLogits({staged, b, argmax_specs}, &out)); });
      }
      double t_staged16 = NAN;
      if (uint16_t* staged16 = split->Bf16InputBuffer(b); staged16 != nullptr) {
        for (size_t i = 0; i < x.size(); ++i) staged16[i] = lmhead::FloatToBf16(x[i]);
        t_staged16 = TimeHost(reps, [&] {
          lmhead::LogitsBatch batch{nullptr, b, argmax_specs};
          batch.hidden_bf16 = staged16;
          CHECK_OK(split->ComputeLogits(batch, &out));
        });
      }
      double t_staged_half = NAN;
      if (const lmhead::HalfRows half = split->HalfInputBuffer(b); half.values != nullptr) {
        auto convert = [&] { lmhead::ScaleRowsToHalf(x.data(), b, hidden, half); };
        lmhead::LogitsBatch half_batch{nullptr, b, argmax_specs};
        half_batch.hidden_half = half.values;
        half_batch.half_inv_scales = half.inv_scales;
        convert();
        t_staged_half = TimeHost(reps, [&] { CHECK_OK(split->ComputeLogits(half_batch, &out)); });
        // The server's batcher path whole (one thread gathers, then the call): fp32 rows copied
        // into the input buffer against converted into its fp16 rows.
        float* staged = split->InputBuffer(b);
        const double t_copy = TimeHost(reps, [&] { std::copy(x.begin(), x.end(), staged); });
        const double t_convert = TimeHost(reps, convert);
        const double t_copy_call = TimeHost(reps, [&] {
          std::copy(x.begin(), x.end(), staged);
          CHECK_OK(split->ComputeLogits({staged, b, argmax_specs}, &out));
        });
        const double t_convert_call = TimeHost(reps, [&] {
          convert();
          CHECK_OK(split->ComputeLogits(half_batch, &out));
        });
        std::fprintf(stderr,
                     "batcher %s B=%lld: gather fp32 %.4f ms, fp16 %.4f ms; gather + argmax call fp32 %.4f ms, "
                     "fp16 %.4f ms\n",
                     shape.c_str(), static_cast<long long>(b), t_copy, t_convert, t_copy_call, t_convert_call);
      }
      const double t_top = TimeHost(reps, [&] { call(*split, top_specs); });
      const double t_fp8 = TimeHost(reps, [&] { call(*fp8act, argmax_specs); });
      // Above the GEMV's rows: the same fp8-activation call on cuBLASLt (lmhead's FP8 x FP8 GEMM off).
      const double t_fp8_lt =
          b > lmhead::kCudaGemvMaxRows ? TimeHost(reps, [&] { call(*fp8act_lt, argmax_specs); }) : NAN;
      profiled->TakeStageTimings();
      TimeHost(reps, [&] { call(*profiled, argmax_specs); });
      const std::string stages_split = profiled->TakeStageTimings();
      TimeHost(reps, [&] { call(*profiled, top_specs); });
      const std::string stages_top = profiled->TakeStageTimings();
      const double t_lt = TimeHost(reps, [&] { call(*lt_only, argmax_specs); });
      double t_gemv = NAN;
      const bool gemm = b > lmhead::cuda::GemvMaxRows();
      if (!gemm || lmhead::cuda::Fp8GemmAvailable()) {
        CHECK_OK(x_dev.Allocate(b * hidden));
        CHECK_CUDA(cudaMemcpy(x_dev.get(), x.data(), x.size() * 4, cudaMemcpyHostToDevice));
        if (gemm) {  // room for every tile and statistic of the batch
          const int64_t tiles = (b + lmhead::cuda::kGemmTileRows - 1) / lmhead::cuda::kGemmTileRows;
          CHECK_OK(gemv_act.Allocate(tiles * lmhead::cuda::kGemmTileRows * lmhead::cuda::GemvActivationStride(hidden)));
          CHECK_CUDA(cudaMemset(gemv_act.get(), 0, gemv_act.bytes()));
          CHECK_OK(gemv_scales.Allocate(b));
          for (DeviceBuffer<float>* part : {&part_max, &part_sum}) {
            CHECK_OK(part->Allocate(b * lmhead::cuda::Fp8GemmMaxPartials(vocab)));
          }
          CHECK_OK(part_arg.Allocate(b * lmhead::cuda::Fp8GemmMaxPartials(vocab)));
          gemv_epilogue.act_scales = gemv_scales.get();
          gemv_epilogue.part_max = part_max.get();
          gemv_epilogue.part_arg = part_arg.get();
          gemv_epilogue.part_sum = part_sum.get();
        }
        CHECK_CUDA(lmhead::cuda::LaunchGemvActivations(x_dev.get(), b, hidden, hidden, gemv_act.get(),
                                                       gemv_scales.get(), stream));
        gemv_epilogue.raw = d.get();
        gemv_epilogue.rows = b;
        // 1-32 rows: the faster of the GEMV in one and in two blocks per SM (the backend picks by
        // timing whole calls at startup).
        const int variants = !gemm && b <= 32 && lmhead::cuda::Fp8GemmAvailable() ? 2 : 1;
        for (int v = 1; v <= variants; ++v) {
          gemv_weights.blocks_per_sm_16 = gemv_weights.blocks_per_sm_32 = v;
          const double t = TimeDevice(stream, reps, [&] {
            CHECK_CUDA(gemm ? lmhead::cuda::LaunchFp8Gemm(gemm_operands, gemv_act.get(), gemv_epilogue, stream)
                            : lmhead::cuda::LaunchFp8Gemv(gemv_weights, gemv_act.get(), gemv_epilogue, stream));
          });
          if (variants == 2) std::fprintf(stderr, "gemv %s B=%lld: %d block(s) per SM %.4f ms\n", shape.c_str(),
                                          static_cast<long long>(b), v, t);
          t_gemv = v == 1 ? t : std::min(t_gemv, t);
        }
        gemv_weights.blocks_per_sm_16 = gemv_weights.blocks_per_sm_32 = 1;
      }
      std::fprintf(stderr, "stages %s B=%lld bf16-act argmax: %s\nstages %s B=%lld bf16-act top20: %s\n",
                   shape.c_str(), static_cast<long long>(b), stages_split.c_str(), shape.c_str(),
                   static_cast<long long>(b), stages_top.c_str());
      const double t_bf16 = TimeDevice(stream, reps, [&] { CHECK_OK((*g16)->Run(w16.get(), act.get(), n, d.get(), stream)); });
      const double t_fp8tw = TimeDevice(stream, reps, [&] { CHECK_OK((*g8)->Run(w8.get(), act.get(), n, d.get(), stream)); });
      const double t_seed = TimeDevice(stream, reps, [&] {
        UpcastKernel<<<4096, 256, 0, stream>>>(reinterpret_cast<const __nv_fp8_e4m3*>(w8.get()), scales.get(), vocab,
                                               hidden, reinterpret_cast<__nv_bfloat16*>(up16.get()));
        CHECK_OK((*g16)->Run(up16.get(), act.get(), n, d.get(), stream));
      });
      const double byte_floor = (vocab * hidden + vocab * 4.0 + b * hidden * 4.0) / copy_bw * 1e3;
      const double compute_floor = 2.0 * b * vocab * hidden / fp8_rate * 1e3;
      const double floor = std::max(byte_floor, compute_floor);
      char row[512];
      std::snprintf(row, sizeof(row),
                    "| %lldx%lld | %lld | %.4f | %.4f | %.4f | %.4f | %.4f | %.4f | %.4f | %.4f | %.4f | %.4f | %.4f | %.4f | %.4f | "
                    "%.4f | %.4f | %.2f | %.2f | %.2f | %.2f |\n",
                    static_cast<long long>(vocab), static_cast<long long>(hidden), static_cast<long long>(b), t_split,
                    t_staged, t_staged16, t_staged_half, t_top, t_fp8, t_fp8_lt, t_lt, t_gemv, t_bf16, t_fp8tw, t_seed, byte_floor,
                    read_floor, compute_floor, t_split / floor, t_gemv / floor, t_split / t_bf16, t_fp8 / t_fp8tw);
      std::printf("%s", row);
      std::fflush(stdout);
      md << row;
    }
  }
  std::ofstream(out_path) << md.str();
  return 0;
}
