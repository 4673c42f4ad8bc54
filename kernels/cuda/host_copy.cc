#include "kernels/cuda/host_copy.h"

#include <algorithm>
#include <cstdint>
#include <cstring>

#if defined(__x86_64__)
#include <emmintrin.h>
#endif

namespace lmhead::cuda {
namespace {

// memcpy whose stores bypass the caches where the CPU has them (x86-64: SSE2 streaming stores,
// 64 bytes per step once dst is 16-byte aligned). The staged rows are read next by the GPU's DMA,
// not by this CPU: left dirty in the caches, every line of them would have to be snooped.
void StreamingCopy(char* dst, const char* src, size_t bytes) {
#if defined(__x86_64__)
  const size_t head = std::min(bytes, (16 - reinterpret_cast<uintptr_t>(dst) % 16) % 16);
  std::memcpy(dst, src, head);
  dst += head, src += head, bytes -= head;
  for (; bytes >= 64; dst += 64, src += 64, bytes -= 64) {
    const __m128i a = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src));
    const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + 16));
    const __m128i c = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + 32));
    const __m128i d = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + 48));
    _mm_stream_si128(reinterpret_cast<__m128i*>(dst), a);
    _mm_stream_si128(reinterpret_cast<__m128i*>(dst + 16), b);
    _mm_stream_si128(reinterpret_cast<__m128i*>(dst + 32), c);
    _mm_stream_si128(reinterpret_cast<__m128i*>(dst + 48), d);
  }
  std::memcpy(dst, src, bytes);
  _mm_sfence();  // the streaming stores are visible before the copy is reported done
#else
  std::memcpy(dst, src, bytes);
#endif
}

}  // namespace

CopyPool::CopyPool(int threads) {
  for (int i = 1; i < threads; ++i) helpers_.emplace_back([this, i] { Work(static_cast<size_t>(i)); });
}

CopyPool::~CopyPool() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  start_.notify_all();
  for (std::thread& t : helpers_) t.join();
}

size_t CopyPool::PartsFor(size_t bytes) const {
  if (bytes < kMinBytesForHelpers) return 1;
  return std::clamp<size_t>(bytes / kMinBytesPerThread, 1, helpers_.size() + 1);
}

void CopyPool::Copy(void* dst, const void* src, size_t bytes) {
  const size_t parts = PartsFor(bytes);
  // Part boundaries on 64-byte lines, so that no two threads write one cache line.
  const size_t per = ((bytes + parts - 1) / parts + 63) / 64 * 64;
  Run(parts, [&](size_t part) {
    const size_t begin = std::min(bytes, part * per), end = std::min(bytes, begin + per);
    StreamingCopy(static_cast<char*>(dst) + begin, static_cast<const char*>(src) + begin, end - begin);
  });
}

void CopyPool::ToHalfRows(const float* src, int64_t rows, int64_t hidden, HalfRows dst) {
  const size_t parts = std::min<size_t>(PartsFor(rows * hidden * sizeof(float)), std::max<int64_t>(rows, 1));
  const int64_t per = (rows + static_cast<int64_t>(parts) - 1) / static_cast<int64_t>(parts);
  Run(parts, [&](size_t part) {
    const int64_t begin = std::min(rows, static_cast<int64_t>(part) * per), end = std::min(rows, begin + per);
    ScaleRowsToHalf(src + begin * hidden, end - begin, hidden, dst, begin);
  });
}

void CopyPool::Run(size_t parts, const std::function<void(size_t)>& part) {
  if (parts == 1) {
    part(0);
    return;
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    part_ = &part;
    parts_ = parts;
    pending_ = parts - 1;
    ++generation_;
  }
  start_.notify_all();
  part(0);
  std::unique_lock<std::mutex> lock(mu_);
  done_.wait(lock, [this] { return pending_ == 0; });
}

void CopyPool::Work(size_t index) {
  uint64_t seen = 0;
  std::unique_lock<std::mutex> lock(mu_);
  for (;;) {
    start_.wait(lock, [&] { return stop_ || generation_ != seen; });
    if (stop_) return;
    seen = generation_;
    if (index >= parts_) continue;  // this job needs fewer threads
    const std::function<void(size_t)>& part = *part_;  // the job stays fixed until every part is done
    lock.unlock();
    part(index);
    lock.lock();
    if (--pending_ == 0) done_.notify_one();
  }
}

}  // namespace lmhead::cuda
