// Device helpers shared by the epilogue and the GEMV: the logit transform and the running row
// statistic (max, argmax, sum of exp) that both compute over vocab chunks. CUDA sources only.
#ifndef LMHEAD_KERNELS_CUDA_LOGIT_STATS_CUH_
#define LMHEAD_KERNELS_CUDA_LOGIT_STATS_CUH_

#include <cstdint>

namespace lmhead::cuda {

// A raw product already multiplied by its activation scale -> the served logit: per-row weight
// scale, logit scale, then soft-capping (kSoftcap: softcap > 0). Loops over many logits decide
// kSoftcap once, outside the loop: a per-logit branch keeps the compiler from interleaving the
// iterations (session 17: a third of the FP8 x FP8 GEMM's time on an H100).
template <bool kSoftcap>
__device__ __forceinline__ float FinishLogitAs(float l, float row_scale, float logit_scale, float softcap) {
  l *= row_scale;
  l *= logit_scale;
  if constexpr (kSoftcap) l = softcap * tanhf(l / softcap);
  return l;
}

// The same for one logit (row_scale null: unscaled weights; softcap 0: none). The same bits.
__device__ __forceinline__ float FinishLogit(float l, const float* row_scale, float logit_scale, float softcap) {
  const float rs = row_scale != nullptr ? *row_scale : 1.0f;
  return softcap > 0.0f ? FinishLogitAs<true>(l, rs, logit_scale, softcap)
                        : FinishLogitAs<false>(l, rs, logit_scale, softcap);
}

// (max, argmax, sum of exp(l - max)) with ties on the lower id; sum == 0 marks "empty".
struct Stat {
  float m;
  int32_t a;
  float s;
};

// The statistic of one logit: masked (-inf) logits are empty entries (no mass, never win).
__device__ __forceinline__ Stat StatOf(float l, int64_t id) {
  return Stat{l, static_cast<int32_t>(id), l == -INFINITY ? 0.0f : 1.0f};
}

__device__ __forceinline__ Stat Combine(Stat x, Stat y) {
  if (x.s == 0.0f) return y;
  if (y.s == 0.0f) return x;
  Stat r;
  r.m = fmaxf(x.m, y.m);
  r.a = (x.m > y.m || (x.m == y.m && x.a < y.a)) ? x.a : y.a;
  r.s = x.s * expf(x.m - r.m) + y.s * expf(y.m - r.m);
  return r;
}

// Order-preserving map of floats onto uint32 (larger float -> larger key; only a NaN maps to 0).
__device__ __forceinline__ uint32_t FloatKey(float f) {
  const uint32_t u = __float_as_uint(f);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

__device__ __forceinline__ float KeyFloat(uint32_t k) {
  return __uint_as_float((k & 0x80000000u) ? (k & 0x7fffffffu) : ~k);
}

// The Stat of lane (this lane ^ offset) of the warp. Call from all 32 lanes.
__device__ __forceinline__ Stat ShuffleXorStat(const Stat& st, int offset) {
  return Stat{__shfl_xor_sync(0xffffffffu, st.m, offset), __shfl_xor_sync(0xffffffffu, st.a, offset),
              __shfl_xor_sync(0xffffffffu, st.s, offset)};
}

// Combines this lane's Stat with those of the lanes whose index differs from it only in the bits
// from `first` (a power of two) up to below `end` (an xor butterfly: every lane of such a group
// ends with the group's Stat). Call from all 32 lanes.
__device__ __forceinline__ Stat ButterflyStat(Stat st, int first, int end) {
#pragma unroll
  for (int offset = first; offset < end; offset *= 2) st = Combine(st, ShuffleXorStat(st, offset));
  return st;
}

}  // namespace lmhead::cuda

#endif  // LMHEAD_KERNELS_CUDA_LOGIT_STATS_CUH_
