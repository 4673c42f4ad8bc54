#include "kernels/cuda/sampling_kernels.h"

#include <cfloat>
#include <cub/block/block_reduce.cuh>
#include <cub/block/block_scan.cuh>

#include "kernels/sampling_math.h"

namespace lmhead::cuda {
namespace {

constexpr int kProcessThreads = 256;
constexpr int kProcessItems = 16;
constexpr int kSelectThreads = 1024;
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

// (score, id): higher score wins, ties to the lower id.
struct Pick {
  float score;
  int32_t id;
};
struct PickOp {
  __device__ __forceinline__ Pick operator()(const Pick& x, const Pick& y) const {
    return (x.score > y.score || (x.score == y.score && x.id < y.id)) ? x : y;
  }
};

struct SelectShared {
  union {
    typename cub::BlockScan<unsigned long long, kSelectThreads>::TempStorage scan;
    typename cub::BlockReduce<Pick, kSelectThreads>::TempStorage reduce;
    typename cub::BlockReduce<unsigned long long, kSelectThreads>::TempStorage sum;
  };
  unsigned long long hist[kRadixBins];  // radix pass mass histogram, or the top list's masses
  unsigned long long remaining;
  uint32_t prefix;
  float tau;
};

// The top-p threshold over every token of S0 (top_k = 0): a mass-weighted radix select of the
// largest key t with mass(key >= t) >= target, in digits of 11, 11 and 10 bits.
__device__ float DenseTopPThreshold(const float* z, int64_t vocab, float m, float min_z, float top_p,
                                    SelectShared& sh) {
  const int shifts[3] = {21, 10, 0};
  const int widths[3] = {11, 11, 10};
  uint32_t mask_so_far = 0;
  if (threadIdx.x == 0) sh.prefix = 0;
  for (int pass = 0; pass < 3; ++pass) {
    const uint32_t digit_mask = (1u << widths[pass]) - 1u;
    for (int i = threadIdx.x; i < kRadixBins; i += kSelectThreads) sh.hist[i] = 0;
    __syncthreads();
    const uint32_t prefix = sh.prefix;
    for (int64_t v = threadIdx.x; v < vocab; v += kSelectThreads) {
      const float zv = z[v];
      if (!(zv >= min_z) || zv == -INFINITY) continue;
      const uint32_t key = OrderedKey(zv);
      if ((key & mask_so_far) != prefix) continue;
      const unsigned long long w = TopPMass(zv, m);
      if (w != 0) atomicAdd(&sh.hist[(key >> shifts[pass]) & digit_mask], w);
    }
    __syncthreads();
    // Thread t owns bins 2047-2t and 2046-2t (highest digit first).
    const unsigned long long c0 = sh.hist[kRadixBins - 1 - 2 * threadIdx.x];
    const unsigned long long c1 = sh.hist[kRadixBins - 2 - 2 * threadIdx.x];
    unsigned long long before, total;
    cub::BlockScan<unsigned long long, kSelectThreads>(sh.scan).ExclusiveSum(c0 + c1, before, total);
    if (pass == 0 && threadIdx.x == 0) sh.remaining = TopPTarget(top_p, total);
    __syncthreads();
    const unsigned long long remaining = sh.remaining;
    __syncthreads();
    const unsigned long long counts[2] = {c0, c1};
    for (int k = 0; k < 2; ++k) {
      if (before < remaining && before + counts[k] >= remaining) {
        const uint32_t digit = kRadixBins - 1 - (2 * threadIdx.x + k);
        sh.prefix = prefix | (digit << shifts[pass]);
        sh.remaining = remaining - before;
      }
      before += counts[k];
    }
    mask_so_far |= digit_mask << shifts[pass];
    __syncthreads();
  }
  const uint32_t key = sh.prefix;
  return __uint_as_float((key & 0x80000000u) ? (key & 0x7fffffffu) : ~key);
}

__global__ void __launch_bounds__(kSelectThreads) SelectTokensKernel(SelectTokenParams p) {
  extern __shared__ unsigned char smem_raw[];
  SelectShared& sh = *reinterpret_cast<SelectShared*>(smem_raw);
  const int j = blockIdx.x;
  const SampleRowParams r = p.arenas.rows[p.first + j];
  const float* z = p.processed + j * p.ld;
  const float m = p.proc_max[j];
  int32_t chosen = p.proc_argmax[j];
  if (r.temperature > 0.0f) {
    const float min_z = r.min_p > 0.0f ? m + logf(r.min_p) : -INFINITY;
    const int32_t* list = p.proc_top_ids + j * int64_t{p.top_stride};
    auto in_s0 = [&](float zv) { return zv != -INFINITY && zv >= min_z; };
    float tau = -INFINITY;
    if (r.top_p < 1.0f) {
      if (r.top_k > 0) {
        for (int i = threadIdx.x; i < r.top_k; i += kSelectThreads) {
          const float zv = z[list[i]];
          sh.hist[i] = in_s0(zv) ? TopPMass(zv, m) : 0ull;
        }
        __syncthreads();
        if (threadIdx.x == 0) {
          unsigned long long total = 0;
          for (int i = 0; i < r.top_k; ++i) total += sh.hist[i];
          const unsigned long long target = TopPTarget(r.top_p, total);
          unsigned long long cumulative = 0;
          sh.tau = -INFINITY;
          for (int i = 0; i < r.top_k; ++i) {
            if (sh.hist[i] == 0) continue;
            cumulative += sh.hist[i];
            if (cumulative >= target) {
              sh.tau = z[list[i]];
              break;
            }
          }
        }
        __syncthreads();
        tau = sh.tau;
      } else {
        tau = DenseTopPThreshold(z, p.vocab, m, min_z, r.top_p, sh);
      }
    }
    // Gumbel-max over S, starting from the argmax (always in S).
    Pick best{-INFINITY, INT32_MAX};
    const float floor_score = m + GumbelNoise(r.seed, r.step, static_cast<uint32_t>(chosen));
    auto consider = [&](int32_t id) {
      const float zv = z[id];
      if (!in_s0(zv) || zv < tau || zv + kMaxGumbel < floor_score) return;
      const Pick c{zv + GumbelNoise(r.seed, r.step, static_cast<uint32_t>(id)), id};
      best = PickOp()(best, c);
    };
    if (r.top_k > 0) {
      for (int i = threadIdx.x; i < r.top_k; i += kSelectThreads) consider(list[i]);
    } else {
      for (int64_t v = threadIdx.x; v < p.vocab; v += kSelectThreads) consider(static_cast<int32_t>(v));
    }
    __syncthreads();
    const Pick winner = cub::BlockReduce<Pick, kSelectThreads>(sh.reduce).Reduce(best, PickOp());
    if (threadIdx.x == 0) chosen = winner.id;
  }
  if (threadIdx.x == 0) {
    p.sampled_id[j] = chosen;
    p.sampled_logprob[j] = r.processed_logprobs
                               ? z[chosen] - p.proc_lse[j]
                               : p.raw[r.src_row * p.ld + chosen] - p.raw_lse[r.src_row];
  }
}

}  // namespace

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
  const size_t smem = sizeof(SelectShared);
  cudaError_t e = cudaFuncSetAttribute(SelectTokensKernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                       static_cast<int>(smem));
  if (e != cudaSuccess) return e;
  SelectTokensKernel<<<static_cast<unsigned>(p.count), kSelectThreads, smem, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace lmhead::cuda
