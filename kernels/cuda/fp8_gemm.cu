#include "kernels/cuda/fp8_gemm.h"

#include <algorithm>
#include <type_traits>

#include "kernels/cuda/dependent_launch.h"
#include "kernels/cuda/fp8_gemv.h"
#include "kernels/cuda/wgmma.cuh"
#include "kernels/cuda/wgmma_tile.cuh"

namespace lmhead::cuda {
namespace {

// A block: 16 warps (4 warpgroups of 64 vocab rows) over 256 vocab rows x kGemmTileRows batch rows.
constexpr int kWarps = 16;
constexpr int kThreads = kWarps * 32;
constexpr int kVocabRows = 256;
constexpr int kColumns = 128;  // k per stage: one 128-byte swizzled row of weights per vocab row
constexpr int kWeightBytes = kVocabRows * kColumns;
constexpr int kTileRows = static_cast<int>(kGemmTileRows);
static_assert(kVocabRows == TileStoreShape<kGemmTileRows, 1>::kRows, "one partial statistic per block");

// Block `block` of a grid over token_tiles x vocab_blocks tiles -> its tiles, ordered so that the
// blocks that run together share their operands in L2: groups of up to kGroup token tiles, and
// within a group the group's token tiles of one vocab block one after another (each weight box is
// fetched from memory once per group; the group's activations, 1.3 MB per tile at hidden 5120,
// stay in L2 over the whole vocab).
__device__ __forceinline__ void BlockTile(int64_t block, int64_t token_tiles, int64_t vocab_blocks,
                                          int64_t* token_tile, int64_t* vocab_block) {
  constexpr int64_t kGroup = 16;
  const int64_t group = block / (kGroup * vocab_blocks), in_group = block % (kGroup * vocab_blocks);
  const int64_t width = min(kGroup, token_tiles - group * kGroup);  // the last group may be narrower
  *vocab_block = in_group / width;
  *token_tile = group * kGroup + in_group % width;
}

// The stages both GEMMs stream their operands through: STAGES stages of SUB parts of kColumns
// columns, each part one TMA box of the block's weight rows (128-byte swizzle) plus ACT_BYTES of
// activations, all completing the stage's barrier. The last of the block's warps done with a
// stage refills it (a shared counter per stage, no block barrier in the main loop: one per step
// measured 6-15% slower on an H100). One box of weights per stage rather than one per warp
// measured 4-5% faster for the FP8 x fp16 GEMM in slices of 384 rows; fewer, larger stages (fewer
// waits and counts per column) 4-7% faster for the FP8 x FP8 GEMM (2 stages of 256 columns
// against 4 of 128, bit-identical).
template <int STAGES, int ACT_BYTES, int SUB = 1>
struct Stages {
  static constexpr int kStages = STAGES;
  static constexpr int kSub = SUB;
  static constexpr int kPartBytes = kWeightBytes + ACT_BYTES;
  static constexpr int kStageBytes = SUB * kPartBytes;
  // + 1024: the swizzled boxes need 1024-byte alignment, which the dynamic allocation lacks.
  static constexpr int kSmemBytes = 1024 + STAGES * kStageBytes + STAGES * 8;
  static_assert(kSmemBytes <= 227 * 1024, "fits the H100's shared memory per block");
  static_assert(TileStoreShape<kGemmTileRows, 1>::kBytes <= STAGES * kStageBytes, "the finished tile fits the stages");

  uint8_t* base;
  uint64_t* full;  // [STAGES]
  int* released;   // [STAGES]: warps done with the steps each stage held (kWarps per step)
  int steps;

  __device__ uint8_t* Weights(int step, int sub = 0) const {
    return base + step % STAGES * kStageBytes + sub * kPartBytes;
  }
  __device__ uint8_t* Activations(int step, int sub = 0) const { return Weights(step, sub) + kWeightBytes; }
  __device__ uint64_t* Full(int step) const { return &full[step % STAGES]; }

  // One thread: the stage's arrival (expecting all its bytes) and its weights' boxes.
  __device__ void LoadWeights(int step, const CUtensorMap* weights, int vocab_row) const {
    BarrierExpectBytes(Full(step), kStageBytes);
    for (int sub = 0; sub < SUB; ++sub) {
      TensorCopyToShared(Weights(step, sub), weights, (step * SUB + sub) * kColumns, vocab_row, Full(step));
    }
  }
  // Barriers and counters, the first stages' weights, then (once the previous kernel's activations
  // are visible) their activations through load_acts(step); every thread takes part.
  template <typename LoadActs>
  __device__ void Start(const CUtensorMap* weights, int vocab_row, LoadActs load_acts) const {
    const int first = steps < STAGES ? steps : STAGES;
    if (threadIdx.x < STAGES) released[threadIdx.x] = 0;
    if (threadIdx.x == 0) {
      for (int s = 0; s < STAGES; ++s) BarrierInit(&full[s], 1);
      for (int step = 0; step < first; ++step) LoadWeights(step, weights, vocab_row);
    }
    WaitForPrerequisites();  // the activations and their scales
    if (threadIdx.x == 0) {
      for (int step = 0; step < first; ++step) load_acts(step);
    }
    __syncthreads();  // the barriers and counters are initialized
  }
  __device__ void Wait(int step) const { BarrierWait(Full(step), (step / STAGES) & 1); }
  // Lane 0 of a warp whose MMAs of `step` are done: the last warp refills the stage.
  template <typename LoadActs>
  __device__ void Release(int step, const CUtensorMap* weights, int vocab_row, LoadActs load_acts) const {
    if (atomicAdd(&released[step % STAGES], 1) == kWarps * (step / STAGES + 1) - 1 && step + STAGES < steps) {
      LoadWeights(step + STAGES, weights, vocab_row);
      load_acts(step + STAGES);
    }
  }
};

// The kernel's stages in its dynamic shared memory (S::kSmemBytes), the barriers after them.
template <typename S>
__device__ __forceinline__ S MakeStages(int steps) {
  extern __shared__ uint8_t smem_unaligned[];
  __shared__ int released[S::kStages];
  uint8_t* base = AlignShared1024(smem_unaligned);
  return S{base, reinterpret_cast<uint64_t*>(base + S::kStages * S::kStageBytes), released, steps};
}

// FP8 x fp16: per stage each warp loads its 16 weight rows' 128 bytes into registers (the GEMV's
// fragment mapping) and issues 8 m64n128k16 MMAs over the stage's 32 KB of activations (the
// activation kernel's tile layout, one bulk copy), keeping up to 3 in flight while it decodes.
// (The same decode-and-issue loop as Fp8GemvWgmmaKernel's, written out again: shared as one
// device function it measured 2-9% slower here in an A/B on an H100, at the same registers.)
using HalfStages = Stages<3, kTileRows * kColumns * 2>;

__global__ void __launch_bounds__(kThreads, 1)
    Fp8GemmKernel(const __grid_constant__ CUtensorMap weights, int steps, const __half* __restrict__ act,
                  int64_t act_stride, int token_tiles, bool write_logits, EpilogueParams e) {
  const HalfStages stages = MakeStages<HalfStages>(steps);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int g = lane >> 2, t = lane & 3;
  int64_t token_tile, vocab_block;
  BlockTile(blockIdx.x, token_tiles, gridDim.x / token_tiles, &token_tile, &vocab_block);
  const int vocab_row = static_cast<int>(vocab_block * kVocabRows);
  act += token_tile * kTileRows * act_stride;
  auto load_acts = [&](int step) {
    BulkCopyBytesToShared(stages.Activations(step), act + static_cast<int64_t>(step) * kTileRows * kColumns,
                          HalfStages::kPartBytes - kWeightBytes, stages.Full(step));
  };
  stages.Start(&weights, vocab_row, load_acts);

  float acc[kTileRows / 8][4];
#pragma unroll
  for (int nt = 0; nt < kTileRows / 8; ++nt) acc[nt][0] = acc[nt][1] = acc[nt][2] = acc[nt][3] = 0.0f;
  constexpr int kSets = 4;  // A fragment register sets: kSets - 1 MMAs stay in flight while one is decoded
  uint32_t a_sets[kSets][4] = {};
  for (int step = 0; step < steps; ++step) {
    stages.Wait(step);
    const uint8_t* rows = stages.Weights(step) + warp * 16 * kColumns;
    uint4 buf[4];  // rows g (0, 1) and g + 8 (2, 3), bytes [32t, 32t + 32) in two 16-byte halves
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int row = g + 8 * (j / 2), piece = 2 * t + j % 2;  // 16-byte piece of the 128-byte row
      buf[j] = *reinterpret_cast<const uint4*>(rows + row * kColumns + ((piece ^ (row % 8)) * 16));
    }
    const uint32_t* wa = reinterpret_cast<const uint32_t*>(&buf[0]);  // row g, 8 words
    const uint32_t* wb = reinterpret_cast<const uint32_t*>(&buf[2]);  // row g + 8
    const uint8_t* b = stages.Activations(step);
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      uint32_t(&set)[4] = a_sets[j % kSets];
      WgmmaWait<kSets - 1>();
#pragma unroll
      for (int r = 0; r < 4; ++r) PinRegister(set[r]);  // the old fragment lives until that wait
      set[0] = Fp8x2ToHalf2(wa[j]);  // MMA j takes word j (see the GEMV)
      set[1] = Fp8x2ToHalf2(wb[j]);
      set[2] = Fp8x2ToHalf2(wa[j] >> 16);
      set[3] = Fp8x2ToHalf2(wb[j] >> 16);
      WgmmaFence();
      Wgmma<kTileRows>(&acc[0][0], set, SmemDescriptor(b + j * (kTileRows / 8) * 256, /*lbo=*/128, /*sbo=*/256));
      WgmmaCommit();
    }
    // This warp has issued step's MMAs (at most kSets - 1 still run), so its MMAs of step - 1 are done.
    __syncwarp();
    if (step >= 1 && lane == 0) stages.Release(step - 1, &weights, vocab_row, load_acts);
  }
  WaitForAccumulators(acc);
  LaunchDependents();  // the epilogue may launch; it waits for this grid's partial statistics
  StoreWgmmaTile<kGemmTileRows, 1>(acc, token_tile, vocab_block, gridDim.x / token_tiles, write_logits, e,
                                   reinterpret_cast<float*>(stages.base));
}

// The FP8 x FP8 kernels' promotion: a few MMAs' sums, waited for, added into the fp32
// accumulators acc[0 .. N) (the tensor cores' own accumulation keeps ~14 bits).
template <int N>
__device__ __forceinline__ void AddPromoted(float (&fresh)[N][4], float (*acc)[4]) {
#pragma unroll
  for (int i = 0; i < N; ++i) {
#pragma unroll
    for (int r = 0; r < 4; ++r) {
      PinRegister(fresh[i][r]);
      acc[i][r] += fresh[i][r];
    }
  }
}

// FP8 x FP8: both operands in shared memory (the activations one TMA box of 128 rows x 128 bytes
// per part of a stage); per 128 columns and half of the batch rows, 4 m64n64k32 MMAs sum into
// fresh registers, which are then added into the fp32 accumulators (the tensor cores' own
// accumulation keeps ~14 bits: without this step logits moved by up to 1.5% of their rms over
// 5120 columns, with it 0.06%, against an fp64 sum of the same codes on an H100); the other
// warpgroups' MMAs keep the tensor cores busy meanwhile.
using Fp8Stages = Stages<2, kTileRows * kColumns, 2>;
constexpr int kHalfColumns = kTileRows / 2 / 8;  // accumulator groups of 8 batch rows per half

__global__ void __launch_bounds__(kThreads, 1)
    Fp8ActGemmKernel(const __grid_constant__ CUtensorMap weights, const __grid_constant__ CUtensorMap activations,
                     int steps, int token_tiles, bool write_logits, EpilogueParams e) {
  const Fp8Stages stages = MakeStages<Fp8Stages>(steps);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  int64_t token_tile, vocab_block;
  BlockTile(blockIdx.x, token_tiles, gridDim.x / token_tiles, &token_tile, &vocab_block);
  const int vocab_row = static_cast<int>(vocab_block * kVocabRows);
  const int token_row = static_cast<int>(token_tile * kTileRows);
  auto load_acts = [&](int step) {
    for (int sub = 0; sub < Fp8Stages::kSub; ++sub) {
      const int column = (step * Fp8Stages::kSub + sub) * kColumns;
      TensorCopyToShared(stages.Activations(step, sub), &activations, column, token_row, stages.Full(step));
    }
  };
  stages.Start(&weights, vocab_row, load_acts);

  const int group = warp / 4;  // vocab rows 64 group .. 64 group + 63 of the block
  float acc[2 * kHalfColumns][4];
  float stage_sum[kHalfColumns][4];  // one half's products over 128 columns
#pragma unroll
  for (int i = 0; i < 2 * kHalfColumns; ++i) acc[i][0] = acc[i][1] = acc[i][2] = acc[i][3] = 0.0f;
  for (int step = 0; step < steps; ++step) {
    stages.Wait(step);
#pragma unroll
    for (int sub = 0; sub < Fp8Stages::kSub; ++sub) {
      const uint8_t* a = stages.Weights(step, sub) + group * 64 * kColumns;
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        const uint8_t* b = stages.Activations(step, sub) + half * 64 * kColumns;
        WgmmaFence();
#pragma unroll
        for (int kk = 0; kk < kColumns / 32; ++kk) {
          WgmmaE4m3(&stage_sum[0][0], SwizzledDescriptor(a + kk * 32), SwizzledDescriptor(b + kk * 32), kk > 0);
        }
        WgmmaCommit();
        WgmmaWait<0>();
        AddPromoted(stage_sum, &acc[half * kHalfColumns]);
      }
    }
    if (lane == 0) stages.Release(step, &weights, vocab_row, load_acts);
  }
  LaunchDependents();  // the epilogue may launch; it waits for this grid's partial statistics
  StoreWgmmaTile<kGemmTileRows, 1>(acc, token_tile, vocab_block, gridDim.x / token_tiles, write_logits, e,
                                   reinterpret_cast<float*>(stages.base));
}

// FP8 x FP8 for calls that store no logits (argmax / logsumexp, and token logits of up to kMaxIds
// ids per row finished here): a warp-specialized, persistent kernel. One producer warpgroup (one thread issues the TMA loads) and three consumer
// warpgroups of 64 vocab rows x 128 batch rows (m64n128k32 MMAs), tiles of 192 vocab rows, 4 stages
// of 128 columns behind full / empty barriers, the same promotion as Fp8ActGemmKernel (bit-identical
// sums). The statistics are finished per tile through a small per-warp shared-memory transpose
// (one lane per batch row) instead of the tile store: on an H100 the kept kernel spent ~a third of
// its time there (kernels/bench/gpu_bench_results.md, "Session 17").
namespace stats {
constexpr int kConsumers = 3;
constexpr int kThreads = 128 * (kConsumers + 1);
constexpr int kTileVocab = 64 * kConsumers;
constexpr int kStages = 4;
constexpr int kWBytes = kTileVocab * kColumns;
constexpr int kABytes = kTileRows * kColumns;
constexpr int kStageBytes = kWBytes + kABytes;
constexpr int kCWarps = 4 * kConsumers;
constexpr int kScratchStride = 33;                // floats per vocab row of a warp's scratch
constexpr int kWarpScratch = 16 * kScratchStride;  // a warp's 16 vocab rows x 32 batch rows
constexpr int kMaxIds = 512 / kTileRows;  // requested ids per batch row (KernelsFinishTokenLogits)
// Stages, barriers, per-warp statistics ([kCWarps][128] each of max, argmax, sum), the tile's
// activation scales, the warps' scratch, the tile's requested ids.
constexpr int kSmemBytes = 1024 + kStages * kStageBytes + 2 * kStages * 8 + 3 * kCWarps * kTileRows * 4 +
                           kTileRows * 4 + kCWarps * kWarpScratch * 4 + kTileRows * kMaxIds * 4;
static_assert(kSmemBytes <= 227 * 1024, "fits the H100's shared memory per block");
}  // namespace stats

__device__ __forceinline__ void ConsumerBarrier() {
  asm volatile("bar.sync 1, %0;" ::"n"(128 * stats::kConsumers) : "memory");
}

__global__ void __launch_bounds__(stats::kThreads, 1)
    Fp8ActGemmStatsKernel(const __grid_constant__ CUtensorMap weights, const __grid_constant__ CUtensorMap activations,
                          int steps, int64_t token_tiles, int64_t vocab_tiles, EpilogueParams e) {
  using namespace stats;
  extern __shared__ uint8_t smem_unaligned[];
  uint8_t* base = AlignShared1024(smem_unaligned);
  uint64_t* full = reinterpret_cast<uint64_t*>(base + kStages * kStageBytes);
  uint64_t* empty = full + kStages;
  float* red_max = reinterpret_cast<float*>(empty + kStages);
  int32_t* red_arg = reinterpret_cast<int32_t*>(red_max + kCWarps * kTileRows);
  float* red_sum = reinterpret_cast<float*>(red_arg + kCWarps * kTileRows);
  float* tile_scales = red_sum + kCWarps * kTileRows;
  float* warp_scratch = tile_scales + kTileRows;
  int32_t* tile_ids = reinterpret_cast<int32_t*>(warp_scratch + kCWarps * kWarpScratch);  // [128][max ids]
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
      WaitForPrerequisites();  // the activations
      int stage = 0;
      uint32_t phase = 0;
      for (int64_t tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
        int64_t token_tile, vocab_tile;
        BlockTile(tile, token_tiles, vocab_tiles, &token_tile, &vocab_tile);
        for (int k = 0; k < steps; ++k) {
          BarrierWait(&empty[stage], phase ^ 1);
          uint8_t* w = base + stage * kStageBytes;
          BarrierExpectBytes(&full[stage], kStageBytes);
          TensorCopyToShared(w, &weights, k * kColumns, static_cast<int>(vocab_tile * kTileVocab), &full[stage]);
          TensorCopyToShared(w + kWBytes, &activations, k * kColumns, static_cast<int>(token_tile * kTileRows),
                             &full[stage]);
          if (++stage == kStages) stage = 0, phase ^= 1;
        }
      }
    }
    LaunchDependents();
    return;
  }
  IncreaseRegisters<160>();
  WaitForPrerequisites();  // the activation scales and token ids
  const int cw = wg - 1;                  // consumer warpgroup: vocab rows 64 cw .. of a tile
  const int warp = threadIdx.x / 32 - 4;  // consumer warp 0..11
  const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  const int ct = threadIdx.x - 128;  // consumer thread 0..383
  int stage = 0;
  uint32_t phase = 0;
  for (int64_t tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
    int64_t token_tile, vocab_tile;
    BlockTile(tile, token_tiles, vocab_tiles, &token_tile, &vocab_tile);
    const int64_t b0 = token_tile * kTileRows, v0 = vocab_tile * kTileVocab;
    // Read now, used after the main loop: the tile's activation scales and requested ids (every
    // consumer has passed the previous tile's last barrier, so none still reads them) and this
    // thread's rows' scales.
    if (ct < kTileRows) tile_scales[ct] = b0 + ct < e.rows ? e.act_scales[b0 + ct] : 0.0f;
    const int ids = e.kernel_token_logits ? e.max_token_ids : 0;  // (device memory: the backend copies them)
    for (int i = ct; i < kTileRows * ids; i += 128 * kConsumers) {
      tile_ids[i] = b0 + i / ids < e.rows ? e.token_ids[b0 * ids + i] : -1;
    }
    const int64_t va = v0 + 64 * cw + 16 * (warp & 3) + g, vb = va + 8;
    const bool ina = va < e.vocab, inb = vb < e.vocab;
    const float rsa = ina && e.row_scales != nullptr ? e.row_scales[va] : 1.0f;
    const float rsb = inb && e.row_scales != nullptr ? e.row_scales[vb] : 1.0f;
    float acc[kTileRows / 8][4], fresh[kTileRows / 8][4];
#pragma unroll
    for (int i = 0; i < kTileRows / 8; ++i) acc[i][0] = acc[i][1] = acc[i][2] = acc[i][3] = 0.0f;
    for (int k = 0; k < steps; ++k) {
      BarrierWait(&full[stage], phase);
      const uint8_t* a = base + stage * kStageBytes + cw * 64 * kColumns;
      const uint8_t* b = base + stage * kStageBytes + kWBytes;
      WgmmaFence();
#pragma unroll
      for (int kk = 0; kk < kColumns / 32; ++kk) {
        WgmmaE4m3N128(&fresh[0][0], SwizzledDescriptor(a + kk * 32), SwizzledDescriptor(b + kk * 32), kk > 0);
      }
      WgmmaCommit();
      WgmmaWait<0>();
      if (lane == 0) BarrierArrive(&empty[stage]);  // the MMAs have read the stage
      AddPromoted(fresh, acc);
      if (++stage == kStages) stage = 0, phase ^= 1;
    }
    ConsumerBarrier();  // tile_scales and tile_ids written
    // Per round of 32 batch rows: the thread's finished logits into its warp's scratch, then lane c
    // takes batch row c over the warp's 16 vocab rows (and the logits of its requested ids among
    // them). Soft-capping is decided once per tile.
    auto reduce_rows = [&](auto softcap) {
      float* scratch = warp_scratch + warp * kWarpScratch;
      const int row0 = 64 * cw + 16 * (warp & 3);
#pragma unroll
      for (int round = 0; round < 4; ++round) {
#pragma unroll
        for (int n = 0; n < 4; ++n) {
#pragma unroll
          for (int j = 0; j < 2; ++j) {
            const int nt = 4 * round + n, lc = 8 * n + 2 * t + j;
            const float inv = tile_scales[32 * round + lc];
            const float la = FinishLogitAs<decltype(softcap)::value>(acc[nt][j] * inv, rsa, e.logit_scale, e.softcap);
            const float lb =
                FinishLogitAs<decltype(softcap)::value>(acc[nt][2 + j] * inv, rsb, e.logit_scale, e.softcap);
            scratch[g * kScratchStride + lc] = ina ? la : -INFINITY;
            scratch[(g + 8) * kScratchStride + lc] = inb ? lb : -INFINITY;
          }
        }
        __syncwarp();
        float l[16];
#pragma unroll
        for (int r = 0; r < 16; ++r) l[r] = scratch[r * kScratchStride + lane];
        float m = l[0];
        int best = 0;
#pragma unroll
        for (int r = 1; r < 16; ++r) {
          if (l[r] > m) m = l[r], best = r;  // ascending ids: ties keep the lowest
        }
        float sum = 0.0f;
        if (m != -INFINITY) {
#pragma unroll
          for (int r = 0; r < 16; ++r) sum += __expf(l[r] - m);
        }
        const int c = 32 * round + lane;
        for (int i = 0; i < ids; ++i) {
          const int64_t at = int64_t{tile_ids[c * ids + i]} - (v0 + row0);  // unused slots: -1
          if (at >= 0 && at < 16) {
            float x = l[0];
#pragma unroll
            for (int r = 1; r < 16; ++r) x = at == r ? l[r] : x;
            e.token_logits[(b0 + c) * ids + i] = x;
          }
        }
        red_max[warp * kTileRows + c] = m;
        red_arg[warp * kTileRows + c] = static_cast<int32_t>(v0 + row0 + best);
        red_sum[warp * kTileRows + c] = sum;
        __syncwarp();  // the scratch is rewritten next round
      }
    };
    if (e.softcap > 0.0f) {
      reduce_rows(std::true_type{});
    } else {
      reduce_rows(std::false_type{});
    }
    ConsumerBarrier();
    if (ct < kTileRows && b0 + ct < e.rows) {  // one thread per batch row: over the 12 warps
      Stat st{red_max[ct], red_arg[ct], red_sum[ct]};
      for (int w = 1; w < kCWarps; ++w) {
        st = Combine(st, Stat{red_max[w * kTileRows + ct], red_arg[w * kTileRows + ct], red_sum[w * kTileRows + ct]});
      }
      const int64_t at = (b0 + ct) * vocab_tiles + vocab_tile;
      e.part_max[at] = st.m;
      e.part_arg[at] = st.a;
      e.part_sum[at] = st.s;
    }
  }
  LaunchDependents();  // the epilogue may launch; it waits for this grid's partial statistics
}

// A GEMM's steps over the hidden size (columns past it are TMA's zeros).
template <typename S>
int Steps(const Fp8GemmOperands& ops) {
  constexpr int kStepColumns = S::kSub * kColumns;
  return static_cast<int>((ops.hidden_pad + kStepColumns - 1) / kStepColumns);
}

}  // namespace

cudaError_t PrepareFp8Gemms() {
  cudaError_t err = cudaFuncSetAttribute(Fp8GemmKernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         HalfStages::kSmemBytes);
  if (err != cudaSuccess) return err;
  err = cudaFuncSetAttribute(Fp8ActGemmKernel, cudaFuncAttributeMaxDynamicSharedMemorySize, Fp8Stages::kSmemBytes);
  if (err != cudaSuccess) return err;
  return cudaFuncSetAttribute(Fp8ActGemmStatsKernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                              stats::kSmemBytes);
}

cudaError_t DescribeFp8Gemm(const uint8_t* codes, int64_t vocab_pad, int64_t hidden_pad, const uint8_t* fp8_rows,
                            int64_t fp8_rows_capacity, Fp8GemmOperands* out) {
  if (vocab_pad % 16 != 0 || hidden_pad % 16 != 0 || (fp8_rows != nullptr && fp8_rows_capacity < 1)) {
    return cudaErrorInvalidValue;
  }
  *out = Fp8GemmOperands{};
  out->vocab_pad = vocab_pad;
  out->hidden_pad = hidden_pad;
  cudaError_t err = DescribeByteMatrix(codes, hidden_pad, vocab_pad, kVocabRows, &out->weights);
  if (err != cudaSuccess || fp8_rows == nullptr) return err;
  out->fp8_rows_capacity = fp8_rows_capacity;
  err = DescribeByteMatrix(codes, hidden_pad, vocab_pad, stats::kTileVocab, &out->stats_weights);
  if (err != cudaSuccess) return err;
  int device = 0;
  err = cudaGetDevice(&device);
  if (err == cudaSuccess) err = cudaDeviceGetAttribute(&out->sms, cudaDevAttrMultiProcessorCount, device);
  if (err != cudaSuccess) return err;
  return DescribeByteMatrix(fp8_rows, hidden_pad, fp8_rows_capacity, kTileRows, &out->fp8_rows);
}

int64_t Fp8GemmPartials(int64_t vocab_pad) { return (vocab_pad + kVocabRows - 1) / kVocabRows; }

int64_t Fp8GemmMaxPartials(int64_t vocab_pad) { return (vocab_pad + stats::kTileVocab - 1) / stats::kTileVocab; }

bool Fp8ActGemmStoresNoLogits(const EpilogueParams& p) {
  return !p.keep_logits && (p.max_token_ids == 0 || (p.kernel_token_logits && p.max_token_ids <= stats::kMaxIds));
}

int64_t Fp8ActGemmPartialRows(const EpilogueParams& p) {
  return Fp8ActGemmStoresNoLogits(p) ? stats::kTileVocab : kVocabRows;
}

int64_t Fp8ActGemmPartials(int64_t vocab_pad, const EpilogueParams& p) {
  const int64_t rows = Fp8ActGemmPartialRows(p);
  return (vocab_pad + rows - 1) / rows;
}

cudaError_t LaunchFp8Gemm(const Fp8GemmOperands& ops, const __half* act, const EpilogueParams& p,
                          cudaStream_t stream) {
  if (!Fp8GemmAvailable() || p.rows <= kGemvMaxRows || ops.vocab_pad == 0 || p.act_scales == nullptr) {
    return cudaErrorInvalidValue;
  }
  const int64_t token_tiles = (p.rows + kGemmTileRows - 1) / kGemmTileRows;
  const bool write_logits = p.keep_logits || (p.max_token_ids > 0 && !p.kernel_token_logits);
  return LaunchAfterPrevious(Fp8GemmKernel, dim3(static_cast<unsigned>(Fp8GemmPartials(ops.vocab_pad) * token_tiles)),
                             dim3(kThreads), HalfStages::kSmemBytes, stream, ops.weights, Steps<HalfStages>(ops), act,
                             GemvActivationStride(ops.hidden_pad), static_cast<int>(token_tiles), write_logits, p);
}

cudaError_t LaunchFp8ActGemm(const Fp8GemmOperands& ops, const EpilogueParams& p, cudaStream_t stream) {
  if (!Fp8GemmAvailable() || p.rows <= 0 || p.rows > ops.fp8_rows_capacity || p.act_scales == nullptr) {
    return cudaErrorInvalidValue;
  }
  const int64_t token_tiles = (p.rows + kGemmTileRows - 1) / kGemmTileRows;
  if (Fp8ActGemmStoresNoLogits(p) && ops.sms > 0) {
    const int64_t vocab_tiles = Fp8ActGemmPartials(ops.vocab_pad, p);
    const int64_t blocks = std::min<int64_t>(ops.sms, token_tiles * vocab_tiles);
    return LaunchAfterPrevious(Fp8ActGemmStatsKernel, dim3(static_cast<unsigned>(blocks)), dim3(stats::kThreads),
                               stats::kSmemBytes, stream, ops.stats_weights, ops.fp8_rows, Steps<HalfStages>(ops),
                               token_tiles, vocab_tiles, p);
  }
  const bool write_logits = p.keep_logits || (p.max_token_ids > 0 && !p.kernel_token_logits);
  return LaunchAfterPrevious(Fp8ActGemmKernel,
                             dim3(static_cast<unsigned>(Fp8GemmPartials(ops.vocab_pad) * token_tiles)), dim3(kThreads),
                             Fp8Stages::kSmemBytes, stream, ops.weights, ops.fp8_rows, Steps<Fp8Stages>(ops),
                             static_cast<int>(token_tiles), write_logits, p);
}

}  // namespace lmhead::cuda
