#include "kernels/cuda/host_copy.h"

#include <algorithm>
#include <cstring>

namespace lmhead::cuda {

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
  std::memcpy(dst_ + begin, src_ + begin, end - begin);
}

void CopyPool::Copy(void* dst, const void* src, size_t bytes) {
  const size_t parts = std::clamp<size_t>(bytes / kMinBytesPerThread, 1, helpers_.size() + 1);
  if (parts == 1) {
    std::memcpy(dst, src, bytes);
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
