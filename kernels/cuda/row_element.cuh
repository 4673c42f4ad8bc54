// Reading one element of a hidden-state row that arrived as fp32 or as bf16 bits (each bf16 value
// is exact in fp32, so kernels templated on the row type give identical results for both), or as
// fp16 the host already scaled (kernels/half_rows.h; exact in fp32 too); and a block's slice of a
// row held in registers.
// CUDA sources only.
#ifndef LMHEAD_KERNELS_CUDA_ROW_ELEMENT_CUH_
#define LMHEAD_KERNELS_CUDA_ROW_ELEMENT_CUH_

#include <cuda_fp16.h>

#include <cstdint>

namespace lmhead::cuda {

__device__ __forceinline__ float LoadElement(const float* p) { return *p; }
__device__ __forceinline__ float LoadElement(const uint16_t* p) { return __uint_as_float(uint32_t{*p} << 16); }
__device__ __forceinline__ float LoadElement(const __half* p) { return __half2float(*p); }

// A block's slice [begin, end) of one row, read by THREADS threads: thread t keeps elements begin +
// t + j * THREADS (j < PER) in registers, all requested up front (independent loads: about one
// round trip when the row is in pinned host memory); elements past those are read again where
// used (rows wider than the registers hold).
template <typename In, int THREADS, int PER>
struct RowSlice {
  const In* row;
  int64_t begin, end;
  float v[PER];

  // Loads the registers.
  __device__ __forceinline__ void Load() {
#pragma unroll
    for (int j = 0; j < PER; ++j) {
      const int64_t i = begin + threadIdx.x + j * int64_t{THREADS};
      v[j] = i < end ? LoadElement(row + i) : 0.0f;
    }
  }
  // Loads the registers; returns the largest |x| of this thread's elements.
  __device__ __forceinline__ float LoadAbsMax() {
    Load();
    float amax = 0.0f;
#pragma unroll
    for (int j = 0; j < PER; ++j) amax = fmaxf(amax, fabsf(v[j]));
    for (int64_t i = begin + threadIdx.x + PER * int64_t{THREADS}; i < end; i += THREADS) {
      amax = fmaxf(amax, fabsf(LoadElement(row + i)));
    }
    return amax;
  }
  // store(i, value) for each of this thread's elements (after LoadAbsMax).
  template <typename Store>
  __device__ __forceinline__ void ForEach(Store store) const {
#pragma unroll
    for (int j = 0; j < PER; ++j) {
      const int64_t i = begin + threadIdx.x + j * int64_t{THREADS};
      if (i < end) store(i, v[j]);
    }
    for (int64_t i = begin + threadIdx.x + PER * int64_t{THREADS}; i < end; i += THREADS) {
      store(i, LoadElement(row + i));
    }
  }
};

}  // namespace lmhead::cuda

#endif  // LMHEAD_KERNELS_CUDA_ROW_ELEMENT_CUH_
