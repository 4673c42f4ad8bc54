// Launching a kernel so that it may start while the previous kernel on its stream is finishing
// (programmatic dependent launch, sm_90): its blocks are scheduled early and must wait (the
// `griddepcontrol.wait` instruction) before reading what that kernel wrote. This hides the
// launch gap between the short kernels of a small batch. Works inside CUDA graph capture; on
// GPUs without the feature the attribute is ignored and the launch is an ordinary one.
#ifndef LMHEAD_KERNELS_CUDA_DEPENDENT_LAUNCH_H_
#define LMHEAD_KERNELS_CUDA_DEPENDENT_LAUNCH_H_

#include <cuda_runtime.h>

namespace lmhead::cuda {

#ifdef __CUDACC__
// In a kernel launched by LaunchAfterPrevious: blocks until the previous kernel's writes are
// visible. A no-op for ordinary launches.
__device__ __forceinline__ void WaitForPrerequisites() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}
// Lets the next kernel (if launched by LaunchAfterPrevious) be scheduled before this one ends.
__device__ __forceinline__ void LaunchDependents() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}
#endif

template <typename... KernelArgs, typename... Args>
cudaError_t LaunchAfterPrevious(void (*kernel)(KernelArgs...), dim3 grid, dim3 block, size_t smem,
                                cudaStream_t stream, Args&&... args) {
  cudaLaunchAttribute attribute;
  attribute.id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attribute.val.programmaticStreamSerializationAllowed = 1;
  cudaLaunchConfig_t config = {};
  config.gridDim = grid;
  config.blockDim = block;
  config.dynamicSmemBytes = smem;
  config.stream = stream;
  config.attrs = &attribute;
  config.numAttrs = 1;
  return cudaLaunchKernelEx(&config, kernel, static_cast<KernelArgs>(args)...);
}

}  // namespace lmhead::cuda

#endif  // LMHEAD_KERNELS_CUDA_DEPENDENT_LAUNCH_H_
