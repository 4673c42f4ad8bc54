// Pieces of the sampling contract that the CPU reference and the CUDA kernels must compute the
// same way: the Gumbel noise of a (seed, step, token id), the order-preserving float key, and the
// fixed-point probability mass used by top-p. Header-only; compiles as host and device code.
#ifndef LMHEAD_KERNELS_SAMPLING_MATH_H_
#define LMHEAD_KERNELS_SAMPLING_MATH_H_

#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define LMHEAD_HD __host__ __device__ __forceinline__
#else
#include <cmath>
#define LMHEAD_HD inline
#endif

namespace lmhead {

// SplitMix64's finalizer: a bijective 64-bit mix.
LMHEAD_HD uint64_t Mix64(uint64_t x) {
  x ^= x >> 30;
  x *= 0xbf58476d1ce4e5b9ull;
  x ^= x >> 27;
  x *= 0x94d049bb133111ebull;
  x ^= x >> 31;
  return x;
}

// Uniform in (0, 1) from (seed, step, token id): 24 random bits k, (k + 1/2) / 2^24 in float. A
// token's noise depends only on these three numbers, never on the batch, the backend or (for
// vocab shards) which process holds the token. The top value of k would round to exactly 1 in
// float (noise +inf: that token would win every draw it takes part in, about 1 in 2^24 tokens
// per draw, and the bound kMaxGumbel would not hold), so it gives the float just below 1.
LMHEAD_HD float SamplingUniform(uint64_t seed, uint64_t step, uint32_t token) {
  const uint64_t h = Mix64(Mix64(Mix64(seed ^ 0x6a09e667f3bcc909ull) ^ step) ^ token);
  const float u = (static_cast<float>(h >> 40) + 0.5f) * (1.0f / 16777216.0f);
  return u < 1.0f ? u : 1.0f - 1.0f / 16777216.0f;
}

// Standard Gumbel noise: -log(-log(u)). In [-2.85, 16.64] for the u above.
LMHEAD_HD float GumbelNoise(uint64_t seed, uint64_t step, uint32_t token) {
#if defined(__CUDA_ARCH__)
  return -logf(-logf(SamplingUniform(seed, step, token)));
#else
  return -std::log(-std::log(SamplingUniform(seed, step, token)));
#endif
}

// Order-preserving map of floats onto uint32 (larger float -> larger key; -inf lowest).
LMHEAD_HD uint32_t OrderedKey(float f) {
  uint32_t u;
#if defined(__CUDA_ARCH__)
  u = __float_as_uint(f);
#else
  std::memcpy(&u, &f, 4);
#endif
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

// Top-p mass of a token in fixed point: exp(z - max) * 2^40, truncated. Integer sums make the
// cumulative mass independent of summation order (deterministic on a GPU); a token whose
// probability is below 2^-40 of the top token's adds no mass.
LMHEAD_HD uint64_t TopPMass(float z, float max_z) {
#if defined(__CUDA_ARCH__)
  const float e = expf(z - max_z);
#else
  const float e = std::exp(z - max_z);
#endif
  return static_cast<uint64_t>(static_cast<double>(e) * 1099511627776.0);
}

// The cumulative mass the kept set must reach: ceil(top_p * total), at least 1.
LMHEAD_HD uint64_t TopPTarget(float top_p, uint64_t total) {
  const double t = static_cast<double>(top_p) * static_cast<double>(total);
  uint64_t target = static_cast<uint64_t>(t);
  if (static_cast<double>(target) < t) ++target;
  return target == 0 ? 1 : target;
}

}  // namespace lmhead

#endif  // LMHEAD_KERNELS_SAMPLING_MATH_H_
