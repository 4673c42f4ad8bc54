// The CUDA backend: FP8 (or BF16) head resident on the GPU, cuBLASLt GEMM into fp32, and a fused
// epilogue (per-row weight scales, activation scales, logit transform, argmax, logsumexp, top-k,
// token logits) so that only what a request asked for is copied back.
#ifndef LMHEAD_KERNELS_CUDA_CUDA_BACKEND_H_
#define LMHEAD_KERNELS_CUDA_CUDA_BACKEND_H_

#include <memory>

#include "absl/status/statusor.h"
#include "kernels/backend.h"
#include "kernels/cuda/cuda_module_api.h"

namespace lmhead::cuda {

absl::StatusOr<std::unique_ptr<Backend>> NewCudaBackend(const CudaModuleArgs& args);

}  // namespace lmhead::cuda

#endif  // LMHEAD_KERNELS_CUDA_CUDA_BACKEND_H_
