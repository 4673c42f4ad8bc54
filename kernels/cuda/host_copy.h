// Host memcpy split over a pool of threads, with streaming (cache-bypassing) stores: staging a
// large batch's rows into pinned memory runs at one core's copy rate otherwise (13 GB/s measured
// on an H100 machine's host, 37 GB/s on 8 threads), below what the GPU consumes; and rows left
// dirty in the CPU caches slow the DMA that reads them next (streaming stores: 14.2-14.5 instead
// of 15.4-15.6 ms for an fp8-activation batch of 8192 x 5120, measured on an H100 machine). The
// threads persist: starting them per copy costs tens of microseconds against copies of a few
// hundred.
#ifndef LMHEAD_KERNELS_CUDA_HOST_COPY_H_
#define LMHEAD_KERNELS_CUDA_HOST_COPY_H_

#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <thread>
#include <vector>

namespace lmhead::cuda {

class CopyPool {
 public:
  // Each thread takes at least this much of a copy.
  static constexpr size_t kMinBytesPerThread = size_t{1} << 20;

  // threads: how many threads may copy at once, the caller's among them (<= 1: no helpers).
  explicit CopyPool(int threads);
  ~CopyPool();
  CopyPool(const CopyPool&) = delete;
  CopyPool& operator=(const CopyPool&) = delete;

  // Copies `bytes` from src to dst (not overlapping); returns when the copy is done. One caller
  // at a time (the backend's compute thread).
  void Copy(void* dst, const void* src, size_t bytes);

 private:
  void CopyPart(size_t part) const;
  void Work(size_t index);

  std::mutex mu_;
  std::condition_variable start_, done_;
  uint64_t generation_ = 0;  // one per Copy that uses helpers
  size_t pending_ = 0;       // helper parts of the current copy not yet done
  bool stop_ = false;
  // The current copy, split into parts_ parts of per_ bytes (part 0 is the caller's).
  char* dst_ = nullptr;
  const char* src_ = nullptr;
  size_t bytes_ = 0, per_ = 0, parts_ = 0;
  std::vector<std::thread> helpers_;
};

}  // namespace lmhead::cuda

#endif  // LMHEAD_KERNELS_CUDA_HOST_COPY_H_
