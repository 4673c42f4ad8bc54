// CUDA error -> absl::Status helpers and RAII owners for device memory, pinned host memory,
// streams and events. Every CUDA call in the module goes through CUDA_RETURN_IF_ERROR.
#ifndef LMHEAD_KERNELS_CUDA_CUDA_UTIL_H_
#define LMHEAD_KERNELS_CUDA_CUDA_UTIL_H_

#include <cuda_runtime.h>

#include <cstddef>
#include <string>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace lmhead::cuda {

inline absl::Status CudaStatus(cudaError_t e, const char* what) {
  if (e == cudaSuccess) return absl::OkStatus();
  return absl::InternalError(absl::StrCat(what, ": ", cudaGetErrorName(e), " (", cudaGetErrorString(e), ")"));
}

#define CUDA_RETURN_IF_ERROR(expr)                                               \
  do {                                                                           \
    if (absl::Status lmhead_cuda_status = ::lmhead::cuda::CudaStatus((expr), #expr); \
        !lmhead_cuda_status.ok())                                                \
      return lmhead_cuda_status;                                                 \
  } while (0)

// Owns `count` elements of T in device memory (cudaMalloc); move-only.
template <typename T>
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  ~DeviceBuffer() { Reset(); }
  DeviceBuffer(DeviceBuffer&& o) noexcept : ptr_(std::exchange(o.ptr_, nullptr)), count_(std::exchange(o.count_, 0)) {}
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept {
    Reset();
    ptr_ = std::exchange(o.ptr_, nullptr);
    count_ = std::exchange(o.count_, 0);
    return *this;
  }
  absl::Status Allocate(size_t count) {
    Reset();
    if (count == 0) return absl::OkStatus();
    CUDA_RETURN_IF_ERROR(cudaMalloc(reinterpret_cast<void**>(&ptr_), count * sizeof(T)));
    count_ = count;
    return absl::OkStatus();
  }
  void Reset() {
    if (ptr_ != nullptr) cudaFree(ptr_);
    ptr_ = nullptr;
    count_ = 0;
  }
  T* get() const { return ptr_; }
  size_t count() const { return count_; }
  size_t bytes() const { return count_ * sizeof(T); }

 private:
  T* ptr_ = nullptr;
  size_t count_ = 0;
};

// Owns `count` elements of page-locked host memory (cudaMallocHost); move-only.
template <typename T>
class PinnedBuffer {
 public:
  PinnedBuffer() = default;
  ~PinnedBuffer() { Reset(); }
  PinnedBuffer(const PinnedBuffer&) = delete;
  PinnedBuffer& operator=(const PinnedBuffer&) = delete;
  absl::Status Allocate(size_t count) {
    Reset();
    if (count == 0) return absl::OkStatus();
    CUDA_RETURN_IF_ERROR(cudaMallocHost(reinterpret_cast<void**>(&ptr_), count * sizeof(T)));
    count_ = count;
    return absl::OkStatus();
  }
  void Reset() {
    if (ptr_ != nullptr) cudaFreeHost(ptr_);
    ptr_ = nullptr;
    count_ = 0;
  }
  T* get() const { return ptr_; }
  size_t count() const { return count_; }
  size_t bytes() const { return count_ * sizeof(T); }

 private:
  T* ptr_ = nullptr;
  size_t count_ = 0;
};

// Owns one CUDA handle (a stream or an event), destroyed with Destroy; not copyable. Create makes
// it.
template <typename Handle, cudaError_t (*Destroy)(Handle)>
class CudaHandle {
 public:
  CudaHandle() = default;
  ~CudaHandle() {
    if (h_ != nullptr) Destroy(h_);
  }
  CudaHandle(const CudaHandle&) = delete;
  CudaHandle& operator=(const CudaHandle&) = delete;
  Handle get() const { return h_; }

 protected:
  Handle h_ = nullptr;
};

// A non-blocking stream.
class Stream : public CudaHandle<cudaStream_t, cudaStreamDestroy> {
 public:
  absl::Status Create() {
    CUDA_RETURN_IF_ERROR(cudaStreamCreateWithFlags(&h_, cudaStreamNonBlocking));
    return absl::OkStatus();
  }
};

// An event for ordering and waiting (no timing).
class Event : public CudaHandle<cudaEvent_t, cudaEventDestroy> {
 public:
  absl::Status Create() {
    CUDA_RETURN_IF_ERROR(cudaEventCreateWithFlags(&h_, cudaEventDisableTiming));
    return absl::OkStatus();
  }
};

}  // namespace lmhead::cuda

#endif  // LMHEAD_KERNELS_CUDA_CUDA_UTIL_H_
