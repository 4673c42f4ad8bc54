#include "kernels/cuda/weight_quant.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>

#include <cub/block/block_reduce.cuh>

namespace lmhead::cuda {
namespace {

constexpr int kThreads = 256;

__device__ __forceinline__ float Load(const uint8_t* row, SourceDType t, int64_t i) {
  switch (t) {
    case SourceDType::kF32: return reinterpret_cast<const float*>(row)[i];
    case SourceDType::kBF16: return __bfloat162float(reinterpret_cast<const __nv_bfloat16*>(row)[i]);
    case SourceDType::kF16: return __half2float(reinterpret_cast<const __half*>(row)[i]);
    case SourceDType::kF8E4M3: return static_cast<float>(reinterpret_cast<const __nv_fp8_e4m3*>(row)[i]);
  }
  return 0.0f;
}

__device__ __forceinline__ size_t Size(SourceDType t) {
  return t == SourceDType::kF32 ? 4 : t == SourceDType::kF8E4M3 ? 1 : 2;
}

// Row amax with a block reduction; flags non-finite values.
__device__ float RowAmax(const uint8_t* row, SourceDType t, int64_t cols, unsigned long long* bad_row,
                         unsigned long long row_id) {
  using Reduce = cub::BlockReduce<float, kThreads>;
  __shared__ typename Reduce::TempStorage temp;
  __shared__ float result;
  float amax = 0.0f;
  bool bad = false;
  for (int64_t i = threadIdx.x; i < cols; i += kThreads) {
    const float v = Load(row, t, i);
    bad |= !isfinite(v);
    amax = fmaxf(amax, fabsf(v));
  }
  if (bad) atomicMin(bad_row, row_id);
  const float m = Reduce(temp).Reduce(amax, [](float a, float b) { return fmaxf(a, b); });
  if (threadIdx.x == 0) result = m;
  __syncthreads();
  return result;
}

__global__ void QuantizeWeightRowsKernel(WeightRowsParams p) {
  const int64_t r = blockIdx.x;
  const uint8_t* row = p.src + r * p.cols * Size(p.src_dtype);
  const unsigned long long row_id = static_cast<unsigned long long>(p.row_offset + r);
  if (p.kind == RowOutputKind::kBf16) {
    const float m = p.src_scales != nullptr ? p.src_scales[r] : 1.0f;
    __nv_bfloat16* out = reinterpret_cast<__nv_bfloat16*>(p.out) + r * p.ld;
    for (int64_t i = threadIdx.x; i < p.ld; i += kThreads) {
      const float v = i < p.cols ? Load(row, p.src_dtype, i) : 0.0f;
      if (!isfinite(v)) atomicMin(p.bad_row, row_id);
      out[i] = __float2bfloat16_rn(v * m);
    }
    return;
  }
  float scale = p.fixed_scale;
  if (p.kind == RowOutputKind::kFp8PerRow) {
    const float amax = RowAmax(row, p.src_dtype, p.cols, p.bad_row, row_id);
    scale = amax > 0.0f ? amax / 448.0f : 1.0f;
  }
  __nv_fp8_e4m3* out = reinterpret_cast<__nv_fp8_e4m3*>(p.out) + r * p.ld;
  for (int64_t i = threadIdx.x; i < p.ld; i += kThreads) {
    const float v = i < p.cols ? Load(row, p.src_dtype, i) : 0.0f;
    if (!isfinite(v)) atomicMin(p.bad_row, row_id);
    out[i] = __nv_fp8_e4m3(v / scale);  // round to nearest even, saturating to +-448
  }
  if (threadIdx.x == 0) p.scales[r] = scale;
}

__global__ void RowAmaxKernel(const uint8_t* src, SourceDType t, int64_t cols, float* amax,
                              unsigned long long* bad_row, int64_t row_offset) {
  const int64_t r = blockIdx.x;
  const float m = RowAmax(src + r * cols * Size(t), t, cols, bad_row, static_cast<unsigned long long>(row_offset + r));
  if (threadIdx.x == 0) amax[r] = m;
}

}  // namespace

cudaError_t LaunchQuantizeWeightRows(const WeightRowsParams& p, cudaStream_t stream) {
  if (p.rows <= 0) return cudaSuccess;
  QuantizeWeightRowsKernel<<<static_cast<unsigned>(p.rows), kThreads, 0, stream>>>(p);
  return cudaGetLastError();
}

cudaError_t LaunchRowAmax(const uint8_t* src, SourceDType dtype, int64_t rows, int64_t cols, float* amax,
                          unsigned long long* bad_row, int64_t row_offset, cudaStream_t stream) {
  if (rows <= 0) return cudaSuccess;
  RowAmaxKernel<<<static_cast<unsigned>(rows), kThreads, 0, stream>>>(src, dtype, cols, amax, bad_row, row_offset);
  return cudaGetLastError();
}

}  // namespace lmhead::cuda
