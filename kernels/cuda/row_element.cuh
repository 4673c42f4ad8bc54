// Reading one element of a hidden-state row that arrived as fp32 or as bf16 bits (each bf16 value
// is exact in fp32, so kernels templated on the row type give identical results for both), or as
// fp16 the host already scaled (kernels/half_rows.h; exact in fp32 too).
// CUDA sources only.
#ifndef LMHEAD_KERNELS_CUDA_ROW_ELEMENT_CUH_
#define LMHEAD_KERNELS_CUDA_ROW_ELEMENT_CUH_

#include <cuda_fp16.h>

#include <cstdint>

namespace lmhead::cuda {

__device__ __forceinline__ float LoadElement(const float* p) { return *p; }
__device__ __forceinline__ float LoadElement(const uint16_t* p) { return __uint_as_float(uint32_t{*p} << 16); }
__device__ __forceinline__ float LoadElement(const __half* p) { return __half2float(*p); }

}  // namespace lmhead::cuda

#endif  // LMHEAD_KERNELS_CUDA_ROW_ELEMENT_CUH_
