// The one place that chooses a backend implementation.
#ifndef LMHEAD_KERNELS_BACKEND_FACTORY_H_
#define LMHEAD_KERNELS_BACKEND_FACTORY_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "kernels/backend.h"

namespace lmhead {

enum class BackendKind { kAuto, kCpu, kCuda };

bool ParseBackendKind(absl::string_view text, BackendKind* out);  // "auto" | "cpu" | "cuda"

struct BackendOptions {
  // kAuto: CUDA when its module and a device are present, else CPU.
  BackendKind kind = BackendKind::kAuto;
  // Threads of the CPU backend.
  int cpu_threads = 1;
  // CUDA device ordinal.
  int device = 0;
  LogitTransform transform;
};

// Builds a backend that owns `weights`.
absl::StatusOr<std::unique_ptr<Backend>> NewBackend(const BackendOptions& options,
                                                    HeadWeights weights);

}  // namespace lmhead

#endif  // LMHEAD_KERNELS_BACKEND_FACTORY_H_
