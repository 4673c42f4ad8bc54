// The one place that chooses a backend implementation.
#ifndef LMHEAD_KERNELS_BACKEND_FACTORY_H_
#define LMHEAD_KERNELS_BACKEND_FACTORY_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "kernels/backend.h"
#include "kernels/head_source.h"

namespace lmhead {

enum class BackendKind { kAuto, kCpu, kCuda };
// How the CUDA backend feeds activations to its FP8 GEMM.
//   kBf16: each row as an E4M3 "high" row plus an E4M3 residual row (about bf16 accuracy;
//          the weights are still read once).
//   kFp8:  each row as one E4M3 row with a per-row scale (faster at large batches, less exact).
enum class ActivationPrecision { kBf16, kFp8 };

bool ParseBackendKind(absl::string_view text, BackendKind* out);  // "auto" | "cpu" | "cuda"
bool ParseActivationPrecision(absl::string_view text, ActivationPrecision* out);  // "bf16" | "fp8"

struct BackendOptions {
  // kAuto: CUDA when its module and a device are present, else CPU.
  BackendKind kind = BackendKind::kAuto;
  // Threads of the CPU backend; the CUDA backend stages large batches into pinned memory on up to
  // 8 of them.
  int cpu_threads = 1;
  // CUDA device ordinal.
  int device = 0;
  ActivationPrecision activation_precision = ActivationPrecision::kBf16;
  // Device bytes for one slice of GEMM output (bounds the rows the CUDA backend computes at once).
  int64_t gpu_output_workspace_bytes = 192ll << 20;
  // CUDA on Hopper: batches above the GEMV's rows run lmhead's FP8 GEMMs, FP8 x fp16 for bf16
  // activations and FP8 x FP8 for fp8 (false: cuBLASLt, as on other GPUs).
  bool gpu_fp8_gemm = true;
  // CUDA on Hopper: the GEMV at 1-32 rows in 1 or 2 blocks per SM; 0 = whichever is faster on the
  // head (for 1-16 and 17-32 rows each), timed when the backend starts.
  int gpu_gemv_blocks_per_sm = 0;
  // Path of liblmhead_cuda.so; "" searches next to the executable, then the library path.
  std::string cuda_module_path;
  LogitTransform transform;
};

// Builds a backend serving `source`, quantized per `quantize` (by the CUDA backend on the GPU, or
// on the host for the CPU backend); `source` is only read during the call. kCuda fails with
// UNAVAILABLE when the module or a device is missing; kAuto then falls back to the CPU backend.
absl::StatusOr<std::unique_ptr<Backend>> NewBackend(const BackendOptions& options, const HeadSource& source,
                                                    const QuantizeOptions& quantize);

// Builds a backend serving already-quantized `weights` as they are.
absl::StatusOr<std::unique_ptr<Backend>> NewBackend(const BackendOptions& options, HeadWeights weights);

}  // namespace lmhead

#endif  // LMHEAD_KERNELS_BACKEND_FACTORY_H_
