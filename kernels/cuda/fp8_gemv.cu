#include "kernels/cuda/fp8_gemv.h"

#include <cuda_fp8.h>

#include <cfloat>
#include <cmath>
#include <cub/block/block_reduce.cuh>

#include "kernels/cuda/dependent_launch.h"
#include "kernels/cuda/logit_stats.cuh"
#include "kernels/cuda/wgmma.cuh"

namespace lmhead::cuda {
namespace {

constexpr int kActThreads = 1024;
constexpr int kActPerThread = 8;  // row elements each thread of the activation kernel keeps in registers
constexpr int kWarps = 8;     // warps per block of the mma.sync GEMV; each computes 16 vocab rows
constexpr int kStep = 128;    // weight bytes of one row a warp reads per step (4 threads x 32)
constexpr int kMaxChunk = 512;  // most activation columns (k) staged in shared memory at a time
constexpr int kSmemPad = 32;  // fp16 elements after each staged column (bank-conflict-free reads)

// Stored position of real column k in an activation plane for the mma.sync GEMV: within each
// 128-column step, lane t's 32 columns [32t, 32t + 32) are kept as 4 runs of 8, run p at
// p * 32 + t * 8, so that the 4 lanes of a row read 64 contiguous bytes for their words 2p and
// 2p + 1 (see the GEMV).
__device__ __forceinline__ int64_t PlanePosition(int64_t k) {
  const int64_t in_step = k % kStep;
  const int t = static_cast<int>(in_step / 32), p = static_cast<int>(in_step % 32) / 8, i = static_cast<int>(in_step % 8);
  return k - in_step + p * 32 + t * 8 + i;
}

// The same for the wgmma GEMV: each 128-column step holds the 8 k16 blocks of its
// MMAs one after another, block 2p + jj as the MMA's k order: real column 32t + 8p + 4jj + 2h + e
// is the MMA's k = 8h + 2t + e (see the GEMV's fragment mapping). A block's 8 k of one half h are
// then one 16-byte row of a wgmma core matrix.
__device__ __forceinline__ int64_t WgmmaPlanePosition(int64_t k) {
  const int in_step = static_cast<int>(k % kStep);
  const int t = in_step / 32, p = in_step % 32 / 8, jj = in_step % 8 / 4, h = in_step % 4 / 2, e = in_step % 2;
  return k - in_step + (2 * p + jj) * 16 + h * 8 + 2 * t + e;
}

// One block per row. x may be pinned host memory read over PCIe: every element the block needs is
// requested up front (kActPerThread independent loads per thread), so a row costs about one
// round trip, and is read once.
__global__ void __launch_bounds__(kActThreads) GemvActivationsKernel(const float* __restrict__ x, int64_t hidden,
                                                                     int64_t stride, int planes,
                                                                     bool wgmma_layout,
                                                                     __half* __restrict__ act,
                                                                     float* __restrict__ inv_scales) {
  LaunchDependents();  // the GEMV may start streaming weights now; it waits for these planes
  using Reduce = cub::BlockReduce<float, kActThreads>;
  __shared__ typename Reduce::TempStorage temp;
  __shared__ float shared_amax;
  const int64_t b = blockIdx.x;
  const float* row = x + b * hidden;
  float v[kActPerThread];
  float amax = 0.0f;
#pragma unroll
  for (int j = 0; j < kActPerThread; ++j) {
    const int64_t i = threadIdx.x + j * int64_t{kActThreads};
    v[j] = i < hidden ? row[i] : 0.0f;
  }
#pragma unroll
  for (int j = 0; j < kActPerThread; ++j) amax = fmaxf(amax, fabsf(v[j]));
  for (int64_t i = threadIdx.x + kActPerThread * int64_t{kActThreads}; i < hidden; i += kActThreads) {
    amax = fmaxf(amax, fabsf(row[i]));  // rows wider than the registers hold
  }
  amax = Reduce(temp).Reduce(amax, [](float a, float c) { return fmaxf(a, c); });
  if (threadIdx.x == 0) shared_amax = amax;
  __syncthreads();
  amax = shared_amax;
  // amax = m * 2^e with m in [0.5, 1): s = 2^(14 - e) puts amax * s in [2^13, 2^14).
  int e = 14;
  if (amax > 0.0f && isfinite(amax)) {
    frexpf(amax, &e);
    e = max(e, -100);  // keeps s finite for denormal-sized rows
  }
  const float s = ldexpf(1.0f, 14 - e);
  __half* hi = act + planes * b * stride;
  __half* lo = hi + stride;  // planes == 2 only
  auto put = [&](int64_t i, float value) {
    const float scaled = value * s;  // exact: s is a power of two
    const __half h = __float2half_rn(scaled);
    const int64_t at = wgmma_layout ? WgmmaPlanePosition(i) : PlanePosition(i);
    hi[at] = h;
    if (planes == 2) lo[at] = __float2half_rn(scaled - __half2float(h));
  };
#pragma unroll
  for (int j = 0; j < kActPerThread; ++j) {
    const int64_t i = threadIdx.x + j * int64_t{kActThreads};
    if (i < hidden) put(i, v[j]);
  }
  for (int64_t i = threadIdx.x + kActPerThread * int64_t{kActThreads}; i < hidden; i += kActThreads) put(i, row[i]);
  if (threadIdx.x == 0) inv_scales[b] = ldexpf(1.0f, e - 14);
}

__device__ __forceinline__ uint4 LoadStreaming(const uint8_t* p) {
  uint4 v;
  asm("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
      : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
      : "l"(p));
  return v;
}

// Two E4M3 codes (low byte first) -> fp16x2 (low half first).
__device__ __forceinline__ uint32_t Fp8x2ToHalf2(uint32_t two) {
  const __half2_raw h = __nv_cvt_fp8x2_to_halfraw2(static_cast<__nv_fp8x2_storage_t>(two & 0xffffu), __NV_E4M3);
  return static_cast<uint32_t>(h.x) | (static_cast<uint32_t>(h.y) << 16);
}

__device__ __forceinline__ void Mma(float (&c)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3, uint32_t b0,
                                    uint32_t b1) {
  asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

__device__ __forceinline__ void CopyAsync16(void* smem, const void* global) {
  const uint32_t to = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(to), "l"(global));
}

// The GEMV's store for up to kGemvFusedRows rows: logits of the warp's tile and the block's
// partial statistics.
template <int NT>
__device__ __forceinline__ void FinishTile(const float (&acc)[NT][4], bool active, int64_t tile,
                                           const EpilogueParams& e) {
  const int rows = static_cast<int>(e.rows);
  const int lane = threadIdx.x & 31;
  const int g = lane >> 2, t = lane & 3;
  __shared__ Stat warp_stats[kWarps][4 * NT];
  const int warp = threadIdx.x >> 5;
#pragma unroll
  for (int nt = 0; nt < NT; ++nt) {
    const int b = 4 * nt + t;
    Stat st{-FLT_MAX, 0, 0.0f};
    if (active && b < rows) {
      const float inv_scale = e.act_scales[b];
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        const int64_t v = tile * 16 + g + 8 * half;
        if (v >= e.vocab) continue;
        const float l = FinishLogit((acc[nt][2 * half] + acc[nt][2 * half + 1]) * inv_scale,
                                    e.row_scales != nullptr ? e.row_scales + v : nullptr, e.logit_scale, e.softcap);
        e.raw[b * e.ld + v] = l;
        st = Combine(st, StatOf(l, v));
      }
    }
    // Lanes 4g + t hold the same batch row for g = 0..7.
#pragma unroll
    for (int offset = 4; offset < 32; offset *= 2) {
      const Stat other{__shfl_xor_sync(0xffffffffu, st.m, offset), __shfl_xor_sync(0xffffffffu, st.a, offset),
                       __shfl_xor_sync(0xffffffffu, st.s, offset)};
      st = Combine(st, other);
    }
    if (g == 0) warp_stats[warp][b] = st;
  }
  __syncthreads();
  if (threadIdx.x < rows) {
    Stat st = warp_stats[0][threadIdx.x];
#pragma unroll
    for (int i = 1; i < kWarps; ++i) st = Combine(st, warp_stats[i][threadIdx.x]);
    const int64_t at = threadIdx.x * static_cast<int64_t>(gridDim.x) + blockIdx.x;
    e.part_max[at] = st.m;
    e.part_arg[at] = st.a;
    e.part_sum[at] = st.s;
  }
}

// Each warp streams one tile of 16 vocab rows. Lane (g, t) = (lane / 4, lane % 4) holds, per
// 128-byte step of K, the 32 bytes [32t, 32t + 32) of rows g and g + 8, loaded straight from
// global memory into registers one chunk of steps ahead. The MMA's k order is a permutation of
// the real k, the same for both operands: for the 4-byte word j = 2p + jj of those 32 bytes (real
// k = base .. base + 3, base = 32t + 4j) the fp16 A fragment takes {k0, k1} as its "2t" pair and
// {k2, k3} as its "2t + 8" pair, and the activations are stored in that order (PlanePosition,
// WgmmaPlanePosition).
//
// Up to kGemvMmaRows rows: mma.sync m16n8k16 per warp over 8 * NT plane columns; with hi + lo
// (PLANES = 2) C columns 2t and 2t + 1 are hi and lo of batch row 4 * nt + t (their sum is the
// product), with one plane batch rows 8 * nt + 2t and 8 * nt + 2t + 1. More rows (WGMMA): each
// warpgroup of the block runs wgmma m64n32k16 (64 vocab rows = the group's 4 warp tiles) with
// the weights in registers, so the tensor cores work at their full rate, and the block has 16
// warps, so the activations are read from L2 once per 256 vocab rows instead of 128. Measured on
// an H100 at 131072x5120, 32 rows: mma.sync 0.29 ms (its issue rate bound it), wgmma with 8-warp
// blocks 0.34 ms (the activation reads bound it), with 16 warps 0.27 ms. (64 rows took 0.335 ms
// this way, slower than cuBLASLt's FP8 GEMM; those batches stay there.)
//
// The block's warps share the activations: kChunk columns of k at a time are staged in shared
// memory (double-buffered with cp.async), so the activations are read from L2 once per block
// instead of once per warp (per warp they do not fit L1 for B >= 16 and thrashed it).
//
// For up to kGemvFusedRows rows the products then become logits (FinishLogit) and each block
// reduces its rows to one partial statistic per batch row, so the epilogue starts from those.
// (For more rows that store cost the kernel more than the separate pass it saves: measured on an
// H100 at B = 8 and 16, 131072x5120 and 152064x8192.)
template <int NT, int PLANES, bool WGMMA>
struct GemvShape {
  static constexpr bool kWgmma = WGMMA;
  // Every block reads all the activations (from L2): the wgmma GEMV's larger blocks read them
  // for 256 vocab rows at a time instead of 128.
  static constexpr int kBlockWarps = kWgmma ? 16 : kWarps;
  static constexpr int kMinBlocks = kWgmma ? 1 : 2;  // per SM
  static constexpr int kColumns = 8 * NT;  // plane columns of the MMAs
  // Weight steps in flight, 16 registers each (wgmma: 16 warps x 128 registers leave room for 2).
  static constexpr int kSteps = WGMMA ? 2 : 4;
  static constexpr int kChunk = kSteps * kStep;  // activation columns staged at a time
  // mma.sync: [kColumns][kChunk + kSmemPad] fp16 per buffer; wgmma: core matrices, 32 bytes per
  // column per k16 block.
  static constexpr int kColumnStride = kChunk + kSmemPad;
  static constexpr int kBufferBytes =
      kWgmma ? kColumns * kChunk * 2 : kColumns * kColumnStride * static_cast<int>(sizeof(__half));
  // wgmma keeps up to 4 MMAs running while the next A fragments are decoded (kSets), so a
  // chunk's buffer may still be read when the next chunk begins: a third buffer.
  static constexpr int kBuffers = kWgmma ? 3 : 2;
  static constexpr int kSmemBytes = kBuffers * kBufferBytes;
  static constexpr int kBatchRows = kColumns / PLANES;
  static_assert(kMaxChunk % kChunk == 0, "activation planes are padded to kMaxChunk columns");
  static_assert(kColumns <= kGemvPlaneRows, "the kernels stage every plane column they multiply");
  static_assert(!kWgmma || (kColumns == 32 && PLANES == 1), "the wgmma variant built here: one plane, N = 32");
};

template <int NT, int PLANES, bool WGMMA>
__global__ void __launch_bounds__(GemvShape<NT, PLANES, WGMMA>::kBlockWarps * 32,
                                  GemvShape<NT, PLANES, WGMMA>::kMinBlocks)
    Fp8GemvKernel(const uint8_t* __restrict__ w, int64_t tiles, int hidden_pad, const __half* __restrict__ act,
                  int64_t stride, EpilogueParams e) {
  using Shape = GemvShape<NT, PLANES, WGMMA>;
  constexpr int kSteps = Shape::kSteps;
  constexpr int kChunk = Shape::kChunk;
  constexpr int kColumns = Shape::kColumns;
  constexpr int kColumnStride = Shape::kColumnStride;
  extern __shared__ __align__(128) uint8_t staged[];  // [kBuffers][kBufferBytes]

  const int lane = threadIdx.x & 31;
  const int g = lane >> 2, t = lane & 3;
  const int64_t tile = static_cast<int64_t>(blockIdx.x) * Shape::kBlockWarps + (threadIdx.x >> 5);
  const bool active = tile < tiles;  // inactive warps still take part in staging, barriers and wgmma
  const int chunks = (hidden_pad + kChunk - 1) / kChunk;
  const int rows = static_cast<int>(e.rows);

  // Copies chunk `chunk` of all kColumns plane columns into buffer chunk % kBuffers. Columns past
  // the batch's hold earlier batches' values or zeros (finite either way); they only reach
  // accumulator columns that are never stored. (Staging only the batch's columns left stale shared
  // memory there, and 5-7 or 9-15 rows then took 0.26-0.29 ms against 0.236 for 8 or 16, H100,
  // 131072x5120: the MMAs ran slower on whatever it held; not established further.)
  auto stage = [&](int chunk) {
    uint8_t* to = staged + (chunk % Shape::kBuffers) * Shape::kBufferBytes;
    const __half* from = act + static_cast<int64_t>(chunk) * kChunk;
    if constexpr (Shape::kWgmma) {
      // Piece i fills bytes [16i, 16i + 16) of the buffer: core matrix row r = i % 8 (column
      // 8G + r), half h, column group G, k16 block of the chunk -- so the 8 lanes of a row write
      // 128 contiguous bytes (no bank conflicts). The block's 16 k of a column are its 32 bytes at
      // 16 * block in the plane (WgmmaPlanePosition).
      constexpr int kPieces = kColumns * (kChunk / 8);
      for (int i = threadIdx.x; i < kPieces; i += Shape::kBlockWarps * 32) {
        const int r = i % 8, h = i / 8 % 2, group = i / 16 % (kColumns / 8), block = i / (2 * kColumns);
        CopyAsync16(to + 16 * i, from + (8 * group + r) * stride + block * 16 + h * 8);
      }
    } else {
      const int pieces = kColumns * (kChunk / 8);  // 16-byte pieces
      for (int i = threadIdx.x; i < pieces; i += Shape::kBlockWarps * 32) {
        const int col = i / (kChunk / 8), q = i % (kChunk / 8);
        CopyAsync16(to + (col * kColumnStride + q * 8) * sizeof(__half), from + col * stride + q * 8);
      }
    }
    asm volatile("cp.async.commit_group;" ::);
  };

  const uint8_t* row0 = w + (tile * 16 + g) * static_cast<int64_t>(hidden_pad) + 32 * t;
  const uint8_t* row8 = row0 + 8 * static_cast<int64_t>(hidden_pad);
  auto load = [&](int step, uint4 (&buf)[4]) {  // weights of `step`; zeros past the row or tile
    const uint4 zero = make_uint4(0, 0, 0, 0);
    const int k = step * kStep + 32 * t;
    const bool in0 = active && k < hidden_pad, in1 = active && k + 16 < hidden_pad;  // hidden_pad % 16 == 0
    buf[0] = in0 ? LoadStreaming(row0 + step * kStep) : zero;
    buf[1] = in1 ? LoadStreaming(row0 + step * kStep + 16) : zero;
    buf[2] = in0 ? LoadStreaming(row8 + step * kStep) : zero;
    buf[3] = in1 ? LoadStreaming(row8 + step * kStep + 16) : zero;
  };

  float acc[NT][4];
#pragma unroll
  for (int nt = 0; nt < NT; ++nt) acc[nt][0] = acc[nt][1] = acc[nt][2] = acc[nt][3] = 0.0f;
  constexpr int kSets = 4;  // wgmma A fragment register sets (8 MMAs per step: a multiple of kSets)
  uint32_t a_sets[kSets][4] = {};

  // wgmma's A fragment of word pair p, MMA jj: rows g and g + 8, k as described above.
  auto decode = [&](const uint4 (&buf)[4], int p, int jj, uint32_t (&a)[4]) {
    const uint32_t* wa = reinterpret_cast<const uint32_t*>(&buf[0]);  // row g, 8 words
    const uint32_t* wb = reinterpret_cast<const uint32_t*>(&buf[2]);  // row g + 8
    a[0] = Fp8x2ToHalf2(wa[2 * p + jj]);
    a[1] = Fp8x2ToHalf2(wb[2 * p + jj]);
    a[2] = Fp8x2ToHalf2(wa[2 * p + jj] >> 16);
    a[3] = Fp8x2ToHalf2(wb[2 * p + jj] >> 16);
  };

  // wgmma: one step of K, step `d` of the staged chunk in `buffer`. A fragments rotate through
  // kSets register sets; before one is overwritten the wgmma that read it (kSets MMAs back) must
  // be done, so kSets - 1 stay in flight while the next is decoded.
  auto compute_wgmma = [&](const uint8_t* buffer, int d, const uint4 (&buf)[4]) {
    if constexpr (Shape::kWgmma) {
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        uint32_t(&set)[4] = a_sets[j % kSets];
        WgmmaWait<kSets - 1>();
#pragma unroll
        for (int r = 0; r < 4; ++r) PinRegister(set[r]);  // the old fragment lives until that wait
        decode(buf, j / 2, j % 2, set);
        WgmmaFence();
        const uint8_t* block = buffer + (d * 8 + j) * (kColumns / 8) * 256;
        Wgmma<kColumns>(&acc[0][0], set, SmemDescriptor(block, /*lbo=*/128, /*sbo=*/256));
        WgmmaCommit();
      }
    }
  };

  // mma.sync: one step of K; x is where this lane's B fragments start (column g, lane t's runs).
  auto compute_mma = [&](const __half* x, const uint4 (&buf)[4]) {
    const uint32_t* wa = reinterpret_cast<const uint32_t*>(&buf[0]);  // row g, 8 words
    const uint32_t* wb = reinterpret_cast<const uint32_t*>(&buf[2]);  // row g + 8
#pragma unroll
    for (int p = 0; p < 4; ++p) {  // words 2p and 2p + 1
      uint32_t a[2][4];
#pragma unroll
      for (int jj = 0; jj < 2; ++jj) {
        a[jj][0] = Fp8x2ToHalf2(wa[2 * p + jj]);
        a[jj][1] = Fp8x2ToHalf2(wb[2 * p + jj]);
        a[jj][2] = Fp8x2ToHalf2(wa[2 * p + jj] >> 16);
        a[jj][3] = Fp8x2ToHalf2(wb[2 * p + jj] >> 16);
      }
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) {
        const uint4 xv = *reinterpret_cast<const uint4*>(x + nt * 8 * kColumnStride + p * 32);
        Mma(acc[nt], a[0][0], a[0][1], a[0][2], a[0][3], xv.x, xv.y);
        Mma(acc[nt], a[1][0], a[1][1], a[1][2], a[1][3], xv.z, xv.w);
      }
    }
  };

  uint4 buf[kSteps][4];
#pragma unroll
  for (int d = 0; d < kSteps; ++d) load(d, buf[d]);
  WaitForPrerequisites();  // the activation planes (written by the previous kernel)
  stage(0);
  for (int c = 0; c < chunks; ++c) {
    if (c + 1 < chunks) {
      stage(c + 1);
      asm volatile("cp.async.wait_group 1;" ::);
    } else {
      asm volatile("cp.async.wait_group 0;" ::);
    }
    if constexpr (Shape::kWgmma) FenceSharedForAsyncProxy();
    __syncthreads();  // chunk c is staged for every warp
    const uint8_t* buffer = staged + (c % Shape::kBuffers) * Shape::kBufferBytes;
    const __half* x = reinterpret_cast<const __half*>(buffer) + g * kColumnStride + 8 * t;  // mma.sync
#pragma unroll
    for (int d = 0; d < kSteps; ++d) {
      if constexpr (Shape::kWgmma) {
        compute_wgmma(buffer, d, buf[d]);
      } else {
        compute_mma(x + d * kStep, buf[d]);
      }
      load((c + 1) * kSteps + d, buf[d]);
    }
    // Every warp is done with the buffer the next iteration stages into: chunk c's with two
    // buffers; chunk c - 1's with three (wgmma: up to kSets MMAs of chunk c may still run).
    __syncthreads();
  }
  if constexpr (Shape::kWgmma) {
    WgmmaWait<0>();
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
#pragma unroll
      for (int r = 0; r < 4; ++r) PinRegister(acc[nt][r]);
    }
  }
  LaunchDependents();  // the epilogue may launch; it waits for this grid's logits

  if constexpr (Shape::kBatchRows <= kGemvFusedRows) {
    FinishTile<NT>(acc, active, tile, e);
  } else if (active) {  // raw products; the epilogue's first pass finishes them
    float* logits = e.raw;
    const int64_t ld = e.ld;
    const int64_t v = tile * 16 + g;
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
      if constexpr (PLANES == 2) {
        const int b = 4 * nt + t;
        if (b < rows) {
          logits[b * ld + v] = acc[nt][0] + acc[nt][1];
          logits[b * ld + v + 8] = acc[nt][2] + acc[nt][3];
        }
      } else {
#pragma unroll
        for (int j = 0; j < 2; ++j) {
          const int b = 8 * nt + 2 * t + j;
          if (b < rows) {
            logits[b * ld + v] = acc[nt][j];
            logits[b * ld + v + 8] = acc[nt][2 + j];
          }
        }
      }
    }
  }
}

template <int NT, int PLANES, bool WGMMA = false>
cudaError_t AllowSmem() {
  return cudaFuncSetAttribute(Fp8GemvKernel<NT, PLANES, WGMMA>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                              GemvShape<NT, PLANES, WGMMA>::kSmemBytes);
}

template <int NT, int PLANES, bool WGMMA = false>
cudaError_t Launch(const uint8_t* w, int64_t vocab_pad, int64_t hidden_pad, const __half* act, int64_t stride,
                   const EpilogueParams& p, cudaStream_t stream) {
  using Shape = GemvShape<NT, PLANES, WGMMA>;
  const int64_t tiles = vocab_pad / 16;
  const int64_t blocks = (tiles + Shape::kBlockWarps - 1) / Shape::kBlockWarps;  // GemvPartials for kWarps
  return LaunchAfterPrevious(Fp8GemvKernel<NT, PLANES, WGMMA>, dim3(static_cast<unsigned>(blocks)),
                             dim3(Shape::kBlockWarps * 32), Shape::kSmemBytes, stream, w, tiles,
                             static_cast<int>(hidden_pad), act, stride, p);
}

// Set by PrepareFp8Gemv: the device runs sm_90a code (wgmma).
bool g_wgmma = false;

}  // namespace

int64_t GemvActivationStride(int64_t hidden_pad) { return (hidden_pad + kMaxChunk - 1) / kMaxChunk * kMaxChunk; }

cudaError_t LaunchGemvActivations(const float* x, int64_t rows, int64_t hidden, int64_t hidden_pad, __half* act,
                                  float* inv_scales, cudaStream_t stream) {
  if (rows <= 0) return cudaSuccess;
  GemvActivationsKernel<<<static_cast<unsigned>(rows), kActThreads, 0, stream>>>(
      x, hidden, GemvActivationStride(hidden_pad), static_cast<int>(GemvPlanes(rows)), rows > kGemvMmaRows, act,
      inv_scales);
  return cudaGetLastError();
}

int64_t GemvMaxRows() { return g_wgmma ? kGemvMaxRows : kGemvMmaRows; }

cudaError_t PrepareFp8Gemv() {
  int device = 0, major = 0, minor = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err == cudaSuccess) err = cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device);
  if (err == cudaSuccess) err = cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device);
  if (err != cudaSuccess) return err;
  g_wgmma = major == 9 && minor == 0;  // the module's sm_90a code; other GPUs run its compute_80 PTX
  err = AllowSmem<1, 2>();
  if (err == cudaSuccess) err = AllowSmem<2, 2>();
  if (err == cudaSuccess) err = AllowSmem<2, 1>();
  if (err == cudaSuccess && g_wgmma) err = AllowSmem<4, 1, true>();
  return err;
}

int64_t GemvPartials(int64_t vocab_pad) { return (vocab_pad / 16 + kWarps - 1) / kWarps; }

cudaError_t LaunchFp8Gemv(const uint8_t* w, int64_t vocab_pad, int64_t hidden_pad, const __half* act,
                          const EpilogueParams& p, cudaStream_t stream) {
  if (p.rows <= 0 || p.rows > GemvMaxRows() || vocab_pad % 16 != 0 || hidden_pad % 16 != 0) {
    return cudaErrorInvalidValue;
  }
  const int64_t stride = GemvActivationStride(hidden_pad);
  static_assert(GemvShape<1, 2, false>::kBatchRows == kGemvFusedRows &&
                    GemvShape<2, 2, false>::kBatchRows == kGemvExactRows &&
                    GemvShape<2, 1, false>::kBatchRows == kGemvMmaRows,
                "the mma.sync variants cover the rows below the wgmma ones");
  if (p.rows <= kGemvFusedRows) return Launch<1, 2>(w, vocab_pad, hidden_pad, act, stride, p, stream);
  if (p.rows <= kGemvExactRows) return Launch<2, 2>(w, vocab_pad, hidden_pad, act, stride, p, stream);
  if (p.rows <= kGemvMmaRows) return Launch<2, 1>(w, vocab_pad, hidden_pad, act, stride, p, stream);
  static_assert(GemvShape<4, 1, true>::kBatchRows == kGemvMaxRows, "the wgmma variant covers the rest");
  return Launch<4, 1, true>(w, vocab_pad, hidden_pad, act, stride, p, stream);
}

}  // namespace lmhead::cuda
