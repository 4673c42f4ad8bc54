#include "kernels/cuda/fp8_gemv.h"

#include <cudaTypedefs.h>
#include <cuda_fp8.h>

#include <cfloat>
#include <cmath>
#include <cooperative_groups.h>
#include <type_traits>
#include <cub/block/block_reduce.cuh>

#include "kernels/cuda/dependent_launch.h"
#include "kernels/cuda/logit_stats.cuh"
#include "kernels/cuda/row_element.cuh"
#include "kernels/cuda/wgmma.cuh"
#include "kernels/cuda/wgmma_tile.cuh"

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

// Position (fp16 elements) of MMA column c (one plane of a batch row), wgmma plane position q
// (WgmmaPlanePosition) in the wgmma GEMV's activations for N columns: per k16 block of q, N / 8
// column groups of two 8 x 16-byte core matrices (k halves), i.e. exactly the shared-memory layout
// the MMAs read, so a run of k16 blocks (a staged chunk) is one contiguous piece for the bulk copy.
__device__ __forceinline__ int64_t WgmmaActivationOffset(int64_t q, int64_t c, int n) {
  return (q / 16) * (int64_t{n} * 16) + ((c / 8) * 2 + (q % 16) / 8) * 64 + (c % 8) * 8 + q % 8;
}

// The exponent e of a row's scale s = 2^(14 - e): amax = m * 2^e with m in [0.5, 1), so that
// amax * s is in [2^13, 2^14).
__device__ __forceinline__ int PlaneExponent(float amax) {
  int e = 14;
  if (amax > 0.0f && isfinite(amax)) {
    frexpf(amax, &e);
    e = max(e, -100);  // keeps s finite for denormal-sized rows
  }
  return e;
}

// RowWords for rows [first, first + count), by the threads of one block (blockDim.x of them):
// Start zeroes the words and reads the block's first blockDim.x ids (with the rows' loads, so
// that their PCIe round trips overlap), Finish stores them and copies any further ids.
struct RowWordsCopy {
  const RowWords& w;
  int64_t first, count;
  int32_t id = 0;

  __device__ void Start() {
    for (int64_t i = threadIdx.x; i < count * w.zero_per_row; i += blockDim.x) w.zero[first * w.zero_per_row + i] = 0;
    if (threadIdx.x < count * w.ids_per_row) id = w.ids_from[first * w.ids_per_row + threadIdx.x];
  }
  __device__ void Finish() const {
    const int64_t at = first * w.ids_per_row;
    if (threadIdx.x < count * w.ids_per_row) w.ids_to[at + threadIdx.x] = id;
    for (int64_t i = threadIdx.x + blockDim.x; i < count * w.ids_per_row; i += blockDim.x) {
      w.ids_to[at + i] = w.ids_from[at + i];
    }
  }
};

// Element i (value x_b[i], s the row's scale) of batch row b into the planes: hi = fp16(x * s) and,
// with two planes, lo = fp16(x * s - hi); in the wgmma GEMV's layout for wgmma_columns MMA columns
// (plane p of row b is MMA column planes * b + p), else the mma.sync GEMV's rows of `stride`.
__device__ __forceinline__ void StorePlanes(__half* __restrict__ act, int64_t b, int64_t i, float value, float s,
                                            int planes, int wgmma_columns, int64_t stride) {
  const float scaled = value * s;  // exact: s is a power of two
  const __half h = __float2half_rn(scaled);
  if (wgmma_columns > 0) {
    const int64_t q = WgmmaPlanePosition(i);
    act[WgmmaActivationOffset(q, planes * b, wgmma_columns)] = h;
    if (planes == 2) act[WgmmaActivationOffset(q, 2 * b + 1, wgmma_columns)] = __float2half_rn(scaled - __half2float(h));
    return;
  }
  __half* hi = act + planes * b * stride;
  const int64_t at = PlanePosition(i);
  hi[at] = h;
  if (planes == 2) hi[stride + at] = __float2half_rn(scaled - __half2float(h));
}

// The largest `value` over the block's THREADS threads, returned to every thread. Once per kernel.
template <int THREADS>
__device__ __forceinline__ float BlockMax(float value) {
  using Reduce = cub::BlockReduce<float, THREADS>;
  __shared__ typename Reduce::TempStorage temp;
  __shared__ float result;
  value = Reduce(temp).Reduce(value, [](float a, float c) { return fmaxf(a, c); });
  if (threadIdx.x == 0) result = value;
  __syncthreads();
  return result;
}

// Rows of fp16 the host already scaled (kernels/half_rows.h): their scales come with them
// (host_inv_scales), and the activation kernels only lay the values out. Other row types (fp32,
// bf16 bits) get each row's scale here.
template <typename In>
inline constexpr bool kHostScaled = std::is_same_v<In, __half>;

// The GEMV's planes (batches of up to kGemvMaxRows rows): one block per row. x may be pinned host
// memory read over PCIe: every element the block needs is requested up front (kActPerThread
// independent loads per thread), so a row costs about one round trip, and is read once.
// host_inv_scales: see kHostScaled (one plane only).
template <typename In>
__global__ void __launch_bounds__(kActThreads) GemvActivationsKernel(const In* __restrict__ x,
                                                                     const float* __restrict__ host_inv_scales,
                                                                     int64_t hidden, int64_t stride, int planes,
                                                                     int wgmma_columns,
                                                                     __half* __restrict__ act,
                                                                     float* __restrict__ inv_scales,
                                                                     RowWords row_extra) {
  LaunchDependents();  // the GEMV may start streaming weights now; it waits for these planes
  RowWordsCopy row_words{row_extra, blockIdx.x, 1};
  row_words.Start();
  const int64_t b = blockIdx.x;
  RowSlice<In, kActThreads, kActPerThread> slice{x + b * hidden, 0, hidden};
  int e = 14;  // host-scaled rows: s = 1
  if constexpr (kHostScaled<In>) {
    slice.Load();
  } else {
    e = PlaneExponent(BlockMax<kActThreads>(slice.LoadAbsMax()));
  }
  const float s = ldexpf(1.0f, 14 - e);
  slice.ForEach([&](int64_t i, float value) { StorePlanes(act, b, i, value, s, planes, wgmma_columns, stride); });
  if (threadIdx.x == 0) inv_scales[b] = kHostScaled<In> ? host_inv_scales[b] : ldexpf(1.0f, e - 14);
  row_words.Finish();
}

// The wgmma GEMV's planes for batches of up to kGemvExactRows rows (Hopper): each row read by a
// cluster of kRowBlocks blocks, each a contiguous slice of the row, on as many SMs (one block per
// row asks for its pinned row over PCIe from one SM, which measured 17.7 us for 8 rows of 5120
// fp32 against 11.1 for a copy spread over 132 blocks, session 10). The blocks exchange their
// slices' maxima through distributed shared memory, so each scales its slice by the row's power
// of two: the same planes as GemvActivationsKernel's. Whole calls on an H100 (session 15): 1-6.5
// us faster at 1-8 rows on 131072x5120 and 152064x8192, within 1.5 us on 128256x4096; at 16-32
// rows 1-3.5 us slower on 128256x4096 (clusters of 2, 4 or 8 alike), so larger batches keep one
// block per row.
constexpr int kRowBlocks = 8;  // the portable cluster size
constexpr int kRowBlockThreads = 256;

template <typename In>
__global__ void __launch_bounds__(kRowBlockThreads) GemvActivationsClusterKernel(const In* __restrict__ x,
                                                                               int64_t hidden, int planes,
                                                                               int wgmma_columns,
                                                                               __half* __restrict__ act,
                                                                               float* __restrict__ inv_scales,
                                                                               RowWords row_extra) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  constexpr int kRowBlockPerThread = 8;  // elements each thread keeps in registers
  LaunchDependents();  // the GEMV may start streaming weights now; it waits for these planes
  cooperative_groups::cluster_group cluster = cooperative_groups::this_cluster();
  const int rank = static_cast<int>(cluster.block_rank());
  const int64_t b = blockIdx.x / kRowBlocks;
  RowWordsCopy row_words{row_extra, b, rank == 0 ? 1 : 0};
  row_words.Start();
  __shared__ float block_amax;  // read by the cluster's other blocks
  const int64_t slice_columns = (hidden + kRowBlocks - 1) / kRowBlocks;
  const int64_t begin = rank * slice_columns;
  RowSlice<In, kRowBlockThreads, kRowBlockPerThread> slice{x + b * hidden, begin, min(hidden, begin + slice_columns)};
  const float amax = BlockMax<kRowBlockThreads>(slice.LoadAbsMax());
  if (threadIdx.x == 0) block_amax = amax;
  cluster.sync();  // every block's maximum is in its shared memory
  float row_amax = 0.0f;
  for (int r = 0; r < kRowBlocks; ++r) row_amax = fmaxf(row_amax, *cluster.map_shared_rank(&block_amax, r));
  asm volatile("barrier.cluster.arrive.release.aligned;" ::: "memory");  // done reading the others' maxima
  const int e = PlaneExponent(row_amax);
  const float s = ldexpf(1.0f, 14 - e);
  slice.ForEach([&](int64_t i, float value) { StorePlanes(act, b, i, value, s, planes, wgmma_columns, 0); });
  if (rank == 0 && threadIdx.x == 0) inv_scales[b] = ldexpf(1.0f, e - 14);
  row_words.Finish();
  asm volatile("barrier.cluster.wait.acquire.aligned;" ::: "memory");  // no block leaves while read
#else
  __trap();  // launched on Hopper only
#endif
}

// The FP8 GEMM's tiles (batches above kGemvMaxRows rows, rows in device memory): kGemmActRows rows
// per block, first each row's maximum, then each thread writes whole 16-byte rows of the MMAs'
// core matrices (8 plane positions of one batch row), so that a warp's stores fill whole 32-byte
// sectors. (One block per row, as the GEMV's kernel, wrote 2 of every 4 16-byte pieces of a sector
// from different blocks: 27 against 14 us for 384 x 5120 rows on an H100, the same values.)
constexpr int kGemmActRows = 4;
constexpr int kGemmActThreads = 1024;

template <typename In>
__global__ void __launch_bounds__(kGemmActThreads) GemmActivationsKernel(const In* __restrict__ x,
                                                                         const float* __restrict__ host_inv_scales,
                                                                         int64_t rows, int64_t hidden, int64_t stride,
                                                                         __half* __restrict__ act,
                                                                         float* __restrict__ inv_scales,
                                                                         RowWords row_extra) {
  LaunchDependents();  // the GEMM may start streaming weights now; it waits for these tiles
  constexpr int kPerRow = kGemmActThreads / kGemmActRows;  // threads per row for its maximum
  __shared__ float warp_amax[kGemmActThreads / 32];
  __shared__ float scales[kGemmActRows];
  const int64_t b0 = blockIdx.x * int64_t{kGemmActRows};
  RowWordsCopy row_words{row_extra, b0, min(int64_t{kGemmActRows}, rows - b0)};
  row_words.Start();
  if constexpr (kHostScaled<In>) {
    if (threadIdx.x < kGemmActRows) {
      scales[threadIdx.x] = 1.0f;
      if (b0 + threadIdx.x < rows) inv_scales[b0 + threadIdx.x] = host_inv_scales[b0 + threadIdx.x];
    }
    __syncthreads();
  } else {
    const int r = threadIdx.x / kPerRow;
    float amax = 0.0f;
    if (b0 + r < rows) {
      const In* row = x + (b0 + r) * hidden;
      int64_t i = threadIdx.x % kPerRow;
      for (; i + 7 * kPerRow < hidden; i += 8 * kPerRow) {  // 8 loads in flight
        float v[8];
#pragma unroll
        for (int j = 0; j < 8; ++j) v[j] = LoadElement(row + i + j * kPerRow);
#pragma unroll
        for (int j = 0; j < 8; ++j) amax = fmaxf(amax, fabsf(v[j]));
      }
      for (; i < hidden; i += kPerRow) amax = fmaxf(amax, fabsf(LoadElement(row + i)));
    }
#pragma unroll
    for (int offset = 16; offset > 0; offset /= 2) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, offset));
    if (threadIdx.x % 32 == 0) warp_amax[threadIdx.x / 32] = amax;
    __syncthreads();
    if (threadIdx.x < kGemmActRows) {
      constexpr int kWarpsPerRow = kPerRow / 32;
      float m = 0.0f;
      for (int w = 0; w < kWarpsPerRow; ++w) m = fmaxf(m, warp_amax[threadIdx.x * kWarpsPerRow + w]);
      const int e = PlaneExponent(m);
      scales[threadIdx.x] = ldexpf(1.0f, 14 - e);
      if (b0 + threadIdx.x < rows) inv_scales[b0 + threadIdx.x] = ldexpf(1.0f, e - 14);
    }
    __syncthreads();
  }
  // Piece p: batch row b0 + p % kGemmActRows, k half (p / kGemmActRows) % 2 of k16 block
  // p / (2 kGemmActRows) -- every k16 block of the steps that hold real columns (the others, and
  // positions past `hidden`, get zeros).
  static_assert(8 % kGemmActRows == 0 && kGemmTileRows % 8 == 0, "a block's rows share their core matrices");
  const int64_t tile_base = b0 / kGemmTileRows * kGemmTileRows * stride;
  const int c0 = static_cast<int>(b0 % kGemmTileRows);  // MMA column of row b0
  const int64_t pieces = (hidden + kStep - 1) / kStep * (kStep / 16) * 2 * kGemmActRows;
  for (int64_t p = threadIdx.x; p < pieces; p += kGemmActThreads) {
    const int r = static_cast<int>(p % kGemmActRows), half = static_cast<int>(p / kGemmActRows % 2);
    const int64_t block = p / (2 * kGemmActRows);
    if (b0 + r >= rows) continue;
    const In* row = x + (b0 + r) * hidden;
    // Plane position 16 block + 8 half + 2t + e holds real column 128 (block / 8) + 32t + 8pp +
    // 4jj + 2 half + e, where block % 8 = 2pp + jj (WgmmaPlanePosition inverted).
    const int64_t base = block / 8 * kStep + block % 8 / 2 * 8 + block % 2 * 4 + 2 * half;
    const float s = scales[r];
    uint32_t words[4];
#pragma unroll
    for (int t = 0; t < 4; ++t) {
      const int64_t i = base + 32 * t;
      const float v0 = i < hidden ? LoadElement(row + i) : 0.0f;
      const float v1 = i + 1 < hidden ? LoadElement(row + i + 1) : 0.0f;
      words[t] = uint32_t{__half_as_ushort(__float2half_rn(v0 * s))} |
                 (uint32_t{__half_as_ushort(__float2half_rn(v1 * s))} << 16);
    }
    __half* to = act + tile_base + WgmmaActivationOffset(16 * block + 8 * half, c0 + r, kGemmTileRows);
    *reinterpret_cast<uint4*>(to) = make_uint4(words[0], words[1], words[2], words[3]);
  }
  row_words.Finish();
}

__device__ __forceinline__ uint4 LoadStreaming(const uint8_t* p) {
  uint4 v;
  asm("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
      : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
      : "l"(p));
  return v;
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
    st = ButterflyStat(st, 4, 32);  // lanes 4g + t hold the same batch row for g = 0..7
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
// This kernel (up to kGemvMmaRows rows) runs mma.sync m16n8k16 per warp over 8 * NT plane
// columns; with hi + lo (PLANES = 2) C columns 2t and 2t + 1 are hi and lo of batch row
// 4 * nt + t (their sum is the product), with one plane batch rows 8 * nt + 2t and 8 * nt + 2t + 1.
// The block's warps share the activations: kChunk columns of k at a time are staged in shared
// memory (double-buffered with cp.async), so the activations are read from L2 once per block
// instead of once per warp (per warp they do not fit L1 for B >= 16 and thrashed it).
//
// For up to kGemvFusedRows rows the products then become logits (FinishLogit) and each block
// reduces its rows to one partial statistic per batch row, so the epilogue starts from those.
// (For more rows that store cost the kernel more than the separate pass it saves: measured on an
// H100 at B = 8 and 16, 131072x5120 and 152064x8192.)
template <int NT, int PLANES>
struct GemvShape {
  static constexpr int kColumns = 8 * NT;  // plane columns of the MMAs
  static constexpr int kSteps = 4;         // weight steps in flight, 16 registers each
  static constexpr int kChunk = kSteps * kStep;  // activation columns staged at a time
  static constexpr int kColumnStride = kChunk + kSmemPad;  // [kColumns][kColumnStride] fp16 per buffer
  static constexpr int kBufferBytes = kColumns * kColumnStride * static_cast<int>(sizeof(__half));
  static constexpr int kSmemBytes = 2 * kBufferBytes;
  static constexpr int kBatchRows = kColumns / PLANES;
  static_assert(kMaxChunk % kChunk == 0, "activation planes are padded to kMaxChunk columns");
  static_assert(kColumns <= kGemvPlaneRows, "the kernels stage every plane column they multiply");
};

template <int NT, int PLANES>
__global__ void __launch_bounds__(kWarps * 32, 2)
    Fp8GemvKernel(const uint8_t* __restrict__ w, int64_t tiles, int hidden_pad, const __half* __restrict__ act,
                  int64_t stride, EpilogueParams e) {
  using Shape = GemvShape<NT, PLANES>;
  constexpr int kSteps = Shape::kSteps;
  constexpr int kChunk = Shape::kChunk;
  constexpr int kColumns = Shape::kColumns;
  constexpr int kColumnStride = Shape::kColumnStride;
  extern __shared__ __align__(128) uint8_t staged[];  // [2][kBufferBytes]

  const int lane = threadIdx.x & 31;
  const int g = lane >> 2, t = lane & 3;
  const int64_t tile = static_cast<int64_t>(blockIdx.x) * kWarps + (threadIdx.x >> 5);
  const bool active = tile < tiles;  // inactive warps still take part in staging and barriers
  const int chunks = (hidden_pad + kChunk - 1) / kChunk;
  const int rows = static_cast<int>(e.rows);

  // Copies chunk `chunk` of all kColumns plane columns into buffer chunk % 2. Columns past the
  // batch's hold earlier batches' values or zeros (finite either way); they only reach
  // accumulator columns that are never stored. (Staging only the batch's columns left stale shared
  // memory there, and 5-7 or 9-15 rows then took 0.26-0.29 ms against 0.236 for 8 or 16, H100,
  // 131072x5120: the MMAs ran slower on whatever it held; not established further.)
  auto stage = [&](int chunk) {
    uint8_t* to = staged + (chunk % 2) * Shape::kBufferBytes;
    const __half* from = act + static_cast<int64_t>(chunk) * kChunk;
    const int pieces = kColumns * (kChunk / 8);  // 16-byte pieces
    for (int i = threadIdx.x; i < pieces; i += kWarps * 32) {
      const int col = i / (kChunk / 8), q = i % (kChunk / 8);
      CopyAsync16(to + (col * kColumnStride + q * 8) * sizeof(__half), from + col * stride + q * 8);
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

  // One step of K; x is where this lane's B fragments start (column g, lane t's runs).
  auto compute = [&](const __half* x, const uint4 (&buf)[4]) {
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
    __syncthreads();  // chunk c is staged for every warp
    const uint8_t* buffer = staged + (c % 2) * Shape::kBufferBytes;
    const __half* x = reinterpret_cast<const __half*>(buffer) + g * kColumnStride + 8 * t;
#pragma unroll
    for (int d = 0; d < kSteps; ++d) {
      compute(x + d * kStep, buf[d]);
      load((c + 1) * kSteps + d, buf[d]);
    }
    __syncthreads();  // every warp is done with the buffer the next iteration stages into
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

// The wgmma GEMV (N MMA columns: one fp16 plane per batch row, or hi + lo in two): blocks of 16
// warps, each warp one tile of 16 vocab rows, each warpgroup (4 tiles) one m64nNk16 MMA per k16
// with A = weights decoded in registers (the fragment mapping of Fp8GemvKernel) and B =
// activations in shared memory. The block's 16 warps read the activations from L2 once per 256
// vocab rows (8 warps: reading them bound the kernel). All operands come through the copy engine
// (TMA), which writes shared memory without staging the bytes in L1: loads through L1 (plain, as
// Fp8GemvKernel's, or cp.async) are capped by the L1 left beside this kernel's shared memory
// (measured on an H100 at 131072x5120, 32 rows: weights in registers 0.27 ms, cp.async into
// shared memory 0.41, TMA 0.235).
// - Weights: each warp keeps a ring of kRing steps (16 rows x 128 bytes, one tensor-map box with
//   the 128-byte swizzle), refilled by its lane 0 kRing - 1 steps ahead of the one it multiplies.
// - Activations: chunks of kChunk columns, one bulk copy each (the activation kernel writes them
//   in the MMAs' shared-memory layout), three buffers, the next one staged after a block barrier
//   per chunk.
// - The epilogue's first pass is done on the accumulators (StoreWgmmaTile): per batch row one
//   partial statistic per block, and the finished logits only when a later pass reads them.
// The large-batch GEMM (fp8_gemm.cu) runs the same product over tiles of 128 batch rows.
// BLOCKS: blocks per SM. Two (N = 16, 24 and 32: 48 registers, half the shared memory each, one
// step less in each warp's ring, above N = 16 chunks of two steps) let one block's tile store
// overlap the other's weight stream, which measured 1.3-6 us faster on 128256x4096 and 131072x5120
// but 15-25 us slower on 152064x8192 (on an H100, whole calls), so the backend times both on its
// head at startup (GemvWeights::blocks_per_sm_16, and _32 for N = 24 and 32).
template <int N, int BLOCKS = 1>
struct WgmmaGemvShape {
  static_assert(N <= kGemvMaxRows, "N MMA columns of one batch");
  static_assert(BLOCKS == 1 || (BLOCKS == 2 && N <= 32), "two blocks per SM at N = 16, 24 and 32 only");
  static constexpr int kWarps = 16;
  static constexpr int kThreads = kWarps * 32;
  // 128-column steps per activation chunk (the block synchronizes once per chunk: 4 steps measured
  // ~1% faster than 2 at N = 32 on an H100; 2 where two blocks share an SM above N = 16, for the
  // shared memory), and the chunk buffers: three where they fit beside the rings (N <= 32, one
  // block per SM), else two (see the kernel's loop).
  static constexpr int kSteps = BLOCKS == 2 && N > 16 ? 2 : 4;
  static constexpr int kChunk = kSteps * kStep;       // activation columns per chunk
  static constexpr int kBuffers = N <= 32 && BLOCKS == 1 ? 3 : 2;
  static constexpr int kChunkBytes = N * kChunk * 2;  // fp16
  static constexpr int kStepBytes = 16 * kStep;       // one warp's weights of one step (a box)
  // Weight steps per warp (two in flight while one is multiplied: depths 3-5 measured the same on
  // an H100, within 1%; one with two blocks per SM).
  static constexpr int kRing = BLOCKS == 1 ? 3 : 2;
  // Whether the weights are read with the L2's evict-first policy (EvictFirstPolicy). A/B on an
  // H100, whole calls as graphs: at N = 16 (then 5-16 rows) 2-3 us faster on all three bench
  // shapes (top-k calls 5-6 us: the ranges the selection reads stay in L2); at N = 32 and 64, 2-4
  // us slower (kernel chains at 131072x5120), so those keep the default policy.
  static constexpr bool kWeightsEvictFirst = N == 16;
  static constexpr int kRingBytes = kWarps * kRing * kStepBytes;
  static constexpr int kBarriers = kBuffers + kWarps * kRing;
  // + 1024: the swizzled boxes need 1024-byte alignment, which the dynamic allocation lacks.
  static constexpr int kSmemBytes = 1024 + kRingBytes + kBuffers * kChunkBytes + kBarriers * 8;
  static_assert(kMaxChunk % kChunk == 0, "activation planes are padded to kMaxChunk columns");
  static_assert(BLOCKS * (kSmemBytes + 1024) <= 228 * 1024, "fits the H100's shared memory per SM");
};

template <int N, int PLANES, int BLOCKS = 1>
__global__ void __launch_bounds__(WgmmaGemvShape<N, BLOCKS>::kThreads, BLOCKS)
    Fp8GemvWgmmaKernel(const __grid_constant__ CUtensorMap weights, int64_t tiles, int hidden_pad,
                       const __half* __restrict__ act, bool write_logits, EpilogueParams e) {
  using Shape = WgmmaGemvShape<N, BLOCKS>;
  static_assert(PLANES == 1 || N == 16, "two planes only for the smallest batches");
  constexpr int kRing = Shape::kRing;
  extern __shared__ uint8_t smem_unaligned[];
  uint8_t* smem = AlignShared1024(smem_unaligned);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int g = lane >> 2, t = lane & 3;
  uint8_t* ring = smem + warp * kRing * Shape::kStepBytes;  // [kRing][16 rows][128 bytes], swizzled
  uint8_t* chunks_smem = smem + Shape::kRingBytes;           // [kBuffers][kChunkBytes]
  uint64_t* full = reinterpret_cast<uint64_t*>(chunks_smem + Shape::kBuffers * Shape::kChunkBytes);
  uint64_t* landed = full + Shape::kBuffers + warp * kRing;  // this warp's ring slots

  const int64_t tile = blockIdx.x * Shape::kWarps + warp;
  const bool active = tile < tiles;  // inactive warps still take part in the barriers and wgmma
  const int chunks = (hidden_pad + Shape::kChunk - 1) / Shape::kChunk;

  auto fetch = [&](int step) {  // lane 0; columns past hidden_pad (and rows past the head) read as zeros
    if (active && step * kStep < hidden_pad) {
      uint64_t* barrier = &landed[step % kRing];
      BarrierExpectBytes(barrier, Shape::kStepBytes);
      uint8_t* slot = ring + (step % kRing) * Shape::kStepBytes;
      if (Shape::kWeightsEvictFirst) {
        TensorCopyToShared(slot, &weights, step * kStep, static_cast<int>(tile * 16), barrier, EvictFirstPolicy());
      } else {
        TensorCopyToShared(slot, &weights, step * kStep, static_cast<int>(tile * 16), barrier);
      }
    }
  };
  auto stage = [&](int chunk) {  // one thread
    const int buffer = chunk % Shape::kBuffers;
    BulkCopyToShared(chunks_smem + buffer * Shape::kChunkBytes, act + static_cast<int64_t>(chunk) * N * Shape::kChunk,
                     Shape::kChunkBytes, &full[buffer]);
  };

  // The block synchronizes once per chunk and stages one chunk ahead: with three buffers at the
  // chunk's start (the buffer's chunk c - 2 is done), with two after every warp has issued the
  // chunk's first step (refilling each buffer as soon as the last warp is done with it, as the
  // large-batch GEMM does, measured 1-2% slower here).
  if (threadIdx.x == 0) {
    for (int i = 0; i < Shape::kBarriers; ++i) BarrierInit(&full[i], 1);
  }
  __syncthreads();  // the barriers are initialized
  if (lane == 0) {
    for (int s = 0; s < kRing - 1; ++s) fetch(s);
  }
  WaitForPrerequisites();  // the activations (written by the previous kernel)
  if (threadIdx.x == 0) stage(0);

  float acc[N / 8][4];
#pragma unroll
  for (int nt = 0; nt < N / 8; ++nt) acc[nt][0] = acc[nt][1] = acc[nt][2] = acc[nt][3] = 0.0f;
  constexpr int kSets = 4;  // A fragment register sets: kSets - 1 MMAs stay in flight while one is decoded
  uint32_t a_sets[kSets][4] = {};

  for (int c = 0; c < chunks; ++c) {
    if (Shape::kBuffers == 3 && threadIdx.x == 0 && c + 1 < chunks) stage(c + 1);
    BarrierWait(&full[c % Shape::kBuffers], (c / Shape::kBuffers) & 1);
    const uint8_t* buffer = chunks_smem + (c % Shape::kBuffers) * Shape::kChunkBytes;
#pragma unroll
    for (int d = 0; d < Shape::kSteps; ++d) {
      const int step = c * Shape::kSteps + d;
      // Every lane has read the previous step's slot (into registers, below): refill it.
      __syncwarp();
      if (lane == 0) fetch(step + kRing - 1);
      uint4 buf[4];  // rows g (0, 1) and g + 8 (2, 3), bytes [32t, 32t + 32) in two 16-byte halves
      if (active && step * kStep < hidden_pad) {
        BarrierWait(&landed[step % kRing], (step / kRing) & 1);
        const uint8_t* slot = ring + (step % kRing) * Shape::kStepBytes;
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          const int row = g + 8 * (j / 2), piece = 2 * t + j % 2;  // 16-byte piece of the 128-byte row
          buf[j] = *reinterpret_cast<const uint4*>(slot + row * 128 + ((piece ^ (row % 8)) * 16));
        }
      } else {
        buf[0] = buf[1] = buf[2] = buf[3] = make_uint4(0, 0, 0, 0);
      }
      const uint32_t* wa = reinterpret_cast<const uint32_t*>(&buf[0]);  // row g, 8 words
      const uint32_t* wb = reinterpret_cast<const uint32_t*>(&buf[2]);  // row g + 8
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        uint32_t(&set)[4] = a_sets[j % kSets];
        WgmmaWait<kSets - 1>();
#pragma unroll
        for (int r = 0; r < 4; ++r) PinRegister(set[r]);  // the old fragment lives until that wait
        set[0] = Fp8x2ToHalf2(wa[j]);  // MMA j takes word j (see Fp8GemvKernel)
        set[1] = Fp8x2ToHalf2(wb[j]);
        set[2] = Fp8x2ToHalf2(wa[j] >> 16);
        set[3] = Fp8x2ToHalf2(wb[j] >> 16);
        WgmmaFence();
        Wgmma<N>(&acc[0][0], set, SmemDescriptor(buffer + (d * 8 + j) * (N / 8) * 256, /*lbo=*/128, /*sbo=*/256));
        WgmmaCommit();
      }
      if (Shape::kBuffers == 2 && d == 0) {
        // Every warp has issued chunk c's first 8 MMAs (at most kSets - 1 still run), so its MMAs
        // of chunk c - 1 are done: chunk c + 1 may go into that buffer.
        __syncthreads();
        if (threadIdx.x == 0 && c + 1 < chunks) stage(c + 1);
      }
    }
    // Three buffers: this warp has issued chunk c's MMAs (at most kSets - 1 of them still run), so
    // its MMAs of chunk c - 1 are done: once every warp is here, the next iteration stages chunk
    // c + 2 into that buffer.
    if (Shape::kBuffers == 3) __syncthreads();
  }
  WaitForAccumulators(acc);
  LaunchDependents();  // the epilogue may launch; it waits for this grid's partial statistics
  static_assert(TileStoreShape<N, PLANES>::kBytes <= Shape::kRingBytes + Shape::kBuffers * Shape::kChunkBytes,
                "the finished tile fits the ring and the activation buffers");
  StoreWgmmaTile<N, PLANES>(acc, /*token_tile=*/0, blockIdx.x, gridDim.x, write_logits, e,
                            reinterpret_cast<float*>(smem));
}

template <typename Kernel>
cudaError_t AllowSmem(Kernel kernel, int bytes) {
  return cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes);
}

template <int NT, int PLANES>
cudaError_t Launch(const uint8_t* w, int64_t vocab_pad, int64_t hidden_pad, const __half* act, int64_t stride,
                   const EpilogueParams& p, cudaStream_t stream) {
  using Shape = GemvShape<NT, PLANES>;
  const int64_t tiles = vocab_pad / 16;
  const int64_t blocks = (tiles + kWarps - 1) / kWarps;  // GemvMaxPartials
  return LaunchAfterPrevious(Fp8GemvKernel<NT, PLANES>, dim3(static_cast<unsigned>(blocks)), dim3(kWarps * 32),
                             Shape::kSmemBytes, stream, w, tiles, static_cast<int>(hidden_pad), act, stride, p);
}

// The finished logits are stored only when a later pass reads them.
template <int N, int PLANES, int BLOCKS = 1>
cudaError_t LaunchWgmma(const GemvWeights& w, const __half* act, const EpilogueParams& p, cudaStream_t stream) {
  using Shape = WgmmaGemvShape<N, BLOCKS>;
  const int64_t tiles = w.vocab_pad / 16;
  const int64_t blocks = (tiles + Shape::kWarps - 1) / Shape::kWarps;
  const bool write_logits = p.keep_logits || (p.max_token_ids > 0 && !p.kernel_token_logits);
  return LaunchAfterPrevious(Fp8GemvWgmmaKernel<N, PLANES, BLOCKS>, dim3(static_cast<unsigned>(blocks)),
                             dim3(Shape::kThreads), Shape::kSmemBytes, stream, w.tensor_map, tiles,
                             static_cast<int>(w.hidden_pad), act, write_logits, p);
}

// N = 16 (1-16 rows: hi + lo planes up to kGemvExactRows rows, one plane above), 24 (17-24 rows)
// and 32 (25-32 rows, one plane).
template <int BLOCKS>
cudaError_t LaunchWgmmaUpTo32(int n, const GemvWeights& w, const __half* act, const EpilogueParams& p,
                              cudaStream_t stream) {
  if (n == 32) return LaunchWgmma<32, 1, BLOCKS>(w, act, p, stream);
  if (n == 24) return LaunchWgmma<24, 1, BLOCKS>(w, act, p, stream);
  return p.rows <= kGemvExactRows ? LaunchWgmma<16, 2, BLOCKS>(w, act, p, stream)
                                  : LaunchWgmma<16, 1, BLOCKS>(w, act, p, stream);
}

// Set by PrepareFp8Gemv: the device runs sm_90a code (wgmma, TMA), and clusters of kRowBlocks
// activation blocks can run on it (not on every partition of a GPU, e.g. small MIG slices).
bool g_wgmma = false;
bool g_row_clusters = false;

// A launch of GemvActivationsClusterKernel over `rows` rows (config.attrs points at *cluster).
cudaLaunchConfig_t RowClusterLaunch(int64_t rows, cudaStream_t stream, cudaLaunchAttribute* cluster) {
  cluster->id = cudaLaunchAttributeClusterDimension;
  cluster->val.clusterDim.x = kRowBlocks;
  cluster->val.clusterDim.y = cluster->val.clusterDim.z = 1;
  cudaLaunchConfig_t config = {};
  config.gridDim = dim3(static_cast<unsigned>(rows * kRowBlocks));
  config.blockDim = dim3(kRowBlockThreads);
  config.stream = stream;
  config.attrs = cluster;
  config.numAttrs = 1;
  return config;
}

// MMA columns of the wgmma GEMV for `rows` rows (planes included); 0 = the mma.sync GEMV.
int WgmmaColumns(int64_t rows) {
  if (!g_wgmma) return 0;
  if (rows > kGemvMaxRows) return kGemmTileRows;  // the large-batch GEMM
  const int64_t columns = GemvPlanes(rows) * rows;
  return columns <= 16 ? 16 : columns <= 24 ? 24 : columns <= 32 ? 32 : columns <= 48 ? 48 : 64;
}

}  // namespace

int64_t GemvActivationStride(int64_t hidden_pad) { return (hidden_pad + kMaxChunk - 1) / kMaxChunk * kMaxChunk; }

template <typename In>
cudaError_t LaunchActivations(const In* x, const float* host_inv_scales, int64_t rows, int64_t hidden,
                              int64_t hidden_pad, __half* act, float* inv_scales, cudaStream_t stream,
                              const RowWords& words) {
  if (rows <= 0) return cudaSuccess;
  if (kHostScaled<In> && (rows <= kGemvExactRows || host_inv_scales == nullptr)) return cudaErrorInvalidValue;
  if (words.zero_per_row < 0 || (words.zero_per_row > 0 && words.zero == nullptr) || words.ids_per_row < 0 ||
      (words.ids_per_row > 0 && (words.ids_from == nullptr || words.ids_to == nullptr))) {
    return cudaErrorInvalidValue;
  }
  if (WgmmaColumns(rows) == kGemmTileRows) {
    const int64_t blocks = (rows + kGemmActRows - 1) / kGemmActRows;
    GemmActivationsKernel<In><<<static_cast<unsigned>(blocks), kGemmActThreads, 0, stream>>>(
        x, host_inv_scales, rows, hidden, GemvActivationStride(hidden_pad), act, inv_scales, words);
    return cudaGetLastError();
  }
  const int planes = static_cast<int>(GemvPlanes(rows));
  if constexpr (!kHostScaled<In>) {
    if (g_row_clusters && rows <= kGemvExactRows) {
      cudaLaunchAttribute cluster;
      const cudaLaunchConfig_t config = RowClusterLaunch(rows, stream, &cluster);
      return cudaLaunchKernelEx(&config, GemvActivationsClusterKernel<In>, x, hidden, planes, WgmmaColumns(rows),
                                act, inv_scales, words);
    }
  }
  GemvActivationsKernel<In><<<static_cast<unsigned>(rows), kActThreads, 0, stream>>>(
      x, host_inv_scales, hidden, GemvActivationStride(hidden_pad), planes, WgmmaColumns(rows), act, inv_scales,
      words);
  return cudaGetLastError();
}

cudaError_t LaunchGemvActivations(const float* x, int64_t rows, int64_t hidden, int64_t hidden_pad, __half* act,
                                  float* inv_scales, cudaStream_t stream, const RowWords& words) {
  return LaunchActivations(x, nullptr, rows, hidden, hidden_pad, act, inv_scales, stream, words);
}

cudaError_t LaunchGemvActivations(const uint16_t* x_bf16, int64_t rows, int64_t hidden, int64_t hidden_pad,
                                  __half* act, float* inv_scales, cudaStream_t stream, const RowWords& words) {
  return LaunchActivations(x_bf16, nullptr, rows, hidden, hidden_pad, act, inv_scales, stream, words);
}

cudaError_t LaunchGemvActivationsFromHalf(const uint16_t* x_half, const float* host_inv_scales, int64_t rows,
                                          int64_t hidden, int64_t hidden_pad, __half* act, float* inv_scales,
                                          cudaStream_t stream, const RowWords& words) {
  return LaunchActivations(reinterpret_cast<const __half*>(x_half), host_inv_scales, rows, hidden, hidden_pad, act,
                           inv_scales, stream, words);
}

int64_t GemvMaxRows() { return g_wgmma ? kGemvMaxRows : kGemvMmaRows; }

cudaError_t PrepareFp8Gemv() {
  int device = 0, major = 0, minor = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err == cudaSuccess) err = cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device);
  if (err == cudaSuccess) err = cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device);
  if (err != cudaSuccess) return err;
  g_wgmma = major == 9 && minor == 0;  // the module's sm_90a code; other GPUs run its compute_80 PTX
  err = AllowSmem(Fp8GemvKernel<1, 2>, GemvShape<1, 2>::kSmemBytes);
  if (err == cudaSuccess) err = AllowSmem(Fp8GemvKernel<2, 2>, GemvShape<2, 2>::kSmemBytes);
  if (err == cudaSuccess) err = AllowSmem(Fp8GemvKernel<2, 1>, GemvShape<2, 1>::kSmemBytes);
  if (err == cudaSuccess && g_wgmma) err = AllowSmem(Fp8GemvWgmmaKernel<16, 2>, WgmmaGemvShape<16>::kSmemBytes);
  if (err == cudaSuccess && g_wgmma) err = AllowSmem(Fp8GemvWgmmaKernel<16, 1>, WgmmaGemvShape<16>::kSmemBytes);
  using TwoBlocks = WgmmaGemvShape<16, 2>;
  if (err == cudaSuccess && g_wgmma) err = AllowSmem(Fp8GemvWgmmaKernel<16, 2, 2>, TwoBlocks::kSmemBytes);
  if (err == cudaSuccess && g_wgmma) err = AllowSmem(Fp8GemvWgmmaKernel<16, 1, 2>, TwoBlocks::kSmemBytes);
  using TwoBlocks24 = WgmmaGemvShape<24, 2>;
  if (err == cudaSuccess && g_wgmma) err = AllowSmem(Fp8GemvWgmmaKernel<24, 1, 2>, TwoBlocks24::kSmemBytes);
  if (err == cudaSuccess && g_wgmma) err = AllowSmem(Fp8GemvWgmmaKernel<24, 1>, WgmmaGemvShape<24>::kSmemBytes);
  using TwoBlocks32 = WgmmaGemvShape<32, 2>;
  if (err == cudaSuccess && g_wgmma) err = AllowSmem(Fp8GemvWgmmaKernel<32, 1, 2>, TwoBlocks32::kSmemBytes);
  if (err == cudaSuccess && g_wgmma) err = AllowSmem(Fp8GemvWgmmaKernel<32, 1>, WgmmaGemvShape<32>::kSmemBytes);
  if (err == cudaSuccess && g_wgmma) err = AllowSmem(Fp8GemvWgmmaKernel<48, 1>, WgmmaGemvShape<48>::kSmemBytes);
  if (err == cudaSuccess && g_wgmma) err = AllowSmem(Fp8GemvWgmmaKernel<64, 1>, WgmmaGemvShape<64>::kSmemBytes);
  g_row_clusters = false;
  if (err == cudaSuccess && g_wgmma) {
    int fp32_clusters = 0, bf16_clusters = 0;
    cudaLaunchAttribute cluster;
    const cudaLaunchConfig_t config = RowClusterLaunch(kGemvExactRows, nullptr, &cluster);
    err = cudaOccupancyMaxActiveClusters(&fp32_clusters, GemvActivationsClusterKernel<float>, &config);
    if (err == cudaSuccess) {
      err = cudaOccupancyMaxActiveClusters(&bf16_clusters, GemvActivationsClusterKernel<uint16_t>, &config);
    }
    g_row_clusters = err == cudaSuccess && fp32_clusters > 0 && bf16_clusters > 0;
    if (err != cudaSuccess) {
      (void)cudaGetLastError();  // cleared: one block per row instead
      err = cudaSuccess;
    }
  }
  return err;
}

cudaError_t DescribeByteMatrix(const void* base, int64_t cols, int64_t rows, int box_rows, CUtensorMap* out) {
  if (cols % 16 != 0 || box_rows < 1 || box_rows > 256) return cudaErrorInvalidValue;
  // The descriptor comes from the driver API, reached through the runtime (no libcuda link).
  PFN_cuTensorMapEncodeTiled_v12000 encode = nullptr;
  cudaDriverEntryPointQueryResult found;
  cudaError_t err = cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", reinterpret_cast<void**>(&encode),
                                                     12000, cudaEnableDefault, &found);
  if (err != cudaSuccess) return err;
  if (found != cudaDriverEntryPointSuccess || encode == nullptr) return cudaErrorNotSupported;
  const cuuint64_t dims[2] = {static_cast<cuuint64_t>(cols), static_cast<cuuint64_t>(rows)};
  const cuuint64_t row_stride[1] = {static_cast<cuuint64_t>(cols)};  // bytes
  const cuuint32_t box[2] = {kStep, static_cast<cuuint32_t>(box_rows)};
  const cuuint32_t element_strides[2] = {1, 1};
  const CUresult r = encode(out, CU_TENSOR_MAP_DATA_TYPE_UINT8, 2, const_cast<void*>(base), dims, row_stride, box,
                            element_strides, CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
                            CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  return r == CUDA_SUCCESS ? cudaSuccess : cudaErrorInvalidValue;
}

cudaError_t DescribeGemvWeights(const uint8_t* codes, int64_t vocab_pad, int64_t hidden_pad, GemvWeights* out) {
  if (vocab_pad % 16 != 0 || hidden_pad % 16 != 0) return cudaErrorInvalidValue;
  *out = GemvWeights{};
  out->codes = codes;
  out->vocab_pad = vocab_pad;
  out->hidden_pad = hidden_pad;
  if (!g_wgmma) return cudaSuccess;
  return DescribeByteMatrix(codes, hidden_pad, vocab_pad, 16, &out->tensor_map);  // one warp's step (a box)
}

int64_t GemvMaxPartials(int64_t vocab_pad) { return (vocab_pad / 16 + kWarps - 1) / kWarps; }

int64_t GemvPartialRows(int64_t rows) {
  return WgmmaColumns(rows) > 0 ? WgmmaGemvShape<16>::kWarps * 16 : kWarps * 16;  // (as the FP8 GEMMs')
}

int64_t GemvPartials(int64_t rows, int64_t vocab_pad) {
  if (WgmmaColumns(rows) > 0) return (vocab_pad / 16 + WgmmaGemvShape<16>::kWarps - 1) / WgmmaGemvShape<16>::kWarps;
  return rows <= kGemvFusedRows ? GemvMaxPartials(vocab_pad) : 0;  // the mma.sync GEMV's blocks, or raw products
}

cudaError_t LaunchFp8Gemv(const GemvWeights& w, const __half* act, const EpilogueParams& p, cudaStream_t stream) {
  auto blocks_ok = [](int blocks) { return blocks == 1 || blocks == 2; };
  if (p.rows <= 0 || p.rows > GemvMaxRows() || w.codes == nullptr || !blocks_ok(w.blocks_per_sm_16) ||
      !blocks_ok(w.blocks_per_sm_32)) {
    return cudaErrorInvalidValue;
  }
  const int64_t stride = GemvActivationStride(w.hidden_pad);
  static_assert(GemvShape<1, 2>::kBatchRows == kGemvFusedRows && GemvShape<2, 2>::kBatchRows == kGemvExactRows &&
                    GemvShape<2, 1>::kBatchRows == kGemvMmaRows,
                "the mma.sync variants cover every batch up to kGemvMmaRows rows");
  static_assert(kGemvMaxRows == 64 && kGemvExactRows == 8,
                "the wgmma variants cover N = 16 (hi + lo or one plane), 24, 32, 48, 64");
  switch (const int n = WgmmaColumns(p.rows)) {
    case 16:
    case 24:
    case 32:
      return (n == 16 ? w.blocks_per_sm_16 : w.blocks_per_sm_32) == 2 ? LaunchWgmmaUpTo32<2>(n, w, act, p, stream)
                                                                       : LaunchWgmmaUpTo32<1>(n, w, act, p, stream);
    case 48:
      return LaunchWgmma<48, 1>(w, act, p, stream);
    case 64:
      return LaunchWgmma<64, 1>(w, act, p, stream);
    default:
      break;
  }
  if (p.rows <= kGemvFusedRows) return Launch<1, 2>(w.codes, w.vocab_pad, w.hidden_pad, act, stride, p, stream);
  if (p.rows <= kGemvExactRows) return Launch<2, 2>(w.codes, w.vocab_pad, w.hidden_pad, act, stride, p, stream);
  return Launch<2, 1>(w.codes, w.vocab_pad, w.hidden_pad, act, stride, p, stream);
}

bool Fp8GemmAvailable() { return g_wgmma; }

bool KernelsStoreSparseTopK(int64_t rows) { return WgmmaColumns(rows) > 0; }

bool KernelsFinishTokenLogits(int64_t rows, int64_t max_ids) {
  const int columns = WgmmaColumns(rows);  // 0: the mma.sync GEMV
  const int64_t tile_rows = rows > kGemvMaxRows ? columns : columns / GemvPlanes(rows);
  static_assert(WgmmaGemvShape<16>::kThreads == 512, "one id per thread of the wgmma kernels' blocks");
  return columns > 0 && max_ids > 0 && tile_rows * max_ids <= 512;
}

}  // namespace lmhead::cuda
