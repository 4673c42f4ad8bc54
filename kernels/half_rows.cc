#include "kernels/half_rows.h"

#include <algorithm>
#include <cmath>

#include "kernels/half.h"

#if defined(__x86_64__)
#include <immintrin.h>
#elif defined(__aarch64__)
#include <arm_neon.h>
#endif

namespace lmhead {
namespace {

size_t ValuesBytes(int64_t rows, int64_t hidden) {
  return (static_cast<size_t>(rows * hidden) * sizeof(uint16_t) + 63) / 64 * 64;
}

// The exponent e of the row's scale 2^(14 - e) (the CUDA kernels' PlaneExponent).
int ScaleExponent(float amax) {
  int e = 14;
  if (amax > 0.0f && std::isfinite(amax)) {
    std::frexp(amax, &e);
    e = std::max(e, -100);
  }
  return e;
}

float MaxAbsPortable(const float* x, int64_t n) {
  float amax = 0.0f;
  for (int64_t i = 0; i < n; ++i) amax = std::max(amax, std::fabs(x[i]));
  return amax;
}

void ConvertPortable(const float* x, int64_t n, float s, uint16_t* out) {
  for (int64_t i = 0; i < n; ++i) out[i] = FloatToHalf(x[i] * s);  // x * s is exact: s is a power of two
}

#if defined(__x86_64__)
// (Masked forms, the integer AND and a stored reduction: GCC 12's plain _mm512_max_ps,
// _mm512_abs_ps, _mm512_reduce_max_ps and _mm512_cvtps_ph warn of their own undefined temporaries.)
__attribute__((target("avx512f"))) __m512 Abs(__m512 v) {
  return _mm512_castsi512_ps(_mm512_and_si512(_mm512_castps_si512(v), _mm512_set1_epi32(0x7fffffff)));
}

__attribute__((target("avx512f"))) float MaxAbsAvx512(const float* x, int64_t n) {
  __m512 m0 = _mm512_setzero_ps(), m1 = _mm512_setzero_ps();
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    m0 = _mm512_maskz_max_ps(0xffff, m0, Abs(_mm512_loadu_ps(x + i)));
    m1 = _mm512_maskz_max_ps(0xffff, m1, Abs(_mm512_loadu_ps(x + i + 16)));
  }
  for (; i + 16 <= n; i += 16) m0 = _mm512_maskz_max_ps(0xffff, m0, Abs(_mm512_loadu_ps(x + i)));
  alignas(64) float lanes[16];
  _mm512_store_ps(lanes, _mm512_maskz_max_ps(0xffff, m0, m1));
  return std::max(MaxAbsPortable(lanes, 16), MaxAbsPortable(x + i, n - i));
}

// 16 values per step: one rounding conversion (nearest even, as FloatToHalf).
__attribute__((target("avx512f"))) void ConvertAvx512(const float* x, int64_t n, float s, uint16_t* out) {
  const __m512 scale = _mm512_set1_ps(s);
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m256i h = _mm512_maskz_cvtps_ph(0xffff, _mm512_mul_ps(_mm512_loadu_ps(x + i), scale),
                                            _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + i), h);
  }
  ConvertPortable(x + i, n - i, s, out + i);
}

// The same with 8 values per step (AVX2 for the maximum, F16C for the conversion).
__attribute__((target("avx2"))) float MaxAbsAvx2(const float* x, int64_t n) {
  const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
  __m256 m0 = _mm256_setzero_ps(), m1 = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    m0 = _mm256_max_ps(m0, _mm256_and_ps(_mm256_loadu_ps(x + i), abs_mask));
    m1 = _mm256_max_ps(m1, _mm256_and_ps(_mm256_loadu_ps(x + i + 8), abs_mask));
  }
  for (; i + 8 <= n; i += 8) m0 = _mm256_max_ps(m0, _mm256_and_ps(_mm256_loadu_ps(x + i), abs_mask));
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, _mm256_max_ps(m0, m1));
  return std::max(MaxAbsPortable(lanes, 8), MaxAbsPortable(x + i, n - i));
}

__attribute__((target("avx2,f16c"))) void ConvertAvx2F16c(const float* x, int64_t n, float s, uint16_t* out) {
  const __m256 scale = _mm256_set1_ps(s);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m128i h = _mm256_cvtps_ph(_mm256_mul_ps(_mm256_loadu_ps(x + i), scale),
                                      _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out + i), h);
  }
  ConvertPortable(x + i, n - i, s, out + i);
}
#elif defined(__aarch64__)
// 8 values per step; the conversion rounds as FPCR says, to nearest even by default (as
// FloatToHalf), with fp16 subnormals kept (FZ16 off).
float MaxAbsNeon(const float* x, int64_t n) {
  float32x4_t m0 = vdupq_n_f32(0.0f), m1 = vdupq_n_f32(0.0f);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    m0 = vmaxq_f32(m0, vabsq_f32(vld1q_f32(x + i)));
    m1 = vmaxq_f32(m1, vabsq_f32(vld1q_f32(x + i + 4)));
  }
  return std::max(vmaxvq_f32(vmaxq_f32(m0, m1)), MaxAbsPortable(x + i, n - i));
}

void ConvertNeon(const float* x, int64_t n, float s, uint16_t* out) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const float16x4_t lo = vcvt_f16_f32(vmulq_n_f32(vld1q_f32(x + i), s));
    const float16x4_t hi = vcvt_f16_f32(vmulq_n_f32(vld1q_f32(x + i + 4), s));
    vst1q_u16(out + i, vreinterpretq_u16_f16(vcombine_f16(lo, hi)));
  }
  ConvertPortable(x + i, n - i, s, out + i);
}
#endif

}  // namespace

size_t HalfRowsBytes(int64_t rows, int64_t hidden) { return ValuesBytes(rows, hidden) + rows * sizeof(float); }

HalfRows HalfRowsIn(void* buffer, int64_t rows, int64_t hidden) {
  char* base = static_cast<char*>(buffer);
  return {reinterpret_cast<uint16_t*>(base), reinterpret_cast<float*>(base + ValuesBytes(rows, hidden))};
}

HalfRowsPath BestHalfRowsPath() {
  static const HalfRowsPath best = HalfRowsPathRuns(HalfRowsPath::kAvx512)     ? HalfRowsPath::kAvx512
                                   : HalfRowsPathRuns(HalfRowsPath::kAvx2F16c) ? HalfRowsPath::kAvx2F16c
                                   : HalfRowsPathRuns(HalfRowsPath::kNeon)     ? HalfRowsPath::kNeon
                                                                                : HalfRowsPath::kPortable;
  return best;
}

bool HalfRowsPathRuns(HalfRowsPath path) {
  switch (path) {
    case HalfRowsPath::kPortable:
      return true;
#if defined(__x86_64__)
    case HalfRowsPath::kAvx2F16c:
      return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("f16c");
    case HalfRowsPath::kAvx512:
      return __builtin_cpu_supports("avx512f");
#elif defined(__aarch64__)
    case HalfRowsPath::kNeon:
      return true;  // (Advanced SIMD with fp16 conversions is part of every AArch64 core)
#endif
    default:
      return false;
  }
}

float ScaleRowToHalfOn(HalfRowsPath path, const float* row, int64_t n, uint16_t* out) {
  // The path's two passes: the row's largest |x|, then the scaled conversion.
  float (*max_abs)(const float*, int64_t) = MaxAbsPortable;
  void (*convert)(const float*, int64_t, float, uint16_t*) = ConvertPortable;
  switch (path) {
#if defined(__x86_64__)
    case HalfRowsPath::kAvx512:
      max_abs = MaxAbsAvx512, convert = ConvertAvx512;
      break;
    case HalfRowsPath::kAvx2F16c:
      max_abs = MaxAbsAvx2, convert = ConvertAvx2F16c;
      break;
#elif defined(__aarch64__)
    case HalfRowsPath::kNeon:
      max_abs = MaxAbsNeon, convert = ConvertNeon;
      break;
#endif
    default:
      break;
  }
  const int e = ScaleExponent(max_abs(row, n));
  convert(row, n, std::ldexp(1.0f, 14 - e), out);
  return std::ldexp(1.0f, e - 14);
}

float ScaleRowToHalf(const float* row, int64_t n, uint16_t* out) {
  return ScaleRowToHalfOn(BestHalfRowsPath(), row, n, out);
}

void ScaleRowsToHalf(const float* src, int64_t rows, int64_t hidden, HalfRows dst, int64_t first) {
  for (int64_t r = 0; r < rows; ++r) {
    dst.inv_scales[first + r] = ScaleRowToHalf(src + r * hidden, hidden, dst.values + (first + r) * hidden);
  }
}

}  // namespace lmhead
