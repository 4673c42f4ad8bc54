// cuBLASLt GEMM of the head: D[n, vocab] (fp32) = X[n, hidden] · W[vocab, hidden]ᵀ, with W and X
// both FP8 E4M3 or both BF16 (TN layout: W is A with transa = T). Plans (layouts + the fastest of
// the heuristic's candidates, timed on first use) are built once per padded row count and cached.
// Not thread-safe: used by the backend's one compute thread.
#ifndef LMHEAD_KERNELS_CUDA_LT_GEMM_H_
#define LMHEAD_KERNELS_CUDA_LT_GEMM_H_

#include <cublasLt.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <map>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "kernels/cuda/cuda_util.h"

namespace lmhead::cuda {

class LtGemm {
 public:
  // type: CUDA_R_8F_E4M3 or CUDA_R_16BF.
  static absl::StatusOr<std::unique_ptr<LtGemm>> Create(cudaDataType type, int64_t vocab, int64_t hidden,
                                                         size_t workspace_bytes);
  ~LtGemm();

  // Rows are padded to what cuBLASLt FP8 accepts (a multiple of 16; of 128 above 128 rows, so
  // that the padded sizes, and so the plans, stay few).
  static int64_t PadRows(int64_t n);
  // Every padded row count PadRows gives for 1..max_rows rows, ascending.
  static std::vector<int64_t> PaddedSizes(int64_t max_rows);

  // d = x · wᵀ for n = PadRows(n) rows. w: [vocab, hidden]; x: [n, hidden]; d: [n, vocab].
  absl::Status Run(const void* w, const void* x, int64_t n, float* d, cudaStream_t stream);

  // Builds (and times) the plan for n rows now, so that a later Run can be graph-captured.
  absl::Status Prepare(const void* w, const void* x, int64_t n, float* d, cudaStream_t stream) {
    return GetPlan(w, x, n, d, stream).status();
  }

  size_t workspace_bytes() const { return workspace_.bytes(); }

 private:
  struct Plan {
    cublasLtMatrixLayout_t b = nullptr;
    cublasLtMatrixLayout_t d = nullptr;
    cublasLtMatmulAlgo_t algo;
  };
  LtGemm() = default;
  absl::StatusOr<Plan*> GetPlan(const void* w, const void* x, int64_t n, float* d, cudaStream_t stream);

  cudaDataType type_ = CUDA_R_8F_E4M3;
  int64_t vocab_ = 0;
  int64_t hidden_ = 0;
  cublasLtHandle_t handle_ = nullptr;
  cublasLtMatmulDesc_t desc_ = nullptr;
  cublasLtMatrixLayout_t a_ = nullptr;
  DeviceBuffer<uint8_t> workspace_;
  std::map<int64_t, Plan> plans_;
};

}  // namespace lmhead::cuda

#endif  // LMHEAD_KERNELS_CUDA_LT_GEMM_H_
