#include "kernels/cuda/kernels.h"

#include "kernels/cuda/dependent_launch.h"
#include "kernels/cuda/logit_stats.cuh"
#include "kernels/cuda/row_element.cuh"

#include <cfloat>
#include <cub/block/block_reduce.cuh>
#include <cub/block/block_scan.cuh>

namespace lmhead::cuda {
namespace {

constexpr int kQuantThreads = 256;
constexpr int kPartThreads = 256;
constexpr int kPartItems = 16;
constexpr int kChunk = kPartThreads * kPartItems;  // vocab entries per first-pass block
constexpr int kFinalThreads = 512;
// Histogram of d = max - logit: kFineBins bins of 1/32 up to 8 below the max, then bins of 1/4 up
// to 71.75 below it, then one bin for the rest. (Bins of 1/32 over 16 units left the k-th logit
// outside the histogram in rows whose top logits are spread as a trained model's are -- e.g. one
// token far ahead of the rest -- and those rows fell back to the exact select in one block.)
constexpr int kBins = kEpilogueBins;
constexpr int kFineBins = 256;
constexpr float kFinePerUnit = 32.0f;
constexpr float kCoarsePerUnit = 4.0f;

__device__ __forceinline__ float BlockMaxAbs(float v, float* shared) {
  using Reduce = cub::BlockReduce<float, kQuantThreads>;
  __shared__ typename Reduce::TempStorage temp;
  const float m = Reduce(temp).Reduce(v, [](float a, float b) { return fmaxf(a, b); });
  if (threadIdx.x == 0) *shared = m;
  __syncthreads();
  const float out = *shared;
  __syncthreads();
  return out;
}

__device__ __forceinline__ float DecodeE4m3(__nv_fp8_e4m3 q) { return static_cast<float>(q); }

// Blocks [0, rows) quantize one row each; blocks past that zero one padding row each. Each thread
// keeps up to kQuantPerThread elements of its row in registers, all loaded up front: one pass over
// memory (a loop that read the row twice, one load in flight per thread, was latency-bound: the
// activation stage of a 384 x 5120 fp32 slice took 20.6 us, launch to GEMM start, against 16.8
// now; median of 7 calls each, on an H100).
constexpr int kQuantPerThread = 32;  // rows up to 8192 wide stay in registers

template <typename In>
__global__ void __launch_bounds__(kQuantThreads) QuantizeActivationsKernel(const In* __restrict__ x, int64_t rows,
                                                                          int64_t hidden, int64_t ld, bool split,
                                                                          __nv_fp8_e4m3* __restrict__ out,
                                                                          float* __restrict__ scales) {
  LaunchDependents();  // the GEMM may start loading weights; it waits for these rows
  __shared__ float shared;
  const int64_t r = blockIdx.x;
  if (r >= rows) {
    const int64_t pad = (split ? 2 * rows : rows) + (r - rows);
    for (int64_t i = threadIdx.x; i < ld; i += blockDim.x) out[pad * ld + i] = __nv_fp8_e4m3(0.0f);
    if (threadIdx.x == 0) scales[pad] = 0.0f;
    return;
  }
  RowSlice<In, kQuantThreads, kQuantPerThread> row{x + r * hidden, 0, hidden};
  const float amax = BlockMaxAbs(row.LoadAbsMax(), &shared);
  const float s_hi = amax > 0.0f ? amax / 448.0f : 1.0f;
  __nv_fp8_e4m3* hi = out + r * ld;
  for (int64_t i = hidden + threadIdx.x; i < ld; i += blockDim.x) hi[i] = __nv_fp8_e4m3(0.0f);
  // The residual of v against its code (__fmul_rn/__fsub_rn: no FMA contraction, so the CPU can
  // reproduce it).
  auto residual = [s_hi](float v, __nv_fp8_e4m3 q) { return __fsub_rn(v, __fmul_rn(DecodeE4m3(q), s_hi)); };
  float ramax = 0.0f;
  row.ForEach([&](int64_t i, float v) {
    const __nv_fp8_e4m3 q(v / s_hi);  // round to nearest even, saturating to finite
    hi[i] = q;
    ramax = fmaxf(ramax, fabsf(residual(v, q)));
  });
  if (threadIdx.x == 0) scales[r] = s_hi;
  if (!split) return;
  ramax = BlockMaxAbs(ramax, &shared);
  const float s_lo = ramax > 0.0f ? ramax / 448.0f : 1.0f;
  __nv_fp8_e4m3* lo = out + (rows + r) * ld;
  for (int64_t i = hidden + threadIdx.x; i < ld; i += blockDim.x) lo[i] = __nv_fp8_e4m3(0.0f);
  row.ForEach([&](int64_t i, float v) { lo[i] = __nv_fp8_e4m3(residual(v, __nv_fp8_e4m3(v / s_hi)) / s_lo); });
  if (threadIdx.x == 0) scales[rows + r] = ramax > 0.0f ? s_lo : 0.0f;
}

__global__ void ConvertBf16Kernel(const float* __restrict__ x, int64_t rows, int64_t hidden, int64_t ld,
                                  __nv_bfloat16* __restrict__ out) {
  const int64_t count = rows * ld;
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < count; i += int64_t{gridDim.x} * blockDim.x) {
    const int64_t r = i / ld, c = i % ld;
    out[i] = __float2bfloat16_rn(c < hidden ? x[r * hidden + c] : 0.0f);
  }
}

__global__ void FillKernel(float* p, int64_t count, float v) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < count; i += int64_t{gridDim.x} * blockDim.x) p[i] = v;
}

// The Stat of a block of THREADS threads (a multiple of 32), each passing its own; valid in warp 0.
// A butterfly within each warp, then one over the warps' results: two short chains of Combines
// (cub::BlockReduce ends in one thread combining the warps' results one after another, on the
// critical path of every call's row statistics). Call once per kernel, from all threads.
template <int THREADS>
__device__ __forceinline__ Stat BlockStat(Stat st) {
  constexpr int kWarps = THREADS / 32;
  static_assert(THREADS % 32 == 0 && kWarps <= 32, "whole warps, at most 32");
  __shared__ Stat warp_stats[kWarps];
  st = ButterflyStat(st, 1, 32);
  if (threadIdx.x % 32 == 0) warp_stats[threadIdx.x / 32] = st;
  __syncthreads();
  if (threadIdx.x < 32) {
    st = ButterflyStat(threadIdx.x < kWarps ? warp_stats[threadIdx.x] : Stat{-FLT_MAX, 0, 0.0f}, 1, kWarps);
  }
  return st;
}

// A raw product (and the residual row's, when split) -> the served logit: activation scale(s),
// then FinishLogit. Rounded explicitly (no contraction), so that every pass that finishes the
// same product gets the same float.
__device__ __forceinline__ float FinishRaw(const EpilogueParams& p, float hi, float lo, float s_hi, float s_lo,
                                           const float* row_scale) {
  float l = __fmul_rn(hi, s_hi);
  if (p.split) l = __fmaf_rn(lo, s_lo, l);
  return FinishLogit(l, row_scale, p.logit_scale, p.softcap);
}

// The served logit of row b, id v: raw already finished (act_scales null, or written back by
// the first pass when keep_logits), else FinishRaw of its raw product(s).
__device__ __forceinline__ float LogitOf(const EpilogueParams& p, int64_t b, int64_t v) {
  const float raw = p.raw[b * p.ld + v];
  if (p.act_scales == nullptr) return raw;
  const float lo = p.split ? p.raw[(p.rows + b) * p.ld + v] : 0.0f;
  return FinishRaw(p, raw, lo, p.act_scales[b], p.split ? p.act_scales[p.rows + b] : 0.0f,
                   p.row_scales != nullptr ? p.row_scales + v : nullptr);
}

__device__ __forceinline__ float4 Load4(const float* p) { return *reinterpret_cast<const float4*>(p); }

// Per (row, vocab chunk): the logits (written back into raw when keep_logits) and their Stat.
// Four consecutive ids per thread and step, in 16-byte loads (raw rows, ld and the row scales
// are 16-float aligned).
__global__ void PartialsKernel(EpilogueParams p) {
  WaitForPrerequisites();  // launched early after the GEMV (LaunchAfterPrevious)
  LaunchDependents();      // RowStatsKernel's blocks may be scheduled now; they wait for these
  const int64_t b = blockIdx.y;
  const bool transform = p.act_scales != nullptr;
  const bool write = p.keep_logits && transform;
  const float s_hi = transform ? p.act_scales[b] : 1.0f;
  const float s_lo = p.split ? p.act_scales[p.rows + b] : 0.0f;
  float* hi_row = p.raw + b * p.ld;
  const float* lo_row = p.split ? p.raw + (p.rows + b) * p.ld : hi_row;
  Stat st{-FLT_MAX, 0, 0.0f};
  const int64_t begin = blockIdx.x * int64_t{kChunk};
  const int64_t end = min(begin + kChunk, p.vocab);
  for (int64_t v0 = begin + 4 * threadIdx.x; v0 < end; v0 += 4 * kPartThreads) {
    float l[4];
    *reinterpret_cast<float4*>(l) = Load4(hi_row + v0);
    if (transform) {
      float lo[4], rs[4];
      *reinterpret_cast<float4*>(lo) = Load4(lo_row + v0);
      if (p.row_scales != nullptr) *reinterpret_cast<float4*>(rs) = Load4(p.row_scales + v0);
#pragma unroll
      for (int j = 0; j < 4; ++j) l[j] = FinishRaw(p, l[j], lo[j], s_hi, s_lo, p.row_scales != nullptr ? &rs[j] : nullptr);
      if (write) *reinterpret_cast<float4*>(hi_row + v0) = *reinterpret_cast<float4*>(l);
    }
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      if (v0 + j < end) st = Combine(st, StatOf(l[j], v0 + j));
    }
  }
  const Stat total = BlockStat<kPartThreads>(st);
  if (threadIdx.x == 0) {
    const int64_t i = b * gridDim.x + blockIdx.x;
    p.part_max[i] = total.m;
    p.part_arg[i] = total.a;
    p.part_sum[i] = total.s;
  }
}

struct FinalShared {
  union {
    typename cub::BlockScan<int, kFinalThreads>::TempStorage scan;
  };
  int hist[2048];  // the exact radix select's digit histogram
  uint64_t candidates[kMaxCandidates];
  int count;
  int taken;
  uint32_t prefix;
  int remaining;
  int equal_count;
};

// A top-k candidate: the logit's FloatKey above the id's complement, so that one unsigned
// comparison ranks higher logits first, then lower ids.
__device__ __forceinline__ uint64_t PackCandidate(uint32_t key, int64_t id) {
  return (uint64_t{key} << 32) | (0xffffffffu - static_cast<uint32_t>(id));
}
__device__ __forceinline__ int32_t CandidateId(uint64_t candidate) {
  return static_cast<int32_t>(0xffffffffu - static_cast<uint32_t>(candidate));
}
__device__ __forceinline__ float CandidateLogit(uint64_t candidate) {
  return KeyFloat(static_cast<uint32_t>(candidate >> 32));
}

// Exact fallback: radix-selects the k-th largest key, then collects the k best candidates
// (ties: lowest ids) into sh.candidates[0, k). logit_at(v): the row's logit of id v.
template <typename LogitAt>
__device__ void SelectExact(const EpilogueParams& p, LogitAt logit_at, FinalShared& sh) {
  // Radix-select the k-th largest key: digits of 11, 11 and 10 bits.
  if (threadIdx.x == 0) {
    sh.prefix = 0;
    sh.remaining = p.top_k;
  }
  uint32_t mask_so_far = 0;
  const int shifts[3] = {21, 10, 0};
  const int widths[3] = {11, 11, 10};
#pragma unroll
  for (int pass = 0; pass < 3; ++pass) {
    const int shift = shifts[pass];
    const uint32_t digit_mask = (1u << widths[pass]) - 1u;
    for (int i = threadIdx.x; i < 2048; i += kFinalThreads) sh.hist[i] = 0;
    __syncthreads();
    const uint32_t prefix = sh.prefix;
    for (int64_t v = threadIdx.x; v < p.vocab; v += kFinalThreads) {
      const uint32_t key = FloatKey(logit_at(v));
      if ((key & mask_so_far) == prefix) atomicAdd(&sh.hist[(key >> shift) & digit_mask], 1);
    }
    __syncthreads();
    // Suffix sums over the bins (highest digit first): thread t owns bins 2047-4t .. 2044-4t.
    int counts[4];
    int local = 0;
    for (int j = 0; j < 4; ++j) {
      counts[j] = sh.hist[2047 - (threadIdx.x * 4 + j)];
      local += counts[j];
    }
    int before;
    cub::BlockScan<int, kFinalThreads>(sh.scan).ExclusiveSum(local, before);
    const int remaining = sh.remaining;
    __syncthreads();
    for (int j = 0; j < 4; ++j) {
      if (before < remaining && before + counts[j] >= remaining) {
        const uint32_t digit = 2047u - (threadIdx.x * 4 + j);
        sh.prefix = prefix | (digit << shift);
        sh.remaining = remaining - before;
        sh.equal_count = counts[j];
      }
      before += counts[j];
    }
    mask_so_far |= digit_mask << shift;
    __syncthreads();
  }
  // sh.prefix is now the k-th largest key; sh.remaining of the keys equal to it are needed.
  const uint32_t kth = sh.prefix;
  const int need_equal = sh.remaining;
  const bool all_equal_fit = sh.equal_count == need_equal;
  if (threadIdx.x == 0) {
    sh.count = 0;
    sh.taken = 0;
  }
  __syncthreads();
  for (int64_t v = threadIdx.x; v < p.vocab; v += kFinalThreads) {
    const uint32_t key = FloatKey(logit_at(v));
    if (key > kth || (all_equal_fit && key == kth)) {
      const int slot = atomicAdd(&sh.count, 1);
      sh.candidates[slot] = PackCandidate(key, v);
    }
  }
  __syncthreads();
  if (!all_equal_fit) {
    // More ties than needed: take the lowest ids, scanning in id order.
    const int base = sh.count;
    for (int64_t start = 0; start < p.vocab; start += kFinalThreads) {
      const int64_t v = start + threadIdx.x;
      const int flag = v < p.vocab && FloatKey(logit_at(v)) == kth;
      int pos, tile_total;
      cub::BlockScan<int, kFinalThreads>(sh.scan).ExclusiveSum(flag, pos, tile_total);
      const int taken = sh.taken;
      if (flag && taken + pos < need_equal) {
        sh.candidates[base + taken + pos] = PackCandidate(kth, v);
      }
      __syncthreads();
      if (threadIdx.x == 0) sh.taken = taken + tile_total;
      __syncthreads();
      if (sh.taken >= need_equal) break;
    }
  }
  __syncthreads();
}

// A row's top-k counters (p.cut, [rows, kCutSlots]). kCutBin: the histogram bin of the cut, or
// kCutAtThreshold when the candidates are the logits >= the float in kCutThreshold.
enum CutSlot { kCutBin, kCutCount, kCandidateCount, kHistogramBlocksDone, kCollectBlocksDone, kCutThreshold };
static_assert(kCutThreshold < kCutSlots, "kCutSlots counts the slots");
constexpr int32_t kCutAtThreshold = -2;

// Whether a top-k of k skips the histogram: RowStatsKernel's threads each reduce a disjoint set of
// the row's `partials` partial statistics, so the k-th largest of their maxima (real logits) is
// at most the row's k-th largest logit -- a cut known without a histogram pass. It is coarser
// than a histogram bin (more candidates to order in one block per row), so it is taken where the
// groups are fine (>= 8k of them: the GEMV's per-block partials) or the slice has many rows (the
// histogram pass over all of them costs more than the ordering). Measured on an H100 at
// 131072x5120: top-20 +4.3% instead of +5.5% at B = 1-4 and 31.4 instead of 35.9 ms at
// B = 8192 (two runs), but +11% instead of +7% at B = 8-16 from 32 chunk maxima (so not there;
// under ncu the kernels themselves were faster there, so the loss is in how the chained launches
// overlap).
__host__ __device__ __forceinline__ bool CutAtThreshold(int top_k, int64_t partials, int64_t rows) {
  const int64_t groups = partials < kPartThreads ? partials : kPartThreads;
  return top_k > 0 && top_k <= groups && (8 * int64_t{top_k} <= groups || rows >= 128);
}

// A group maximum as a rank key: its FloatKey with the low 8 bits replaced by the group's index
// (the lower index the larger key), so that the kPartThreads keys all differ and one unsigned
// comparison orders them. Maxima within ~2^-15 of each other rank by index; GroupCut rounds down.
__device__ __forceinline__ uint32_t GroupKey(float group_max, int group) {
  static_assert(kPartThreads <= 256, "a group index fits the low 8 bits");
  return (FloatKey(group_max) & ~0xffu) | (0xffu - static_cast<uint32_t>(group));
}

// The threshold cut from the key of rank top_k - 1: the float of that key with its index bits
// cleared, at most the group's maximum -- so at most the row's k-th largest logit, as at least k
// groups' keys (hence maxima) reach it. -inf for a -inf maximum (whose cleared key is a NaN).
__device__ __forceinline__ float GroupCut(uint32_t key) {
  const float cut = KeyFloat(key & ~0xffu);
  return isnan(cut) ? -INFINITY : cut;
}

// How many of keys[first, first + count) (in shared memory; count a multiple of 4) exceed
// `mine`. Four keys per 16-byte shared load, many loads in flight (the callers are on the call's
// critical path, and this loop is most of their instructions).
__device__ __forceinline__ int KeysAbove(const uint32_t* keys, uint32_t mine, int first, int count) {
  int above = 0;
#pragma unroll 16
  for (int j = first; j < first + count; j += 4) {
    const uint4 o = *reinterpret_cast<const uint4*>(&keys[j]);
    above += (o.x > mine) + (o.y > mine) + (o.z > mine) + (o.w > mine);
  }
  return above;
}

// Thread t < kPartThreads of a row's block: the statistic of the row's partials t, t +
// kPartThreads, ... (p.part_*, [rows, partials]); its maximum's GroupKey goes to group_key[t], the
// groups a threshold cut ranks (the maximum -inf when empty: all masked, or no partials).
__device__ __forceinline__ Stat GroupStat(const EpilogueParams& p, int64_t b, int64_t partials, uint32_t* group_key) {
  Stat st{-FLT_MAX, 0, 0.0f};
  for (int64_t c = threadIdx.x; c < partials; c += kPartThreads) {
    const int64_t i = b * partials + c;
    st = Combine(st, Stat{p.part_max[i], p.part_arg[i], p.part_sum[i]});
  }
  group_key[threadIdx.x] = GroupKey(st.s > 0.0f ? st.m : -INFINITY, static_cast<int>(threadIdx.x));
  return st;
}

// One thread: row b's max, argmax and logsumexp from its total statistic.
__device__ __forceinline__ void WriteRowStats(const EpilogueParams& p, int64_t b, const Stat& total) {
  p.max_logit[b] = total.m;
  p.argmax[b] = total.a;
  p.logsumexp[b] = total.m + logf(total.s);
}

// Row b's requested token logits (0 for a negative id), unless the kernels finished them: read
// from the finished logits in p.raw, or computed from the raw products (LogitOf) when not
// `finished`. The threads of one block (blockDim.x of them).
__device__ __forceinline__ void WriteTokenLogits(const EpilogueParams& p, int64_t b, bool finished) {
  for (int i = threadIdx.x; i < (p.kernel_token_logits ? 0 : p.max_token_ids); i += blockDim.x) {
    const int32_t id = p.token_ids[b * p.max_token_ids + i];
    p.token_logits[b * p.max_token_ids + i] = id < 0 ? 0.0f : finished ? p.raw[b * p.ld + id] : LogitOf(p, b, id);
  }
}

// Row statistics from the first pass's partials: max, argmax, logsumexp; the requested token
// logits; and, when a top-k is wanted, the cut for the passes below: a cleared histogram, or the
// threshold (CutAtThreshold).
__global__ void RowStatsKernel(EpilogueParams p, int chunks) {
  WaitForPrerequisites();  // launched early after PartialsKernel or the GEMV
  LaunchDependents();
  __shared__ __align__(16) uint32_t group_key[kPartThreads];
  const int64_t b = blockIdx.x;
  const Stat total = BlockStat<kPartThreads>(GroupStat(p, b, chunks, group_key));
  if (threadIdx.x == 0) {
    WriteRowStats(p, b, total);
    if (p.top_k > 0) p.row_max[b] = total.m;
  }
  // Finished logits are in raw after the GEMV (ready_partials) or a first pass that kept them.
  WriteTokenLogits(p, b, /*finished=*/p.ready_partials > 0 || p.keep_logits);
  if (p.top_k == 0) return;
  int32_t* cut = p.cut + b * kCutSlots;
  if (threadIdx.x < kCutSlots) cut[threadIdx.x] = 0;
  if (!CutAtThreshold(p.top_k, chunks, p.rows)) {
    for (int i = threadIdx.x; i < kBins; i += kPartThreads) p.hist[b * kBins + i] = 0;
    return;
  }
  __syncthreads();  // the group maxima are in shared memory; the slots are cleared
  // The group maximum of rank top_k - 1 gives the threshold.
  const uint32_t mine = group_key[threadIdx.x];
  if (KeysAbove(group_key, mine, 0, kPartThreads) == p.top_k - 1) {
    cut[kCutBin] = kCutAtThreshold;
    cut[kCutThreshold] = __float_as_int(GroupCut(mine));
  }
}

// For the grid's blocks of one row (blockIdx.y), after each wrote its share to global memory:
// true in exactly one block, the last to finish, which then sees every block's writes.
// Call from all threads of the block.
__device__ __forceinline__ bool LastBlockOfRow(int32_t* done) {
  __shared__ bool last;
  __threadfence();  // this thread's writes are visible before the block counts itself done
  __syncthreads();
  if (threadIdx.x == 0) last = atomicAdd(done, 1) == static_cast<int>(gridDim.x) - 1;
  __syncthreads();
  if (last) __threadfence();
  return last;
}

// Non-decreasing in max_logit - l (a logit at or above a bin's logits is in that bin or a lower one),
// in [0, kBins): a value above the max -- or NaN -- is in bin 0. (The rows whose logits a kernel
// did not store, EpilogueParams::store_rows, hold whatever the buffer held: their results are not
// used, but their bins index shared memory.)
__device__ __forceinline__ int BinOf(float max_logit, float l) {
  const float d = fmaxf(max_logit - l, 0.0f);
  const float fine = kFineBins / kFinePerUnit;  // units covered by the fine bins
  const float bin = d < fine ? d * kFinePerUnit : kFineBins + (d - fine) * kCoarsePerUnit;
  return static_cast<int>(fminf(bin, kBins - 1));
}

// Histogram of (max - logit) over one vocab chunk of one row, added into the row's histogram;
// the row's last block then finds the bin holding the k-th largest logit (cut[kCutBin]) and how
// many logits lie at or above it (cut[kCutCount]). The last bin (everything 71.75 or more below
// the max) is not counted: a cut there bounds nothing (UseCut), and in a trained model's logits it
// can hold most entries -- counting it made every lane of a warp add to the same shared-memory word.
__global__ void HistogramKernel(EpilogueParams p) {
  WaitForPrerequisites();  // chained by LaunchAfterPrevious
  LaunchDependents();
  __shared__ int warp_hist[kPartThreads / 32][kBins];
  const int64_t b = blockIdx.y;
  for (int i = threadIdx.x; i < (kPartThreads / 32) * kBins; i += kPartThreads) (&warp_hist[0][0])[i] = 0;
  __syncthreads();
  const float m = p.row_max[b];
  const float* logits = p.raw + b * p.ld;
  const int64_t begin = blockIdx.x * int64_t{kChunk};
  const int64_t end = min(begin + kChunk, p.vocab);
  int* mine = warp_hist[threadIdx.x / 32];
  for (int64_t v0 = begin + 4 * threadIdx.x; v0 < end; v0 += 4 * kPartThreads) {
    const float4 q = Load4(logits + v0);  // four ids per 16-byte load
    const float l[4] = {q.x, q.y, q.z, q.w};
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int bin = BinOf(m, l[j]);
      if (v0 + j < end && bin < kBins - 1) atomicAdd(&mine[bin], 1);
    }
  }
  __syncthreads();
  int32_t* row_hist = p.hist + b * kBins;
  for (int i = threadIdx.x; i < kBins; i += kPartThreads) {
    int count = 0;
    for (int w = 0; w < kPartThreads / 32; ++w) count += warp_hist[w][i];
    if (count != 0) atomicAdd(&row_hist[i], count);
  }
  int32_t* cut = p.cut + b * kCutSlots;
  if (!LastBlockOfRow(&cut[kHistogramBlocksDone])) return;
  // The cut: thread t owns bins 2t and 2t + 1 (kBins = 2 * kPartThreads).
  static_assert(kBins == 2 * kPartThreads, "two bins per thread");
  using Scan = cub::BlockScan<int, kPartThreads>;
  __shared__ typename Scan::TempStorage temp;
  const int c0 = __ldcg(&row_hist[2 * threadIdx.x]), c1 = __ldcg(&row_hist[2 * threadIdx.x + 1]);
  int before;
  Scan(temp).ExclusiveSum(c0 + c1, before);
  if (threadIdx.x == 0) cut[kCutBin] = -1;
  __syncthreads();
  if (before < p.top_k && before + c0 >= p.top_k) {
    cut[kCutBin] = 2 * threadIdx.x;
    cut[kCutCount] = before + c0;
  } else if (before + c0 < p.top_k && before + c0 + c1 >= p.top_k) {
    cut[kCutBin] = 2 * threadIdx.x + 1;
    cut[kCutCount] = before + c0 + c1;
  }
}

// Orders sh.candidates[0, count) (packed key and id: higher logit first, then lower id) and writes
// the first top_k as row b's top ids and logits. A candidate's rank is the number of better ones,
// O(count^2 / threads): up to kFinalThreads / 8 candidates get 8 threads each (a few dozen is the
// usual count, and this is on the call's critical path), more one thread each. Call from all
// threads after the candidates are in shared memory.
__device__ __forceinline__ void WriteTopK(const EpilogueParams& p, int64_t b, const FinalShared& sh, int count) {
  auto write = [&](uint64_t candidate, int rank) {
    if (rank >= p.top_k) return;
    p.top_ids[b * p.top_k + rank] = CandidateId(candidate);
    p.top_logits[b * p.top_k + rank] = CandidateLogit(candidate);
  };
  constexpr int kSplit = 8;  // threads per candidate, adjacent lanes
  if (count * kSplit <= kFinalThreads) {
    const int i = static_cast<int>(threadIdx.x) / kSplit, part = static_cast<int>(threadIdx.x) % kSplit;
    const uint64_t mine = i < count ? sh.candidates[i] : 0;
    int rank = 0;
    for (int j = part; j < count; j += kSplit) rank += sh.candidates[j] > mine;
#pragma unroll
    for (int offset = 1; offset < kSplit; offset *= 2) rank += __shfl_xor_sync(0xffffffffu, rank, offset);
    if (part == 0 && i < count) write(mine, rank);
    return;
  }
  for (int i = threadIdx.x; i < count; i += kFinalThreads) {
    const uint64_t mine = sh.candidates[i];
    int rank = 0;
    for (int j = 0; j < count; ++j) rank += sh.candidates[j] > mine;
    write(mine, rank);
  }
}

// Whether the row's cut bounds its candidates: a threshold (the count is known only after
// collecting), or a histogram bin below the last one holding at most kMaxCandidates logits.
__device__ __forceinline__ bool UseCut(const EpilogueParams& p, int64_t b) {
  const int32_t* cut = p.cut + b * kCutSlots;
  return cut[kCutBin] == kCutAtThreshold ||
         (cut[kCutBin] >= 0 && cut[kCutBin] < kBins - 1 && cut[kCutCount] <= kMaxCandidates);
}

// Collects the logits at or above the cut (bin or threshold) of one chunk of one row as packed
// candidates; the row's last block then orders them exactly and writes the top k: a candidate's
// rank is the number of better ones (higher key, then lower id: one comparison of the packed
// value), O(c^2 / threads). Rows whose cut could not bound the candidates (more than
// kMaxCandidates) take the exact radix select instead (in that last block).
__global__ void __launch_bounds__(kFinalThreads) CollectSelectKernel(EpilogueParams p) {
  WaitForPrerequisites();  // chained by LaunchAfterPrevious
  LaunchDependents();
  const int64_t b = blockIdx.y;
  int32_t* cut = p.cut + b * kCutSlots;
  bool bounded = UseCut(p, b);
  // A threshold cut here is over the first pass's partials (RowSelectKernel takes those over the
  // kernels' own), one per block of this grid: a block whose maximum is below it has no candidate.
  const bool below_cut = cut[kCutBin] == kCutAtThreshold && p.ready_partials == 0 &&
                         p.part_max[b * gridDim.x + blockIdx.x] < __int_as_float(cut[kCutThreshold]);
  if (bounded && !below_cut) {
    const bool at_threshold = cut[kCutBin] == kCutAtThreshold;
    const int bin = cut[kCutBin];
    const float m = p.row_max[b];
    const float threshold = __int_as_float(cut[kCutThreshold]);
    const float* logits = p.raw + b * p.ld;
    const int64_t begin = blockIdx.x * int64_t{kChunk};
    const int64_t end = min(begin + kChunk, p.vocab);
    // Four consecutive ids per thread and step (16-byte loads; see PartialsKernel).
    for (int64_t v0 = begin + 4 * threadIdx.x; v0 < end; v0 += 4 * kFinalThreads) {
      const float4 q = Load4(logits + v0);
      const float l[4] = {q.x, q.y, q.z, q.w};
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const int64_t v = v0 + j;
        if (v < end && (at_threshold ? l[j] >= threshold : BinOf(m, l[j]) <= bin)) {
          const int slot = atomicAdd(&cut[kCandidateCount], 1);
          if (slot < kMaxCandidates) {
            p.candidates[b * kMaxCandidates + slot] = PackCandidate(FloatKey(l[j]), v);
          }
        }
      }
    }
  }
  if (!LastBlockOfRow(&cut[kCollectBlocksDone])) return;
  extern __shared__ unsigned char smem_raw[];
  FinalShared& sh = *reinterpret_cast<FinalShared*>(smem_raw);
  int candidate_count = bounded ? __ldcg(&cut[kCandidateCount]) : 0;
  bounded = bounded && candidate_count <= kMaxCandidates;  // a threshold may have let in too many
  if (bounded) {
    for (int i = threadIdx.x; i < candidate_count; i += kFinalThreads) {
      sh.candidates[i] = __ldcg(&p.candidates[b * kMaxCandidates + i]);
    }
    __syncthreads();
  } else {
    const float* logits = p.raw + b * p.ld;
    SelectExact(p, [logits](int64_t v) { return logits[v]; }, sh);
    candidate_count = p.top_k;
  }
  WriteTopK(p, b, sh, candidate_count);
}

// Row statistics (as RowStatsKernel) and the top-k in one block per row, for rows whose cut is a
// threshold over the kernels' own partial statistics (CutAtThreshold, ready_partials with
// partial_rows): only the vocab ranges whose partial maximum reaches the threshold -- a few dozen
// per row -- are read, so one block does it and no collect pass over the row is launched (one
// kernel fewer on the call's critical path). Too many candidates (ties) fall back to the exact
// select in the same block.
__global__ void __launch_bounds__(kFinalThreads) RowSelectKernel(EpilogueParams p) {
  WaitForPrerequisites();  // launched early after the GEMV
  LaunchDependents();
  extern __shared__ unsigned char smem_raw[];
  FinalShared& sh = *reinterpret_cast<FinalShared*>(smem_raw);
  __shared__ __align__(16) uint32_t group_key[kPartThreads];
  __shared__ float threshold;
  const int64_t b = blockIdx.x;
  const int64_t partials = p.ready_partials;
  const float* part_max = p.part_max + b * partials;
  const int32_t* part_arg = p.part_arg + b * partials;
  // Which blocks' logits the kernel stored (sparse top-k store; null: all of them).
  const uint8_t* stored = p.range_stored != nullptr ? p.range_stored + b * partials : nullptr;
  // The first kPartThreads threads reduce the same groups of partials as RowStatsKernel.
  const Stat st = threadIdx.x < kPartThreads ? GroupStat(p, b, partials, group_key) : Stat{-FLT_MAX, 0, 0.0f};
  const Stat total = BlockStat<kFinalThreads>(st);
  if (threadIdx.x == 0) {
    WriteRowStats(p, b, total);
    sh.count = 0;
  }
  const float* logits = p.raw + b * p.ld;  // finished (the kernels store them for a top-k)
  WriteTokenLogits(p, b, /*finished=*/true);
  __syncthreads();  // the group keys are in shared memory
  {
    // Two threads per group (adjacent lanes), each counting the larger keys in half of them.
    static_assert(kFinalThreads == 2 * kPartThreads, "two threads per group");
    const int me = static_cast<int>(threadIdx.x / 2), half = static_cast<int>(threadIdx.x % 2);
    const uint32_t mine = group_key[me];
    int rank = KeysAbove(group_key, mine, half * (kPartThreads / 2), kPartThreads / 2);
    rank += __shfl_xor_sync(0xffffffffu, rank, 1);
    if (half == 0 && rank == p.top_k - 1) threshold = GroupCut(mine);
  }
  __syncthreads();
  const float cut = threshold;
  // Warp w takes ranges w + 16 i: lane i checks range w + 16 i's maximum, then the warp reads the
  // stored ranges that reach the cut (they hold every candidate), each in one round of loads; a
  // range reaching it but not stored adds its maximum (its only possible candidate, see
  // EpilogueParams::topk_bound). The lanes load their range's maximum, id and flag together.
  constexpr int kWarpsPerBlock = kFinalThreads / 32;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  for (int64_t first = warp; first < partials; first += 32 * kWarpsPerBlock) {
    const int64_t mine = first + int64_t{lane} * kWarpsPerBlock;
    const bool in = mine < partials;
    const float mine_max = in ? part_max[mine] : -INFINITY;
    const int32_t mine_arg = in ? part_arg[mine] : 0;
    const bool mine_stored = stored == nullptr || (in && stored[mine] != 0);
    const bool mine_reaches = in && mine_max >= cut;
    if (mine_reaches && !mine_stored) {
      const int slot = atomicAdd(&sh.count, 1);
      if (slot < kMaxCandidates) {
        sh.candidates[slot] = PackCandidate(FloatKey(mine_max), mine_arg);
      }
    }
    uint32_t reach = __ballot_sync(0xffffffffu, mine_reaches && mine_stored);
    while (reach != 0) {
      const int i = __ffs(reach) - 1;
      reach &= reach - 1;
      const int64_t r = first + int64_t{i} * kWarpsPerBlock;
      const int64_t begin = r * p.partial_rows, end = min(begin + p.partial_rows, p.vocab);
      for (int64_t v0 = begin; v0 < end; v0 += 8 * 32) {  // up to 8 loads per lane in flight
        float l[8];
#pragma unroll
        for (int k = 0; k < 8; ++k) {
          const int64_t v = v0 + k * 32 + lane;
          l[k] = v < end ? logits[v] : -INFINITY;
        }
#pragma unroll
        for (int k = 0; k < 8; ++k) {
          if (!(l[k] >= cut)) continue;
          const int64_t v = v0 + k * 32 + lane;
          const int slot = atomicAdd(&sh.count, 1);
          if (slot < kMaxCandidates) {
            sh.candidates[slot] = PackCandidate(FloatKey(l[k]), v);
          }
        }
      }
    }
  }
  __syncthreads();
  int candidate_count = sh.count;
  if (candidate_count > kMaxCandidates) {
    __syncthreads();  // every thread has read the count SelectExact resets
    // The logits as stored; in a block not stored, its maximum and -inf (the top k is the same).
    SelectExact(
        p,
        [&](int64_t v) {
          const int64_t r = v / p.partial_rows;
          return stored == nullptr || stored[r] ? logits[v] : v == part_arg[r] ? part_max[r] : -INFINITY;
        },
        sh);
    candidate_count = p.top_k;
  }
  WriteTopK(p, b, sh, candidate_count);
}

int Blocks(int64_t count, int threads) {
  return static_cast<int>(std::min<int64_t>((count + threads - 1) / threads, 4096));
}

}  // namespace

int64_t PartialChunks(int64_t vocab) { return (vocab + kChunk - 1) / kChunk; }

namespace {
template <typename In>
cudaError_t LaunchQuantize(const In* x, int64_t rows, int64_t hidden, int64_t ld, bool split, int64_t n_pad,
                           __nv_fp8_e4m3* out, float* scales, cudaStream_t stream) {
  const int64_t used = split ? 2 * rows : rows;
  const int64_t blocks = rows + std::max<int64_t>(0, n_pad - used);
  QuantizeActivationsKernel<In><<<static_cast<unsigned>(blocks), kQuantThreads, 0, stream>>>(x, rows, hidden, ld,
                                                                                            split, out, scales);
  return cudaGetLastError();
}
}  // namespace

cudaError_t LaunchQuantizeActivations(const float* x, int64_t rows, int64_t hidden, int64_t ld, bool split,
                                      int64_t n_pad, __nv_fp8_e4m3* out, float* scales, cudaStream_t stream) {
  return LaunchQuantize(x, rows, hidden, ld, split, n_pad, out, scales, stream);
}

cudaError_t LaunchQuantizeActivations(const uint16_t* x_bf16, int64_t rows, int64_t hidden, int64_t ld, bool split,
                                      int64_t n_pad, __nv_fp8_e4m3* out, float* scales, cudaStream_t stream) {
  return LaunchQuantize(x_bf16, rows, hidden, ld, split, n_pad, out, scales, stream);
}

cudaError_t LaunchConvertActivationsBf16(const float* x, int64_t rows, int64_t hidden, int64_t ld,
                                         int64_t n_pad, __nv_bfloat16* out, float* scales,
                                         cudaStream_t stream) {
  if (n_pad > rows) {
    cudaError_t e = cudaMemsetAsync(out + rows * ld, 0, (n_pad - rows) * ld * sizeof(__nv_bfloat16), stream);
    if (e != cudaSuccess) return e;
  }
  ConvertBf16Kernel<<<Blocks(rows * ld, 256), 256, 0, stream>>>(x, rows, hidden, ld, out);
  FillKernel<<<Blocks(n_pad, 256), 256, 0, stream>>>(scales, n_pad, 1.0f);
  return cudaGetLastError();
}

cudaError_t PrepareEpilogue() {
  cudaError_t e = cudaFuncSetAttribute(CollectSelectKernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                       static_cast<int>(sizeof(FinalShared)));
  if (e != cudaSuccess) return e;
  return cudaFuncSetAttribute(RowSelectKernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                              static_cast<int>(sizeof(FinalShared)));
}

bool TopKFromPartials(const EpilogueParams& p) {
  return p.top_k > 0 && p.ready_partials > 0 && p.partial_rows > 0 && CutAtThreshold(p.top_k, p.ready_partials, p.rows);
}

cudaError_t LaunchEpilogue(const EpilogueParams& p, cudaStream_t stream) {
  if (p.top_k < 0 || p.top_k > kMaxTopK || (p.top_k > 0 && !p.keep_logits)) return cudaErrorInvalidValue;
  if ((p.topk_bound != nullptr || p.range_stored != nullptr) &&
      (p.topk_bound == nullptr || p.range_stored == nullptr || !TopKFromPartials(p))) {
    return cudaErrorInvalidValue;
  }
  auto aligned = [](const void* q) { return reinterpret_cast<uintptr_t>(q) % 16 == 0; };
  if (p.ld % 4 != 0 || !aligned(p.raw) || !aligned(p.row_scales)) return cudaErrorInvalidValue;
  const int chunks = static_cast<int>(PartialChunks(p.vocab));
  cudaError_t e = cudaSuccess;
  if (p.ready_partials == 0) {
    e = LaunchAfterPrevious(PartialsKernel, dim3(chunks, static_cast<unsigned>(p.rows)), dim3(kPartThreads), 0, stream, p);
    if (e != cudaSuccess) return e;
  }
  const unsigned rows = static_cast<unsigned>(p.rows);
  if (TopKFromPartials(p)) {
    e = LaunchAfterPrevious(RowSelectKernel, dim3(rows), dim3(kFinalThreads), sizeof(FinalShared), stream, p);
    return e != cudaSuccess ? e : cudaGetLastError();
  }
  e = LaunchAfterPrevious(RowStatsKernel, dim3(rows), dim3(kPartThreads), 0, stream, p,
                          p.ready_partials > 0 ? static_cast<int>(p.ready_partials) : chunks);
  if (e != cudaSuccess) return e;
  if (p.top_k > 0) {
    // Each pass is launched early and waits for the previous one (hides the launch gaps); each
    // row's last block finishes the pass (the cut; the ordering), so there is no launch for it.
    const int64_t partials = p.ready_partials > 0 ? p.ready_partials : chunks;
    if (!CutAtThreshold(p.top_k, partials, p.rows)) {
      e = LaunchAfterPrevious(HistogramKernel, dim3(chunks, rows), dim3(kPartThreads), 0, stream, p);
    }
    if (e == cudaSuccess) {
      e = LaunchAfterPrevious(CollectSelectKernel, dim3(chunks, rows), dim3(kFinalThreads), sizeof(FinalShared),
                              stream, p);
    }
    if (e != cudaSuccess) return e;
  }
  return cudaGetLastError();
}

}  // namespace lmhead::cuda
