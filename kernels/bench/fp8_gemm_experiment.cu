// Experiment (not used by the backend): a warp-specialized, persistent FP8 x FP8 GEMM with the
// argmax / logsumexp row statistics fused, timed against lmhead's kept LaunchFp8ActGemm and
// cuBLASLt's FP8 GEMM (no scales, fp32 out) in one process, kernels alone, and checked against the
// kept kernel (per batch row: max logit, argmax, logsumexp from the partial statistics).
//
// Design (session 17): one producer warpgroup (one thread issues the TMA loads; setmaxnreg 24)
// and three consumer warpgroups (setmaxnreg 160), each 64 vocab rows x 128 batch rows with
// m64n128k32 MMAs from shared memory; tiles of 192 vocab rows x 128 batch rows; 5 stages of 128
// columns (40 KB) with full / empty mbarriers; persistent blocks walk the tiles in groups of 16
// token tiles per vocab tile. Per stage 4 MMAs sum into fresh registers that are then added into
// the fp32 accumulators (the kept kernel's promotion, bit-identical sums). The epilogue finishes
// the logits in registers, reduces (max, argmax, sum of exp) over each warp's 16 rows by a
// reduce-scatter across lanes and over the 12 warps through shared memory. Per-block cycle
// counters (clock64) and the SM clock (clock64 over globaltimer) are printed for the last timed
// launch. Results and the variants tried are in gpu_bench_results.md, "Session 17".
//
// Usage (GPU machine): lmhead-fp8-gemm-experiment VOCAB HIDDEN ROWS...
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "kernels/cuda/dependent_launch.h"
#include "kernels/cuda/fp8_gemm.h"
#include "kernels/cuda/fp8_gemv.h"
#include "kernels/cuda/logit_stats.cuh"
#include "kernels/cuda/lt_gemm.h"
#include "kernels/cuda/wgmma.cuh"

namespace {
using namespace lmhead::cuda;

constexpr int kConsumers = 3;
constexpr int kThreads = 128 * (kConsumers + 1);
constexpr int kTileVocab = 64 * kConsumers;
constexpr int kTileTokens = 128;
constexpr int kK = 128;  // columns per stage: one 128-byte swizzled row
constexpr int kStages = 5;
constexpr int kGroup = 16;
constexpr int kWBytes = kTileVocab * kK;
constexpr int kABytes = kTileTokens * kK;
constexpr int kStageBytes = kWBytes + kABytes;
constexpr int kCWarps = 4 * kConsumers;
constexpr int kScratchBytes = 3 * kCWarps * kTileTokens * 4 + kTileTokens * 4;
constexpr int kSmemBytes = 1024 + kStages * kStageBytes + 2 * kStages * 8 + kScratchBytes;
static_assert(kSmemBytes <= 227 * 1024, "fits the H100's shared memory per block");

// Per block: [0] consumer cycles waiting for full stages, [1] main-loop cycles, [3] between tiles,
// [4] producer cycles waiting for empty stages, [6] epilogue cycles, [7] SM clock (MHz).
__device__ unsigned long long g_profile[1024][8];

#if LMHEAD_HAS_WGMMA
__device__ __forceinline__ void WgmmaE4m3N128(float* d, uint64_t a, uint64_t b, bool accumulate) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k32.f32.e4m3.e4m3 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
      "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "
      "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "
      "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, "
      "%64, %65, p, 1, 1;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
        "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
        "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
        "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]),
        "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]),
        "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]),
        "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]),
        "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
      : "l"(a), "l"(b), "r"(accumulate ? 1 : 0));
}

template <int N>
__device__ __forceinline__ void IncreaseRegisters() {
  asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;" ::"n"(N));
}
template <int N>
__device__ __forceinline__ void DecreaseRegisters() {
  asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;" ::"n"(N));
}
#else
__device__ __forceinline__ void WgmmaE4m3N128(float*, uint64_t, uint64_t, bool) { __trap(); }
template <int N>
__device__ __forceinline__ void IncreaseRegisters() {}
template <int N>
__device__ __forceinline__ void DecreaseRegisters() {}
#endif
__device__ __forceinline__ void ConsumerBarrier() { asm volatile("bar.sync 1, %0;" ::"n"(128 * kConsumers) : "memory"); }

__device__ __forceinline__ void TileOf(int64_t tile, int64_t token_tiles, int64_t vocab_tiles, int64_t* token_tile,
                                       int64_t* vocab_tile) {
  const int64_t group = tile / (kGroup * vocab_tiles), in_group = tile % (kGroup * vocab_tiles);
  const int64_t width = min(int64_t{kGroup}, token_tiles - group * kGroup);
  *vocab_tile = in_group / width;
  *token_tile = group * kGroup + in_group % width;
}

// (m, a, s) <- combined with (om, oa, os): the larger maximum (ties: the lower id), sums rescaled
// to it; s == 0 marks an empty statistic (m == -inf).
__device__ __forceinline__ void Merge(float& m, int32_t& a, float& s, float om, int32_t oa, float os) {
  const bool other = om > m || (om == m && oa < a);
  const float hi = other ? om : m, lo = other ? m : om;
  const float shi = other ? os : s, slo = other ? s : os;
  s = lo == -INFINITY ? shi : shi + slo * __expf(lo - hi);
  m = hi;
  a = other ? oa : a;
}

// One round of the reduce-scatter over lanes (lane ^ W): the lane with bit W set keeps entries
// [W, 2W) (moved to [0, W)), its partner [0, W); each merged with the partner's.
template <int W>
__device__ __forceinline__ void ReduceScatter(float (&sm)[32], int32_t (&sa)[32], float (&ss)[32], int lane) {
  const bool upper = (lane & W) != 0;
#pragma unroll
  for (int i = 0; i < W; ++i) {
    const float send_m = upper ? sm[i] : sm[i + W];
    const int32_t send_a = upper ? sa[i] : sa[i + W];
    const float send_s = upper ? ss[i] : ss[i + W];
    float m = upper ? sm[i + W] : sm[i];
    int32_t a = upper ? sa[i + W] : sa[i];
    float s = upper ? ss[i + W] : ss[i];
    Merge(m, a, s, __shfl_xor_sync(0xffffffffu, send_m, W), __shfl_xor_sync(0xffffffffu, send_a, W),
          __shfl_xor_sync(0xffffffffu, send_s, W));
    sm[i] = m;
    sa[i] = a;
    ss[i] = s;
  }
}

__device__ __forceinline__ unsigned long long GlobalTimer() {
  unsigned long long ns;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(ns));
  return ns;
}

__global__ void __launch_bounds__(kThreads, 1)
    WsGemmKernel(const __grid_constant__ CUtensorMap weights, const __grid_constant__ CUtensorMap activations,
                 int steps, int64_t token_tiles, int64_t vocab_tiles, EpilogueParams e) {
  extern __shared__ uint8_t smem_unaligned[];
  uint8_t* base = reinterpret_cast<uint8_t*>((reinterpret_cast<uintptr_t>(smem_unaligned) + 1023) & ~uintptr_t{1023});
  uint64_t* full = reinterpret_cast<uint64_t*>(base + kStages * kStageBytes);
  uint64_t* empty = full + kStages;
  float* red_max = reinterpret_cast<float*>(empty + kStages);  // [kCWarps][128]: per warp and batch row
  int32_t* red_arg = reinterpret_cast<int32_t*>(red_max + kCWarps * kTileTokens);
  float* red_sum = reinterpret_cast<float*>(red_arg + kCWarps * kTileTokens);
  float* tile_scales = red_sum + kCWarps * kTileTokens;  // [128]: the tile's activation scales
  const int wg = threadIdx.x / 128;
  if (threadIdx.x == 0) {
    for (int s = 0; s < kStages; ++s) {
      BarrierInit(&full[s], 1);
      BarrierInit(&empty[s], kCWarps);
    }
  }
  __syncthreads();
  const int64_t tiles = token_tiles * vocab_tiles;
  if (wg == 0) {  // the producer
    DecreaseRegisters<24>();
    if (threadIdx.x == 0) {
      WaitForPrerequisites();
      int stage = 0;
      uint32_t phase = 0;
      long long waited = 0;
      for (int64_t tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
        int64_t token_tile, vocab_tile;
        TileOf(tile, token_tiles, vocab_tiles, &token_tile, &vocab_tile);
        for (int k = 0; k < steps; ++k) {
          const long long t0 = clock64();
          BarrierWait(&empty[stage], phase ^ 1);
          waited += clock64() - t0;
          uint8_t* w = base + stage * kStageBytes;
          BarrierExpectBytes(&full[stage], kStageBytes);
          TensorCopyToShared(w, &weights, k * kK, static_cast<int>(vocab_tile * kTileVocab), &full[stage]);
          TensorCopyToShared(w + kWBytes, &activations, k * kK, static_cast<int>(token_tile * kTileTokens),
                             &full[stage]);
          if (++stage == kStages) stage = 0, phase ^= 1;
        }
      }
      g_profile[blockIdx.x][4] = waited;
    }
    return;
  }
  IncreaseRegisters<160>();
  WaitForPrerequisites();
  const int cw = wg - 1;                  // consumer warpgroup: vocab rows 64 cw .. of the tile
  const int warp = threadIdx.x / 32 - 4;  // consumer warp 0..11
  const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  const int ct = threadIdx.x - 128;  // consumer thread 0..383
  int stage = 0;
  uint32_t phase = 0;
  long long waited = 0, in_loop = 0, between = 0, in_epilogue = 0, t_prev = 0;
  const unsigned long long ns0 = GlobalTimer();
  const long long clk0 = clock64();
  for (int64_t tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
    int64_t token_tile, vocab_tile;
    TileOf(tile, token_tiles, vocab_tiles, &token_tile, &vocab_tile);
    const long long t_tile = clock64();
    if (t_prev != 0) between += t_tile - t_prev;
    const int64_t b0 = token_tile * kTileTokens, v0 = vocab_tile * kTileVocab;
    // Read now, used after the main loop: the tile's activation scales (every consumer passed the
    // previous tile's last barrier, so none still reads them) and this thread's two rows' scales.
    if (ct < kTileTokens) tile_scales[ct] = b0 + ct < e.rows ? e.act_scales[b0 + ct] : 0.0f;
    const int64_t va = v0 + 64 * cw + 16 * (warp & 3) + g, vb = va + 8;
    const bool ina = va < e.vocab, inb = vb < e.vocab;
    const float rsa = ina && e.row_scales != nullptr ? e.row_scales[va] : 1.0f;
    const float rsb = inb && e.row_scales != nullptr ? e.row_scales[vb] : 1.0f;
    float acc[16][4], fresh[16][4];
#pragma unroll
    for (int i = 0; i < 16; ++i) acc[i][0] = acc[i][1] = acc[i][2] = acc[i][3] = 0.0f;
    for (int k = 0; k < steps; ++k) {
      const long long t0 = clock64();
      BarrierWait(&full[stage], phase);
      waited += clock64() - t0;
      const uint8_t* a = base + stage * kStageBytes + cw * 64 * kK;
      const uint8_t* b = base + stage * kStageBytes + kWBytes;
      WgmmaFence();
#pragma unroll
      for (int kk = 0; kk < kK / 32; ++kk) {
        WgmmaE4m3N128(&fresh[0][0], SwizzledDescriptor(a + kk * 32), SwizzledDescriptor(b + kk * 32), kk > 0);
      }
      WgmmaCommit();
      WgmmaWait<0>();
      if (lane == 0) BarrierArrive(&empty[stage]);
#pragma unroll
      for (int i = 0; i < 16; ++i) {
#pragma unroll
        for (int r = 0; r < 4; ++r) {
          PinRegister(fresh[i][r]);
          acc[i][r] += fresh[i][r];
        }
      }
      if (++stage == kStages) stage = 0, phase ^= 1;
    }
    const long long t_loop_end = clock64();
    in_loop += t_loop_end - t_tile;
    // Epilogue: each thread's 2 vocab rows x 32 batch rows -> statistics, reduced over the warp's
    // 16 rows by a reduce-scatter across the 8 lanes that share t (each ends with 4 batch rows),
    // then over the 12 warps through shared memory.
    ConsumerBarrier();  // tile_scales written
    float sm[32], ss[32];
    int32_t sa[32];
#pragma unroll
    for (int i = 0; i < 32; ++i) {
      const int nt = i / 2, j = i % 2, c = 8 * nt + 2 * t + j;
      const float inv = tile_scales[c];
      const float la = ina ? FinishLogit(acc[nt][j] * inv, &rsa, e.logit_scale, e.softcap) : -INFINITY;
      const float lb = inb ? FinishLogit(acc[nt][2 + j] * inv, &rsb, e.logit_scale, e.softcap) : -INFINITY;
      const bool b_wins = lb > la;
      sm[i] = b_wins ? lb : la;
      sa[i] = static_cast<int32_t>(b_wins ? vb : va);
      ss[i] = sm[i] == -INFINITY ? 0.0f : 1.0f + __expf((b_wins ? la : lb) - sm[i]);
    }
    ReduceScatter<16>(sm, sa, ss, lane);
    ReduceScatter<8>(sm, sa, ss, lane);
    ReduceScatter<4>(sm, sa, ss, lane);
#pragma unroll
    for (int q = 0; q < 4; ++q) {  // lane (g, t) holds reduced entry i = 4g + q
      const int i = 4 * g + q, c = 8 * (i / 2) + 2 * t + i % 2;
      red_max[warp * kTileTokens + c] = sm[q];
      red_arg[warp * kTileTokens + c] = sa[q];
      red_sum[warp * kTileTokens + c] = ss[q];
    }
    ConsumerBarrier();
    if (ct < kTileTokens && b0 + ct < e.rows) {
      float m = red_max[ct], s = red_sum[ct];
      int32_t a = red_arg[ct];
      for (int w = 1; w < kCWarps; ++w) {
        Merge(m, a, s, red_max[w * kTileTokens + ct], red_arg[w * kTileTokens + ct], red_sum[w * kTileTokens + ct]);
      }
      const int64_t at = (b0 + ct) * vocab_tiles + vocab_tile;
      e.part_max[at] = m;
      e.part_arg[at] = a;
      e.part_sum[at] = s;
    }
    t_prev = clock64();
    in_epilogue += t_prev - t_loop_end;
  }
  if (ct == 0) {
    unsigned long long* o = g_profile[blockIdx.x];
    o[7] = (clock64() - clk0) * 1000 / (GlobalTimer() - ns0 + 1);
    o[0] = waited;
    o[1] = in_loop;
    o[3] = between;
    o[6] = in_epilogue;
  }
  LaunchDependents();
}

#define CHECK_CUDA_OK(x)                                                                  \
  do {                                                                                    \
    cudaError_t err_ = (x);                                                               \
    if (err_ != cudaSuccess) {                                                            \
      fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #x, cudaGetErrorString(err_)); \
      exit(1);                                                                            \
    }                                                                                     \
  } while (0)

__global__ void FillCodes(uint8_t* p, int64_t n, uint32_t seed, int mode) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n; i += int64_t{gridDim.x} * blockDim.x) {
    uint32_t h = static_cast<uint32_t>(i) * 2654435761u ^ seed;
    h ^= h >> 13;
    h *= 0x5bd1e995u;
    h ^= h >> 15;
    // mode 0: any code but NaN; mode 1: magnitudes like a trained head's (exponents 4-8 of 0..15)
    uint8_t c = h & 0xff;
    if (mode == 1) c = (c & 0x87) | ((4 + (h >> 8) % 5) << 3);
    if ((c & 0x7f) == 0x7f) c = 0x7e;
    p[i] = c;
  }
}

__global__ void FillScales(float* p, int64_t n, float base) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n; i += int64_t{gridDim.x} * blockDim.x) {
    p[i] = base * (1.0f + 0.25f * static_cast<float>((i * 7919) % 17) / 17.0f);
  }
}

struct RowResult {
  double max, lse;
  int arg;
};

std::vector<RowResult> Combine(const EpilogueParams& p, int64_t rows, int64_t partials) {
  std::vector<float> m(rows * partials), s(rows * partials);
  std::vector<int32_t> a(rows * partials);
  CHECK_CUDA_OK(cudaMemcpy(m.data(), p.part_max, m.size() * 4, cudaMemcpyDeviceToHost));
  CHECK_CUDA_OK(cudaMemcpy(s.data(), p.part_sum, s.size() * 4, cudaMemcpyDeviceToHost));
  CHECK_CUDA_OK(cudaMemcpy(a.data(), p.part_arg, a.size() * 4, cudaMemcpyDeviceToHost));
  std::vector<RowResult> out(rows);
  for (int64_t r = 0; r < rows; ++r) {
    double M = -INFINITY;
    int arg = -1;
    for (int64_t i = 0; i < partials; ++i) {
      const float x = m[r * partials + i];
      if (s[r * partials + i] == 0.0f) continue;
      if (x > M || (x == M && a[r * partials + i] < arg)) M = x, arg = a[r * partials + i];
    }
    double sum = 0;
    for (int64_t i = 0; i < partials; ++i) {
      if (s[r * partials + i] == 0.0f) continue;
      sum += s[r * partials + i] * std::exp(m[r * partials + i] - M);
    }
    out[r] = {M, M + std::log(sum), arg};
  }
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  const int64_t vocab = atoll(argv[1]), hidden = atoll(argv[2]);
  std::vector<int64_t> batches;
  for (int i = 3; i < argc; ++i) batches.push_back(atoll(argv[i]));
  const int64_t max_rows = *std::max_element(batches.begin(), batches.end());
  const int64_t vocab_pad = (vocab + 15) / 16 * 16, hidden_pad = (hidden + 15) / 16 * 16;
  CHECK_CUDA_OK(PrepareFp8Gemv());
  CHECK_CUDA_OK(PrepareFp8Gemms());
  CHECK_CUDA_OK(cudaFuncSetAttribute(WsGemmKernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmemBytes));
  int sms = 0;
  CHECK_CUDA_OK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
  uint8_t *w, *x;
  float *rs, *as, *pm, *ps, *d;
  int32_t* pa;
  const int64_t old_partials = Fp8GemmPartials(vocab_pad);
  const int64_t new_partials = (vocab_pad + kTileVocab - 1) / kTileVocab;
  const int64_t cap = (max_rows + 127) / 128 * 128;
  CHECK_CUDA_OK(cudaMalloc(&w, vocab_pad * hidden_pad));
  CHECK_CUDA_OK(cudaMalloc(&x, cap * hidden_pad));
  CHECK_CUDA_OK(cudaMalloc(&rs, vocab_pad * 4));
  CHECK_CUDA_OK(cudaMalloc(&as, cap * 4));
  const int64_t np = cap * std::max(old_partials, new_partials);
  CHECK_CUDA_OK(cudaMalloc(&pm, np * 4));
  CHECK_CUDA_OK(cudaMalloc(&ps, np * 4));
  CHECK_CUDA_OK(cudaMalloc(&pa, np * 4));
  CHECK_CUDA_OK(cudaMalloc(&d, cap * vocab_pad * 4));
  const int mode = 1;  // codes with a trained head's spread of exponents
  FillCodes<<<1024, 256>>>(w, vocab_pad * hidden_pad, 0x1234u, mode);
  FillCodes<<<1024, 256>>>(x, cap * hidden_pad, 0x9876u, mode);
  FillScales<<<256, 256>>>(rs, vocab_pad, 1e-3f);
  FillScales<<<256, 256>>>(as, cap, 2e-3f);
  CHECK_CUDA_OK(cudaDeviceSynchronize());
  Fp8GemmOperands ops;
  CHECK_CUDA_OK(DescribeFp8Gemm(w, vocab_pad, hidden_pad, x, cap, &ops));
  CUtensorMap wmap, xmap;
  CHECK_CUDA_OK(DescribeByteMatrix(w, hidden_pad, vocab_pad, kTileVocab, &wmap));
  CHECK_CUDA_OK(DescribeByteMatrix(x, hidden_pad, cap, kTileTokens, &xmap));
  auto lt = LtGemm::Create(CUDA_R_8F_E4M3, vocab_pad, hidden_pad, 32u << 20);
  if (!lt.ok()) return 1;
  cudaStream_t stream;
  CHECK_CUDA_OK(cudaStreamCreate(&stream));
  cudaEvent_t e0, e1;
  CHECK_CUDA_OK(cudaEventCreate(&e0));
  CHECK_CUDA_OK(cudaEventCreate(&e1));
  printf("shape %lldx%lld: kept = LaunchFp8ActGemm, ws = this kernel, lt = cuBLASLt FP8 (no scales, fp32 out); "
         "ms median of 3 rounds\n", (long long)vocab, (long long)hidden);
  bool failed = false;
  for (int64_t rows : batches) {
    EpilogueParams p;
    p.act_scales = as;
    p.row_scales = rs;
    p.rows = rows;
    p.vocab = vocab;
    p.keep_logits = false;
    p.part_max = pm;
    p.part_sum = ps;
    p.part_arg = pa;
    const int64_t token_tiles = (rows + 127) / 128;
    const int64_t tiles = token_tiles * new_partials;
    const int grid = static_cast<int>(std::min<int64_t>(sms, tiles));
    const int steps = static_cast<int>((hidden_pad + kK - 1) / kK);
    auto run_old = [&] { CHECK_CUDA_OK(LaunchFp8ActGemm(ops, p, stream)); };
    auto run_new = [&] {
      CHECK_CUDA_OK(LaunchAfterPrevious(WsGemmKernel, dim3(grid), dim3(kThreads), kSmemBytes, stream, wmap, xmap, steps,
                             token_tiles, new_partials, p));
    };
    auto run_lt = [&] {
      if (!(*lt)->Run(w, x, (rows + 15) / 16 * 16, d, stream).ok()) exit(2);
    };
    run_old();
    CHECK_CUDA_OK(cudaStreamSynchronize(stream));
    const auto ref = Combine(p, rows, old_partials);
    CHECK_CUDA_OK(cudaMemset(pm, 0xff, np * 4));
    run_new();
    CHECK_CUDA_OK(cudaStreamSynchronize(stream));
    CHECK_CUDA_OK(cudaGetLastError());
    const auto got = Combine(p, rows, new_partials);

    int arg_diff = 0;
    double dmax = 0, dlse = 0;
    for (int64_t r = 0; r < rows; ++r) {
      arg_diff += ref[r].arg != got[r].arg;
      dmax = std::max(dmax, std::abs(ref[r].max - got[r].max));
      dlse = std::max(dlse, std::abs(ref[r].lse - got[r].lse));
      if (!(std::abs(ref[r].lse - got[r].lse) < 1e-3) && r < 3) {
        printf("  row %lld ref (%g %g %d) got (%g %g %d)\n", (long long)r, ref[r].max, ref[r].lse, ref[r].arg,
               got[r].max, got[r].lse, got[r].arg);
      }
    }
    auto time = [&](auto&& fn) {
      const int reps = rows >= 2048 ? 5 : 20;
      fn();
      CHECK_CUDA_OK(cudaEventRecord(e0, stream));
      for (int i = 0; i < reps; ++i) fn();
      CHECK_CUDA_OK(cudaEventRecord(e1, stream));
      CHECK_CUDA_OK(cudaEventSynchronize(e1));
      float ms;
      CHECK_CUDA_OK(cudaEventElapsedTime(&ms, e0, e1));
      return ms / reps;
    };
    std::vector<float> to, tn, tl;
    for (int round = 0; round < 3; ++round) {
      to.push_back(time(run_old));
      tn.push_back(time(run_new));
      tl.push_back(time(run_lt));
    }
    {
      static unsigned long long profile[1024][8];
      CHECK_CUDA_OK(cudaMemcpyFromSymbol(profile, g_profile, sizeof(profile)));
      double sum[8] = {};
      for (int b = 0; b < grid; ++b)
        for (int i = 0; i < 8; ++i) sum[i] += profile[b][i];
      const double per = static_cast<double>(tiles);
      printf("  ws cycles per tile (last launch): main loop %.0f (of which waiting for stages %.0f), epilogue %.0f, "
             "between tiles %.0f; producer waiting for free stages %.0f; SM clock %.0f MHz\n",
             sum[1] / per, sum[0] / per, sum[6] / per, sum[3] / per, sum[4] / per, sum[7] / grid);
    }
    std::sort(to.begin(), to.end());
    std::sort(tn.begin(), tn.end());
    std::sort(tl.begin(), tl.end());
    const double flop = 2.0 * rows * vocab * hidden;
    printf("B=%lld kept %.4f ms (%.0f TF)  ws %.4f ms (%.0f TF)  lt %.4f ms (%.0f TF)  ws/lt %.3f  argmax differs %d, "
           "max |max logit diff| %.3g, max |lse diff| %.3g\n",
           (long long)rows, to[1], flop / to[1] / 1e9, tn[1], flop / tn[1] / 1e9, tl[1], flop / tl[1] / 1e9,
           tn[1] / tl[1], arg_diff, dmax, dlse);
    failed = failed || arg_diff > 0 || dmax > 0 || !(dlse < 1e-5);
  }
  return failed ? 1 : 0;
}
