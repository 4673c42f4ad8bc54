#include "kernels/backend_factory.h"

#include <utility>

#include "kernels/cpu/cpu_backend.h"

namespace lmhead {

bool ParseBackendKind(absl::string_view text, BackendKind* out) {
  if (text == "auto") { *out = BackendKind::kAuto; return true; }
  if (text == "cpu") { *out = BackendKind::kCpu; return true; }
  if (text == "cuda") { *out = BackendKind::kCuda; return true; }
  return false;
}

absl::StatusOr<std::unique_ptr<Backend>> NewBackend(const BackendOptions& options,
                                                    HeadWeights weights) {
  if (options.kind == BackendKind::kCuda) {
    return absl::UnavailableError(
        "the CUDA backend is not available in this build; use --backend=cpu");
  }
  return NewCpuBackend(std::move(weights), options.transform, options.cpu_threads);
}

}  // namespace lmhead
