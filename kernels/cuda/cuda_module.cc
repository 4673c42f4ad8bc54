// The exported C entry points of liblmhead_cuda.so (see cuda_module_api.h).
#include <cuda_runtime.h>

#include <algorithm>
#include <cstring>

#include "kernels/cuda/cuda_backend.h"
#include "kernels/cuda/cuda_module_api.h"

extern "C" {

__attribute__((visibility("default"))) int lmhead_cuda_device_count() {
  int count = 0;
  return cudaGetDeviceCount(&count) == cudaSuccess ? count : 0;
}

__attribute__((visibility("default"))) int lmhead_cuda_create_backend(const lmhead::CudaModuleArgs* args,
                                                                      lmhead::Backend** backend, char* error,
                                                                      size_t error_len) {
  auto fail = [&](int code, const std::string& message) {
    if (error_len > 0) {
      const size_t n = std::min(error_len - 1, message.size());
      std::memcpy(error, message.data(), n);
      error[n] = '\0';
    }
    return code;
  };
  if (args == nullptr || args->abi != lmhead::kCudaModuleAbi) {
    return fail(static_cast<int>(absl::StatusCode::kFailedPrecondition),
                "liblmhead_cuda.so was built for another version of lmhead; rebuild it");
  }
  auto made = lmhead::cuda::NewCudaBackend(*args);
  if (!made.ok()) return fail(static_cast<int>(made.status().code()), std::string(made.status().message()));
  *backend = made->release();
  return 0;
}

}  // extern "C"
