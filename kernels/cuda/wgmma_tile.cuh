// The wgmma kernels' tile epilogue, shared by the wgmma GEMV (fp8_gemv.cu) and the large-batch
// FP8 GEMMs (fp8_gemm.cu). CUDA sources only; internal to the module.
//
// A block is 16 warps over 256 vocab rows: warp w holds the accumulators of vocab rows
// 16w .. 16w + 15 in the wgmma D layout (wgmma.cuh).
#ifndef LMHEAD_KERNELS_CUDA_WGMMA_TILE_CUH_
#define LMHEAD_KERNELS_CUDA_WGMMA_TILE_CUH_

#include <cstdint>
#include <type_traits>

#include "kernels/cuda/kernels.h"
#include "kernels/cuda/logit_stats.cuh"

namespace lmhead::cuda {

// The wgmma kernels' store, after the main loop (every warp's MMAs done: shared memory is free).
// The block's 256 x kColumns logits (vocab rows x batch rows of token tile `token_tile`; with two
// planes a row's hi and lo columns summed) are finished (FinishLogit; -inf past the head or the
// batch) into shared memory and reduced to one partial statistic per batch row (e.part_*[row,
// vocab block]) by kThreadsPerColumn threads per row, then written to e.raw when write_logits (the
// rows e.store_rows flags; with e.topk_bound only where the block's second-largest logit reaches
// the row's bound, see EpilogueParams; one warp per batch row: 1 KB runs); with
// e.kernel_token_logits the requested ids in the block's range get their logits in
// e.token_logits. (Reducing the logits in registers with warp shuffles -- three rounds of Stat
// combines per batch row -- took as long as the MMAs: 2.1 of 4.1 ms at 131072x5120, B = 1024,
// H100.)
template <int N, int PLANES>
struct TileStoreShape {
  static constexpr int kRows = 256;                    // vocab rows per block (16 warps x 16)
  static constexpr int kColumns = N / PLANES;          // batch rows per token tile
  // A power of two (the reduction's shuffles), at most 32 and 512 / kColumns.
  static constexpr int kThreadsPerColumn = 512 / kColumns >= 32 ? 32 : 512 / kColumns >= 16 ? 16
                                           : 512 / kColumns >= 8 ? 8 : 4;
  static constexpr int kStride = kRows + kThreadsPerColumn;  // floats per column: conflict-free reads
  // The logits, then 1 / scales and whether each batch row's logits are stored.
  static constexpr int kBytes = (kColumns * kStride + 2 * kColumns) * 4;
};

template <int N, int PLANES>
__device__ __forceinline__ void StoreWgmmaTile(const float (&acc)[N / 8][4], int64_t token_tile, int64_t vocab_block,
                                               int64_t partials, bool write_logits, const EpilogueParams& e,
                                               float* smem) {
  using T = TileStoreShape<N, PLANES>;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int g = lane >> 2, t = lane & 3;
  float* logits = smem;                                  // [kColumns][kStride]
  float* inv_scales = smem + T::kColumns * T::kStride;  // [kColumns]
  int* stored = reinterpret_cast<int*>(inv_scales + T::kColumns);  // [kColumns]: store_row
  const int64_t b0 = token_tile * T::kColumns, v0 = vocab_block * T::kRows;
  // e.kernel_token_logits: thread i takes requested id i of the tile's rows (at most one each, see
  // KernelsFinishTokenLogits); read first (the ids may be in mapped host memory), used below.
  const int id_slot = static_cast<int>(threadIdx.x), id_row = e.max_token_ids > 0 ? id_slot / e.max_token_ids : 0;
  int32_t id = -1;
  if (e.kernel_token_logits && id_slot < T::kColumns * e.max_token_ids && b0 + id_row < e.rows) {
    id = e.token_ids[b0 * e.max_token_ids + id_slot];
  }
  // Sparse store: thread (c, q) reads batch row b0 + c's published bound now (see below), so
  // that the finishing hides the load's latency.
  constexpr int kPer = T::kThreadsPerColumn;
  const int c = threadIdx.x / kPer, q = threadIdx.x % kPer;
  const bool sparse = write_logits && e.topk_bound != nullptr;
  const bool live = c < T::kColumns && b0 + c < e.rows;
  uint32_t* bound_words = sparse && live ? e.topk_bound + (b0 + c) * (e.top_k + 1) : nullptr;
  const uint32_t published = bound_words != nullptr ? __ldcg(bound_words) : 0;
  // Whether batch row b0 + threadIdx.x's logits are stored (read now, used after the finishing).
  bool store_row = write_logits && threadIdx.x < T::kColumns && b0 + threadIdx.x < e.rows;
  if (store_row && e.store_rows != nullptr) store_row = e.store_rows[b0 + threadIdx.x] != 0;
  __syncthreads();  // every warp's MMAs are done with the shared memory reused here
  if (threadIdx.x < T::kColumns) {
    inv_scales[threadIdx.x] = b0 + threadIdx.x < e.rows ? e.act_scales[b0 + threadIdx.x] : 0.0f;
    stored[threadIdx.x] = store_row;
  }
  __syncthreads();
  // Accumulator d[nt][j] is vocab row 16 warp + g + 8 (j / 2), MMA column 8 nt + 2t + j % 2: with
  // two planes the hi and lo of batch row 4 nt + t, with one batch row 8 nt + 2t + j % 2. Soft-capping
  // is decided once for the whole loop (FinishLogitAs).
  auto finish = [&](auto softcap) {
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int r = warp * 16 + g + 8 * half;
      const int64_t v = v0 + r;
      const bool in = v < e.vocab;
      const float row_scale = in && e.row_scales != nullptr ? e.row_scales[v] : 1.0f;
#pragma unroll
      for (int nt = 0; nt < N / 8; ++nt) {
#pragma unroll
        for (int j = 0; j < 2 / PLANES; ++j) {
          const int c = PLANES == 2 ? 4 * nt + t : 8 * nt + 2 * t + j;
          const float product = PLANES == 2 ? acc[nt][2 * half] + acc[nt][2 * half + 1] : acc[nt][2 * half + j];
          const float l = FinishLogitAs<decltype(softcap)::value>(product * inv_scales[c], row_scale, e.logit_scale,
                                                                   e.softcap);
          logits[c * T::kStride + r] = in && b0 + c < e.rows ? l : -INFINITY;
        }
      }
    }
  };
  if (e.softcap > 0.0f) {
    finish(std::true_type{});
  } else {
    finish(std::false_type{});
  }
  __syncthreads();
  if (id >= v0 && id < v0 + T::kRows) e.token_logits[b0 * e.max_token_ids + id_slot] = logits[id_row * T::kStride + (id - v0)];
  // kThreadsPerColumn threads per batch row (a whole warp's lanes, or a group of them), thread q
  // taking vocab rows q, q + kThreadsPerColumn, ...: the row's statistic and its second-largest
  // logit (ties: the maximum's value again).
  if (c < T::kColumns) {  // (8 columns: only 256 threads take part)
    const float* column = logits + c * T::kStride;
    float m = -INFINITY, second = -INFINITY;
    int arg = q;
#pragma unroll 8
    for (int r = q; r < T::kRows; r += kPer) {
      const float l = column[r];
      second = fmaxf(second, fminf(l, m));
      if (l > m) m = l, arg = r;  // ascending ids: ties keep the lowest
    }
    float sum = 0.0f;
    if (m != -INFINITY) {
#pragma unroll 8
      for (int r = q; r < T::kRows; r += kPer) sum += expf(column[r] - m);
    }
    Stat st{m, static_cast<int32_t>(v0 + arg), sum};
#pragma unroll
    for (int offset = 1; offset < kPer; offset *= 2) {
      const Stat other = ShuffleXorStat(st, offset);
      second = fmaxf(fmaxf(second, __shfl_xor_sync(0xffffffffu, second, offset)), fminf(st.m, other.m));
      st = Combine(st, other);
    }
    const int64_t at = (b0 + c) * partials + vocab_block;
    if (q == 0 && live) {
      e.part_max[at] = st.m;
      e.part_arg[at] = st.a;
      e.part_sum[at] = st.s;
    }
    if (sparse) {
      // Per batch row: word 0 a published bound, then k slots holding distinct logits (block i's
      // maximum goes into slot i % k, its second largest into slot (i + 1) % k), so that once all
      // k are set their minimum is at most the row's k-th largest logit (an unset slot, 0, makes it
      // 0: everything is stored). Reading the k slots takes a round trip on the block's way out, so
      // blocks take the published bound (the largest of such minima seen) unless it is unset (the
      // first wave) or they are the ones that refresh it.
      if (q == 0 && live) {
        atomicMax(&bound_words[1 + vocab_block % e.top_k], FloatKey(st.m));
        atomicMax(&bound_words[1 + (vocab_block + 1) % e.top_k], FloatKey(second));
      }
      constexpr int kRefreshEvery = 8;  // (every block, every 8th, every 32nd, never: 8th and 32nd best)
      const bool refresh = live && (published == 0 || vocab_block % kRefreshEvery == 0);
      uint32_t bound = refresh ? 0xffffffffu : published;
      for (int i = q; refresh && i < e.top_k; i += kPer) bound = min(bound, __ldcg(&bound_words[1 + i]));
#pragma unroll
      for (int offset = 1; offset < kPer; offset *= 2) bound = min(bound, __shfl_xor_sync(0xffffffffu, bound, offset));
      if (q == 0 && live) {
        if (refresh && bound > published) atomicMax(bound_words, bound);
        const bool keep = stored[c] && FloatKey(second) >= bound;
        stored[c] = keep;
        e.range_stored[at] = keep;
      }
    }
  }
  if (write_logits) {  // warp w stores batch rows w, w + 16, ...: each a run of up to 256 floats
    __syncthreads();
    const int run = static_cast<int>(min(static_cast<int64_t>(T::kRows), e.vocab - v0));
    for (int col = warp; col < T::kColumns; col += 16) {
      if (!stored[col]) continue;
      float* out = e.raw + (b0 + col) * e.ld + v0;
      for (int r = lane; r < run; r += 32) out[r] = logits[col * T::kStride + r];
    }
  }
}

}  // namespace lmhead::cuda

#endif  // LMHEAD_KERNELS_CUDA_WGMMA_TILE_CUH_
