// CPU backend: threaded over vocab blocks; FP8 rows are decoded through a 256-entry table into
// a per-thread fp32 row buffer (never a dequantized copy of the head), dotted with every batch
// row, and reduced on the fly into argmax / logsumexp / top-k; full logits are written only for
// rows that ask for them. Also the numerical reference the GPU backend is checked against.
#ifndef LMHEAD_KERNELS_CPU_CPU_BACKEND_H_
#define LMHEAD_KERNELS_CPU_CPU_BACKEND_H_

#include <memory>

#include "absl/status/statusor.h"
#include "kernels/backend.h"

namespace lmhead {

// Takes ownership of `weights`. threads >= 1.
absl::StatusOr<std::unique_ptr<Backend>> NewCpuBackend(HeadWeights weights,
                                                       LogitTransform transform, int threads);

}  // namespace lmhead

#endif  // LMHEAD_KERNELS_CPU_CPU_BACKEND_H_
