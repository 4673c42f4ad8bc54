// Host memcpy split over a pool of threads, with streaming (cache-bypassing) stores (and the
// fp32 -> scaled fp16 row conversion, ScaleRowToHalf's plain stores, over the same threads): staging a
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
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

#include "kernels/half_rows.h"

namespace lmhead::cuda {

class CopyPool {
 public:
  // Jobs below kMinBytesForHelpers run on the caller's thread alone; larger ones in parts of at
  // least kMinBytesPerThread. The first slice of a large batch (128 rows of 5120 fp32, 2.6 MB) is
  // staged while the GPU waits: on an H100 machine's host it took 240 us in parts of >= 1 MiB (two
  // threads) and 127 us in parts of >= 256 KiB (eight), the threads asleep before; 64 rows (1.3 MB)
  // 167 -> 112 us. Below 1 MiB a sleeping helper's wake-up costs about what it saves: whole argmax
  // calls from the caller's memory, two runs each of parts >= 256 KiB and of this threshold on one
  // machine, 152064x8192 at 16 rows (0.52 MB) 0.482 / 0.488 -> 0.465 / 0.463 ms, 131072x5120 at
  // 40-48 rows (0.82-0.98 MB) 0.302-0.324 -> 0.298-0.311 ms.
  static constexpr size_t kMinBytesForHelpers = size_t{1} << 20;
  static constexpr size_t kMinBytesPerThread = size_t{256} << 10;

  // threads: how many threads may copy at once, the caller's among them (<= 1: no helpers).
  explicit CopyPool(int threads);
  ~CopyPool();
  CopyPool(const CopyPool&) = delete;
  CopyPool& operator=(const CopyPool&) = delete;

  // Copies `bytes` from src to dst (not overlapping); returns when the copy is done. One caller
  // at a time (the backend's compute thread), for this and ToHalfRows.
  void Copy(void* dst, const void* src, size_t bytes);

  // Converts `rows` fp32 rows of `hidden` values at src into dst with ScaleRowToHalf (row r's
  // values at dst.values + r * hidden, its 1 / s at dst.inv_scales[r]), whole rows per thread;
  // returns when every row is done.
  void ToHalfRows(const float* src, int64_t rows, int64_t hidden, HalfRows dst);

 private:
  // Runs part(0) .. part(parts - 1), part 0 on the caller's thread and the others on as many
  // helpers (parts <= helpers + 1); returns when all are done.
  void Run(size_t parts, const std::function<void(size_t)>& part);
  // How many parts a job over `bytes` of source takes (see kMinBytesForHelpers).
  size_t PartsFor(size_t bytes) const;
  void Work(size_t index);

  std::mutex mu_;
  std::condition_variable start_, done_;
  uint64_t generation_ = 0;  // one per job that uses helpers
  size_t pending_ = 0;       // helper parts of the current job not yet done
  bool stop_ = false;
  // The current job: parts_ parts (part 0 is the caller's).
  const std::function<void(size_t)>* part_ = nullptr;
  size_t parts_ = 0;
  std::vector<std::thread> helpers_;
};

}  // namespace lmhead::cuda

#endif  // LMHEAD_KERNELS_CUDA_HOST_COPY_H_
