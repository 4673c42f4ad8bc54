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

void CopyPool::CopyPart(size_t part) const {
  const size_t begin = std::min(bytes_, part * per_), end = std::min(bytes_, begin + per_);
  StreamingCopy(dst_ + begin, src_ + begin, end - begin);
}

void CopyPool::Copy(void* dst, const void* src, size_t bytes) {
  const size_t parts = std::clamp<size_t>(bytes / kMinBytesPerThread, 1, helpers_.size() + 1);
  if (parts == 1) {
    StreamingCopy(static_cast<char*>(dst), static_cast<const char*>(src), bytes);
    return;
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    dst_ = static_cast<char*>(dst);
    src_ = static_cast<const char*>(src);
    bytes_ = bytes;
    parts_ = parts;
    // Part boundaries on 64-byte lines, so that no two threads write one cache line.
    per_ = ((bytes + parts - 1) / parts + 63) / 64 * 64;
    pending_ = parts - 1;
    ++generation_;
  }
  start_.notify_all();
  CopyPart(0);
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
    if (index >= parts_) continue;  // this copy needs fewer threads
    lock.unlock();
    CopyPart(index);  // the job's fields stay fixed until every part is done
    lock.lock();
    if (--pending_ == 0) done_.notify_one();
  }
}

}  // namespace lmhead::cuda
