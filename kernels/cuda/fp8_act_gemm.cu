#include "kernels/cuda/fp8_act_gemm.h"

#include "kernels/cuda/dependent_launch.h"
#include "kernels/cuda/fp8_gemv.h"
#include "kernels/cuda/wgmma.cuh"
#include "kernels/cuda/wgmma_tile.cuh"

namespace lmhead::cuda {
namespace {

// A block computes 256 vocab rows x 128 batch rows with 16 warps (4 warpgroups of 64 vocab rows)
// over kStages stages of 128 columns, each stage one TMA box of weights (256 x 128 bytes) and one
// of activations (128 x 128) completing its barrier. Per stage and half of the batch rows, 4
// m64n64k32 MMAs sum into fresh registers, which are then added into the fp32 accumulators: the
// tensor cores' own accumulation keeps ~14 bits (without this step logits moved by up to 1.5% of
// their rms over 5120 columns, with it 0.06%, against an fp64 sum of the same codes on an H100);
// the other warpgroups' MMAs keep the tensor cores busy meanwhile. The last warp done with a
// stage refills it (a shared counter per stage; no block barrier in the loop).
constexpr int kWarps = 16;
constexpr int kThreads = kWarps * 32;
constexpr int kVocabRows = 256;
constexpr int kColumns = 128;  // k bytes per stage (one 128-byte swizzled row per operand row)
constexpr int kStages = 4;
constexpr int kWeightBytes = kVocabRows * kColumns;
constexpr int kActBytes = static_cast<int>(kGemmTileRows) * kColumns;
constexpr int kStageBytes = kWeightBytes + kActBytes;
constexpr int kHalfColumns = static_cast<int>(kGemmTileRows) / 2 / 8;  // accumulator groups of 8 batch rows per half
// + 1024: the swizzled boxes need 1024-byte alignment, which the dynamic allocation lacks.
constexpr int kSmemBytes = 1024 + kStages * kStageBytes + kStages * 8;
static_assert(kSmemBytes <= 227 * 1024, "fits the H100's shared memory per block");
static_assert(TileStoreShape<kGemmTileRows, 1>::kBytes <= kStages * kStageBytes, "the finished tile fits the stages");
static_assert(kVocabRows == TileStoreShape<kGemmTileRows, 1>::kRows, "one partial statistic per block");

__global__ void __launch_bounds__(kThreads, 1)
    Fp8ActGemmKernel(const __grid_constant__ CUtensorMap weights, const __grid_constant__ CUtensorMap activations,
                     int steps, int token_tiles, bool write_logits, EpilogueParams e) {
  extern __shared__ uint8_t smem_unaligned[];
  uint8_t* smem = reinterpret_cast<uint8_t*>((reinterpret_cast<uintptr_t>(smem_unaligned) + 1023) & ~uintptr_t{1023});
  uint64_t* full = reinterpret_cast<uint64_t*>(smem + kStages * kStageBytes);
  __shared__ int released[kStages];  // warps done with the steps each stage held (kWarps per step)
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  int64_t token_tile, vocab_block;
  BlockTile(blockIdx.x, token_tiles, gridDim.x / token_tiles, &token_tile, &vocab_block);
  const int vocab_row = static_cast<int>(vocab_block * kVocabRows);
  const int token_row = static_cast<int>(token_tile * kGemmTileRows);
  auto weight_stage = [&](int stage) { return smem + stage * kStageBytes; };
  auto act_stage = [&](int stage) { return smem + stage * kStageBytes + kWeightBytes; };
  auto load_weights = [&](int step) {
    const int s = step % kStages;
    BarrierExpectBytes(&full[s], kStageBytes);
    TensorCopyToShared(weight_stage(s), &weights, step * kColumns, vocab_row, &full[s]);
  };
  auto load_activations = [&](int step) {
    const int s = step % kStages;
    TensorCopyToShared(act_stage(s), &activations, step * kColumns, token_row, &full[s]);
  };
  const int first = steps < kStages ? steps : kStages;
  if (threadIdx.x < kStages) released[threadIdx.x] = 0;
  if (threadIdx.x == 0) {
    for (int s = 0; s < kStages; ++s) BarrierInit(&full[s], 1);
    for (int step = 0; step < first; ++step) load_weights(step);  // they do not depend on the previous kernel
  }
  WaitForPrerequisites();  // the activations and their scales
  if (threadIdx.x == 0) {
    for (int step = 0; step < first; ++step) load_activations(step);
  }
  __syncthreads();  // the barriers and counters are initialized

  const int group = warp / 4;  // vocab rows 64 group .. 64 group + 63 of the block
  float acc[2 * kHalfColumns][4];
  float stage_sum[kHalfColumns][4];  // one half's products over one stage
#pragma unroll
  for (int i = 0; i < 2 * kHalfColumns; ++i) acc[i][0] = acc[i][1] = acc[i][2] = acc[i][3] = 0.0f;
  for (int step = 0; step < steps; ++step) {
    const int s = step % kStages;
    BarrierWait(&full[s], (step / kStages) & 1);
    const uint8_t* a = weight_stage(s) + group * 64 * kColumns;
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const uint8_t* b = act_stage(s) + half * 64 * kColumns;
      WgmmaFence();
#pragma unroll
      for (int kk = 0; kk < kColumns / 32; ++kk) {
        WgmmaE4m3(&stage_sum[0][0], SwizzledDescriptor(a + kk * 32), SwizzledDescriptor(b + kk * 32), kk > 0);
      }
      WgmmaCommit();
      WgmmaWait<0>();
#pragma unroll
      for (int nt = 0; nt < kHalfColumns; ++nt) {
#pragma unroll
        for (int r = 0; r < 4; ++r) {
          PinRegister(stage_sum[nt][r]);
          acc[half * kHalfColumns + nt][r] += stage_sum[nt][r];
        }
      }
    }
    if (lane == 0 && atomicAdd(&released[s], 1) == kWarps * (step / kStages + 1) - 1 && step + kStages < steps) {
      load_weights(step + kStages);  // the last warp done with the stage refills it
      load_activations(step + kStages);
    }
  }
  LaunchDependents();  // the epilogue may launch; it waits for this grid's partial statistics
  StoreWgmmaTile<kGemmTileRows, 1>(acc, token_tile, vocab_block, gridDim.x / token_tiles, write_logits, e,
                                   reinterpret_cast<float*>(smem));
}

}  // namespace

cudaError_t PrepareFp8ActGemm() {
  return cudaFuncSetAttribute(Fp8ActGemmKernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmemBytes);
}

cudaError_t DescribeFp8ActGemm(const uint8_t* codes, int64_t vocab_pad, int64_t hidden_pad, const uint8_t* act,
                               int64_t act_rows, Fp8ActGemmOperands* out) {
  if (vocab_pad % 16 != 0 || hidden_pad % 16 != 0 || act_rows < 1) return cudaErrorInvalidValue;
  *out = Fp8ActGemmOperands{};
  out->vocab_pad = vocab_pad;
  out->hidden_pad = hidden_pad;
  out->act_rows = act_rows;
  cudaError_t err = DescribeByteMatrix(codes, hidden_pad, vocab_pad, kVocabRows, &out->weights);
  if (err != cudaSuccess) return err;
  return DescribeByteMatrix(act, hidden_pad, act_rows, static_cast<int>(kGemmTileRows), &out->activations);
}

cudaError_t LaunchFp8ActGemm(const Fp8ActGemmOperands& ops, const EpilogueParams& p, cudaStream_t stream) {
  if (!Fp8GemmAvailable() || p.rows <= 0 || p.rows > ops.act_rows || p.act_scales == nullptr) {
    return cudaErrorInvalidValue;
  }
  const int64_t token_tiles = (p.rows + kGemmTileRows - 1) / kGemmTileRows;
  const int64_t blocks = Fp8GemmPartials(ops.vocab_pad) * token_tiles;
  const int steps = static_cast<int>((ops.hidden_pad + kColumns - 1) / kColumns);
  const bool write_logits = p.keep_logits || p.max_token_ids > 0;
  return LaunchAfterPrevious(Fp8ActGemmKernel, dim3(static_cast<unsigned>(blocks)), dim3(kThreads), kSmemBytes,
                             stream, ops.weights, ops.activations, steps, static_cast<int>(token_tiles), write_logits,
                             p);
}

}  // namespace lmhead::cuda
