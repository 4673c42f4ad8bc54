// The one C entry point of the dlopen'ed CUDA module (liblmhead_cuda.so), shared by the module
// and kernels/backend_factory.cc. Both sides are built from this tree with the same compiler,
// so C++ types may cross; kCudaModuleAbi guards against a stale module.
#ifndef LMHEAD_KERNELS_CUDA_CUDA_MODULE_API_H_
#define LMHEAD_KERNELS_CUDA_CUDA_MODULE_API_H_

#include <cstddef>
#include <cstdint>

#include "kernels/backend.h"
#include "kernels/head_source.h"
#include "kernels/tensor.h"

namespace lmhead {

inline constexpr int kCudaModuleAbi = 7;
// Batches of up to this many rows run the module's FP8 GEMV instead of cuBLASLt (on Hopper; 16 on
// other GPUs): with fp16 hi + lo activations up to kCudaGemvExactRows rows (~fp32 exact), one fp16
// per activation above (after a per-row power-of-two scale that puts max |x| in [2^13, 2^14)).
inline constexpr int64_t kCudaGemvMaxRows = 64;
inline constexpr int64_t kCudaGemvExactRows = 8;
inline constexpr char kCudaModuleFile[] = "liblmhead_cuda.so";
inline constexpr char kCreateCudaBackendSymbol[] = "lmhead_cuda_create_backend";
inline constexpr char kCudaDeviceCountSymbol[] = "lmhead_cuda_device_count";

struct CudaModuleArgs {
  int abi = kCudaModuleAbi;
  int device = 0;
  LogitTransform transform;
  // Batches above gemv_max_rows: true: activations as one E4M3 row each (per-token scale);
  // false: bf16-level accuracy (one fp16 each in the module's FP8 GEMM, or on cuBLASLt an E4M3
  // "high" row plus an E4M3 residual row, the same weight bytes read once).
  bool fp8_activations = false;
  // On Hopper: batches above kCudaGemvMaxRows rows run the module's FP8 GEMMs (FP8 x fp16, or FP8
  // x FP8 with fp8_activations; the epilogue's first pass fused) instead of cuBLASLt; false =
  // cuBLASLt (the benchmark compares).
  bool fp8_gemm = true;
  // FP8 heads: slices of up to this many rows (<= kCudaGemvMaxRows) use the GEMV; 0 = never
  // (cuBLASLt for every batch; the benchmark compares the two).
  int64_t gemv_max_rows = kCudaGemvMaxRows;
  // Hopper: the GEMV at 1-32 rows in 1 or 2 blocks per SM; 0 = whichever is faster on this head,
  // for 1-16 and 17-32 rows each, timed at startup (66 argmax calls of 8 rows, 66 of 24).
  int gemv_blocks_per_sm = 0;
  // Device bytes for the GEMM output of one slice of rows (bounds the rows computed at once).
  int64_t output_workspace_bytes = 192ll << 20;
  // Host threads that may copy a large batch's rows into pinned staging memory (at most 8 used).
  int host_threads = 1;
  // Record per-stage GPU times (see Backend::TakeStageTimings); costs a little per call.
  bool profile_stages = false;
  // The head to serve, quantized on the GPU in row chunks of quantize.chunk_rows (an FP8 source
  // goes up as it is). Only read during the call.
  const HeadSource* source = nullptr;
  QuantizeOptions quantize;
};

// Returns 0 and *backend (caller owns) on success; otherwise an absl::StatusCode value and a
// message in error[error_len].
using CreateCudaBackendFn = int (*)(const CudaModuleArgs* args, Backend** backend, char* error,
                                    size_t error_len);
// Number of CUDA devices visible (0 when none or no driver).
using CudaDeviceCountFn = int (*)();

}  // namespace lmhead

#endif  // LMHEAD_KERNELS_CUDA_CUDA_MODULE_API_H_
