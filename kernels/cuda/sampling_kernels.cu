#include "kernels/cuda/sampling_kernels.h"

#include <algorithm>
#include <cfloat>
#include <cub/block/block_reduce.cuh>
#include <cub/block/block_scan.cuh>

#include "kernels/sampling_math.h"

namespace lmhead::cuda {
namespace {

constexpr int kProcessThreads = 256;
constexpr int kProcessItems = 16;
constexpr int kMaxTopKBlocks = 4;  // blocks that cover a top-k list of up to 1024 entries
constexpr int kRadixBins = 2048;
constexpr float kMaxGumbel = 17.5f;  // as in sampling.cc

__device__ __forceinline__ int Find(const uint32_t* ids, int count, uint32_t id) {
  int lo = 0, hi = count;
  while (lo < hi) {
    const int mid = (lo + hi) / 2;
    if (ids[mid] < id) lo = mid + 1; else hi = mid;
  }
  return lo < count && ids[lo] == id ? lo : -1;
}

// Steps 1-4 of sampling.h with the same IEEE operations as ProcessLogit (no FMA contraction).
__device__ float ProcessOne(const SampleRowParams& r, const SamplingArenas& a, uint32_t id, float l) {
  if (r.bias_count > 0) {
    const int i = Find(a.ids + r.bias_offset, r.bias_count, id);
    if (i >= 0) l = __fadd_rn(l, a.bias_values[r.bias_offset + i]);
  }
  if (r.allowed_count > 0 && Find(a.ids + r.allowed_offset, r.allowed_count, id) < 0) return -INFINITY;
  if (r.banned_count > 0 && Find(a.ids + r.banned_offset, r.banned_count, id) >= 0) return -INFINITY;
  if (r.previous_count > 0) {
    const int i = Find(a.ids + r.previous_offset, r.previous_count, id);
    if (i >= 0) {
      if (r.repetition != 1.0f) l = l > 0.0f ? __fdiv_rn(l, r.repetition) : __fmul_rn(l, r.repetition);
      l = __fsub_rn(l, r.presence);
      l = __fsub_rn(l, __fmul_rn(r.frequency, static_cast<float>(a.counts[r.previous_offset + i])));
    }
  }
  if (r.temperature > 0.0f) l = __fdiv_rn(l, r.temperature);
  return l;
}

__global__ void ProcessLogitsKernel(const float* __restrict__ raw, int64_t ld, int64_t vocab, SamplingArenas a,
                                    int first, float* __restrict__ processed) {
  const int j = blockIdx.y;
  const SampleRowParams r = a.rows[first + j];
  const float* in = raw + r.src_row * ld;
  float* out = processed + j * ld;
  const int64_t begin = blockIdx.x * int64_t{kProcessThreads * kProcessItems};
  const int64_t end = min(begin + kProcessThreads * kProcessItems, vocab);
  for (int64_t v = begin + threadIdx.x; v < end; v += kProcessThreads) {
    out[v] = ProcessOne(r, a, static_cast<uint32_t>(v), in[v]);
  }
}

// (score, id): higher score wins, ties to the lower id. Empty: score -inf, id INT32_MAX.
struct Pick {
  float score;
  int32_t id;
};
struct PickOp {
  __device__ __forceinline__ Pick operator()(const Pick& x, const Pick& y) const {
    return (x.score > y.score || (x.score == y.score && x.id < y.id)) ? x : y;
  }
};

constexpr int kSelectChunk = 2048;  // vocab entries per block of the vocabulary passes
constexpr int kSelectBlock = 256;
constexpr int kDigitThreads = 1024;
// Radix digits of the top-p threshold: 11, 11 and 10 bits of the key, highest first.
__device__ __forceinline__ int ShiftOf(int pass) { return pass == 0 ? 21 : pass == 1 ? 10 : 0; }
__device__ __forceinline__ int WidthOf(int pass) { return pass == 2 ? 10 : 11; }

int64_t SelectChunks(int64_t vocab) { return (vocab + kSelectChunk - 1) / kSelectChunk; }

// Per processed row: the top-p radix state and the per-block picks.
struct RowSelectState {
  unsigned long long hist[kRadixBins];
  unsigned long long remaining;
  uint32_t prefix;
  float tau;  // the kept set's lower bound (-inf: no top-p cut)
};

struct Scratch {
  RowSelectState* states;  // [count]
  Pick* picks;             // [count, chunks]
};

__host__ __device__ Scratch ScratchOf(void* base, int count) {
  Scratch s;
  s.states = reinterpret_cast<RowSelectState*>(base);
  s.picks = reinterpret_cast<Pick*>(reinterpret_cast<char*>(base) + sizeof(RowSelectState) * count);
  return s;
}

struct RowView {
  SampleRowParams r;
  const float* z;
  float m;
  float min_z;
  __device__ bool InS0(float zv, int32_t id) const {
    if (zv == -INFINITY) return false;
    if (r.has_keep) {
      return zv > r.keep_above ||
             (zv == r.keep_above && uint64_t{r.token_offset} + static_cast<uint32_t>(id) <= r.keep_tie_max_id);
    }
    return zv >= min_z;
  }
  __device__ bool DenseTopP() const { return r.temperature > 0.0f && r.top_p < 1.0f && r.top_k == 0; }
};

__device__ RowView ViewOf(const SelectTokenParams& p, int j) {
  RowView v;
  v.r = p.arenas.rows[p.first + j];
  v.z = p.processed + j * p.ld;
  v.m = p.proc_max[j];
  v.min_z = v.r.min_p > 0.0f ? v.m + logf(v.r.min_p) : -INFINITY;
  return v;
}

// Clears the radix state; rows with a top-k list and top_p < 1 get their threshold here (the
// list is at most kMaxTopK long and already ordered).
__global__ void __launch_bounds__(kDigitThreads) ThresholdInitKernel(SelectTokenParams p) {
  const int j = blockIdx.x;
  RowSelectState& st = ScratchOf(p.scratch, p.count).states[j];
  for (int i = threadIdx.x; i < kRadixBins; i += kDigitThreads) st.hist[i] = 0;
  const RowView v = ViewOf(p, j);
  if (threadIdx.x == 0) {
    st.prefix = 0;
    st.remaining = 0;
    st.tau = -INFINITY;
  }
  if (!(v.r.temperature > 0.0f && v.r.top_p < 1.0f && v.r.top_k > 0)) return;
  __shared__ unsigned long long masses[1024];
  const int32_t* list = p.proc_top_ids + j * int64_t{p.top_stride};
  for (int i = threadIdx.x; i < v.r.top_k; i += kDigitThreads) {
    const float zv = v.z[list[i]];
    masses[i] = v.InS0(zv, list[i]) ? TopPMass(zv, v.m) : 0ull;
  }
  __syncthreads();
  if (threadIdx.x != 0) return;
  unsigned long long total = 0;
  for (int i = 0; i < v.r.top_k; ++i) total += masses[i];
  const unsigned long long target = TopPTarget(v.r.top_p, total);
  unsigned long long cumulative = 0;
  for (int i = 0; i < v.r.top_k; ++i) {
    if (masses[i] == 0) continue;
    cumulative += masses[i];
    if (cumulative >= target) {
      st.tau = v.z[list[i]];
      break;
    }
  }
}

// One radix pass over one chunk of one row: mass of each digit among the keys matching the
// prefix so far, summed in shared memory, then added to the row's histogram.
__global__ void __launch_bounds__(kSelectBlock) TopPHistogramKernel(SelectTokenParams p, int pass) {
  const int j = blockIdx.y;
  const RowView v = ViewOf(p, j);
  if (!v.DenseTopP()) return;
  RowSelectState& st = ScratchOf(p.scratch, p.count).states[j];
  __shared__ unsigned long long hist[kRadixBins];
  for (int i = threadIdx.x; i < kRadixBins; i += kSelectBlock) hist[i] = 0;
  __syncthreads();
  const uint32_t prefix = st.prefix;
  const uint32_t mask_so_far = pass == 0 ? 0u : (0xffffffffu << ShiftOf(pass - 1));
  const uint32_t digit_mask = (1u << WidthOf(pass)) - 1u;
  const int64_t begin = blockIdx.x * int64_t{kSelectChunk};
  const int64_t end = min(begin + kSelectChunk, p.vocab);
  for (int64_t i = begin + threadIdx.x; i < end; i += kSelectBlock) {
    const float zv = v.z[i];
    if (!v.InS0(zv, static_cast<int32_t>(i))) continue;
    const uint32_t key = OrderedKey(zv);
    if ((key & mask_so_far) != prefix) continue;
    const unsigned long long w = TopPMass(zv, v.m);
    if (w != 0) atomicAdd(&hist[(key >> ShiftOf(pass)) & digit_mask], w);
  }
  __syncthreads();
  for (int i = threadIdx.x; i < kRadixBins; i += kSelectBlock) {
    if (hist[i] != 0) atomicAdd(&st.hist[i], hist[i]);
  }
}

// After a pass: the digit where the cumulative mass (highest digits first) reaches the target.
__global__ void __launch_bounds__(kDigitThreads) TopPDigitKernel(SelectTokenParams p, int pass) {
  const int j = blockIdx.x;
  const RowView v = ViewOf(p, j);
  if (!v.DenseTopP()) return;
  RowSelectState& st = ScratchOf(p.scratch, p.count).states[j];
  using Scan = cub::BlockScan<unsigned long long, kDigitThreads>;
  __shared__ typename Scan::TempStorage temp;
  __shared__ unsigned long long remaining_shared;
  // Thread t owns bins 2047-2t and 2046-2t (highest digit first).
  const unsigned long long c0 = st.hist[kRadixBins - 1 - 2 * threadIdx.x];
  const unsigned long long c1 = st.hist[kRadixBins - 2 - 2 * threadIdx.x];
  unsigned long long before, total;
  Scan(temp).ExclusiveSum(c0 + c1, before, total);
  if (threadIdx.x == 0) remaining_shared = pass == 0 ? TopPTarget(v.r.top_p, total) : st.remaining;
  __syncthreads();
  const unsigned long long remaining = remaining_shared;
  const uint32_t prefix = st.prefix;
  __syncthreads();  // every thread has read the state before the winner rewrites it
  const unsigned long long counts[2] = {c0, c1};
  for (int k = 0; k < 2; ++k) {
    if (before < remaining && before + counts[k] >= remaining) {
      const uint32_t digit = kRadixBins - 1 - (2 * threadIdx.x + k);
      const uint32_t key = prefix | (digit << ShiftOf(pass));
      st.prefix = key;
      st.remaining = remaining - before;
      if (pass == 2) st.tau = __uint_as_float((key & 0x80000000u) ? (key & 0x7fffffffu) : ~key);
    }
    before += counts[k];
  }
  st.hist[kRadixBins - 1 - 2 * threadIdx.x] = 0;  // ready for the next pass
  st.hist[kRadixBins - 2 - 2 * threadIdx.x] = 0;
}

// Gumbel-max over one chunk of S (dense rows) or one slice of the top-k list: the block's best
// pick goes to picks[row, chunk].
__global__ void __launch_bounds__(kSelectBlock) GumbelPickKernel(SelectTokenParams p) {
  const int j = blockIdx.y;
  const RowView v = ViewOf(p, j);
  const Scratch scratch = ScratchOf(p.scratch, p.count);
  const float tau = scratch.states[j].tau;
  Pick best{-INFINITY, INT32_MAX};
  if (v.r.temperature > 0.0f) {
    const int32_t chosen = p.proc_argmax[j];
    // The argmax's score bounds the winner's from below, unless an explicit kept set excludes it.
    const float floor_score =
        v.r.has_keep ? -INFINITY : v.m + GumbelNoise(v.r.seed, v.r.step, v.r.token_offset + static_cast<uint32_t>(chosen));
    auto consider = [&](int32_t id) {
      const float zv = v.z[id];
      if (!v.InS0(zv, id) || zv < tau || zv + kMaxGumbel < floor_score) return;
      best = PickOp()(best, Pick{zv + GumbelNoise(v.r.seed, v.r.step, v.r.token_offset + static_cast<uint32_t>(id)), id});
    };
    if (v.r.top_k > 0) {
      const int32_t* list = p.proc_top_ids + j * int64_t{p.top_stride};
      for (int i = blockIdx.x * kSelectBlock + threadIdx.x; i < v.r.top_k && i < (blockIdx.x + 1) * kSelectBlock;
           i += kSelectBlock) {
        consider(list[i]);
      }
    } else {
      const int64_t begin = blockIdx.x * int64_t{kSelectChunk};
      const int64_t end = min(begin + kSelectChunk, p.vocab);
      for (int64_t i = begin + threadIdx.x; i < end; i += kSelectBlock) consider(static_cast<int32_t>(i));
    }
  }
  using Reduce = cub::BlockReduce<Pick, kSelectBlock>;
  __shared__ typename Reduce::TempStorage temp;
  const Pick block_best = Reduce(temp).Reduce(best, PickOp());
  if (threadIdx.x == 0) scratch.picks[j * int64_t{gridDim.x} + blockIdx.x] = block_best;
}

// The row's token: the best pick over its chunks (or the argmax when greedy), and its logprob.
__global__ void __launch_bounds__(kSelectBlock) FinishSelectKernel(SelectTokenParams p, int chunks) {
  const int j = blockIdx.x;
  const RowView v = ViewOf(p, j);
  const Pick* picks = ScratchOf(p.scratch, p.count).picks + j * int64_t{chunks};
  Pick best{-INFINITY, INT32_MAX};
  for (int c = threadIdx.x; c < chunks; c += kSelectBlock) best = PickOp()(best, picks[c]);
  using Reduce = cub::BlockReduce<Pick, kSelectBlock>;
  __shared__ typename Reduce::TempStorage temp;
  const Pick winner = Reduce(temp).Reduce(best, PickOp());
  if (threadIdx.x != 0) return;
  // Without an explicit kept set the argmax is in S, so a sampling row always has a pick; with
  // one, these rows (a shard) may hold none of it: sampled_id -1.
  const int32_t chosen = v.r.temperature > 0.0f ? winner.id : p.proc_argmax[j];
  if (chosen == INT32_MAX) {
    p.sampled_id[j] = -1;
    p.sampled_score[j] = -INFINITY;
    p.sampled_logprob[j] = 0.0f;
    return;
  }
  p.sampled_id[j] = chosen;
  p.sampled_score[j] = v.r.temperature > 0.0f ? winner.score : v.z[chosen];
  p.sampled_logprob[j] = v.r.processed_logprobs ? v.z[chosen] - p.proc_lse[j]
                                                : p.raw[v.r.src_row * p.ld + chosen] - p.raw_lse[v.r.src_row];
}

}  // namespace

size_t SelectScratchBytes(int count, int64_t vocab) {
  const int64_t chunks = std::max<int64_t>(SelectChunks(vocab), kMaxTopKBlocks);
  return sizeof(RowSelectState) * count + sizeof(Pick) * count * chunks;
}

cudaError_t LaunchProcessLogits(const float* raw, int64_t ld, int64_t vocab, SamplingArenas arenas, int first,
                                int count, float* processed, cudaStream_t stream) {
  if (count <= 0) return cudaSuccess;
  const int64_t per_block = kProcessThreads * kProcessItems;
  const dim3 grid(static_cast<unsigned>((vocab + per_block - 1) / per_block), static_cast<unsigned>(count));
  ProcessLogitsKernel<<<grid, kProcessThreads, 0, stream>>>(raw, ld, vocab, arenas, first, processed);
  return cudaGetLastError();
}

cudaError_t LaunchSelectTokens(const SelectTokenParams& p, cudaStream_t stream) {
  if (p.count <= 0) return cudaSuccess;
  const unsigned rows = static_cast<unsigned>(p.count);
  const int chunks = static_cast<int>(std::max<int64_t>(SelectChunks(p.vocab), kMaxTopKBlocks));
  ThresholdInitKernel<<<rows, kDigitThreads, 0, stream>>>(p);
  if (p.any_dense_top_p) {
    const dim3 grid(static_cast<unsigned>(SelectChunks(p.vocab)), rows);
    for (int pass = 0; pass < 3; ++pass) {
      TopPHistogramKernel<<<grid, kSelectBlock, 0, stream>>>(p, pass);
      TopPDigitKernel<<<rows, kDigitThreads, 0, stream>>>(p, pass);
    }
  }
  GumbelPickKernel<<<dim3(static_cast<unsigned>(chunks), rows), kSelectBlock, 0, stream>>>(p);
  FinishSelectKernel<<<rows, kSelectBlock, 0, stream>>>(p, chunks);
  return cudaGetLastError();
}

}  // namespace lmhead::cuda
