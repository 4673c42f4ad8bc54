// CPU backend: threaded over vocab blocks; FP8 rows are decoded in registers (AVX-512 or AVX2;
// elsewhere through a 256-entry table into a per-thread fp32 row buffer; never a dequantized copy
// of the head), dotted with every batch row in fp32, and reduced on the fly into argmax /
// logsumexp / top-k; full logits are written only for rows that ask for them. Also the numerical
// reference the GPU backend is checked against.
#ifndef LMHEAD_KERNELS_CPU_CPU_BACKEND_H_
#define LMHEAD_KERNELS_CPU_CPU_BACKEND_H_

#include <memory>

#include "absl/status/statusor.h"
#include "kernels/backend.h"

namespace lmhead {

// The dot-product kernel for FP8 heads. kBest picks the widest the CPU has; the others exist so
// that tests can check each on the same machine (kAvx512 / kAvx2 fail to create where absent).
// All give the same logits to fp32 rounding, but not the same bits: the order of the sums differs.
enum class CpuKernel { kBest, kAvx512, kAvx2, kPortable };

// "avx512", "avx2", "portable" ("best" for kBest), as Backend::Tuning names the kernel in use.
const char* CpuKernelName(CpuKernel kernel);

// Takes ownership of `weights`. threads >= 1.
absl::StatusOr<std::unique_ptr<Backend>> NewCpuBackend(HeadWeights weights, LogitTransform transform, int threads,
                                                       CpuKernel kernel = CpuKernel::kBest);

}  // namespace lmhead

#endif  // LMHEAD_KERNELS_CPU_CPU_BACKEND_H_
