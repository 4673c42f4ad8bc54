// A fixed set of worker threads that run one ParallelFor at a time.
#ifndef LMHEAD_KERNELS_CPU_THREAD_POOL_H_
#define LMHEAD_KERNELS_CPU_THREAD_POOL_H_

#include <condition_variable>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace lmhead {

class ThreadPool {
 public:
  // threads >= 1; the calling thread of ParallelFor counts as one of them.
  explicit ThreadPool(int threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int threads() const { return static_cast<int>(workers_.size()) + 1; }

  // Runs fn(i) for every i in [0, n) across the threads and returns when all are done.
  // Calls must not overlap (one caller at a time); fn must not call ParallelFor.
  void ParallelFor(int n, const std::function<void(int)>& fn);

 private:
  void WorkerLoop();
  void RunShards();

  std::vector<std::thread> workers_;
  std::mutex mu_;
  std::condition_variable work_cv_;
  std::condition_variable done_cv_;
  const std::function<void(int)>* fn_ = nullptr;  // guarded by mu_
  int n_ = 0;                                      // guarded by mu_
  int next_ = 0;                                   // guarded by mu_
  int active_ = 0;                                 // workers inside RunShards; guarded by mu_
  uint64_t generation_ = 0;                        // guarded by mu_
  bool stop_ = false;                              // guarded by mu_
};

}  // namespace lmhead

#endif  // LMHEAD_KERNELS_CPU_THREAD_POOL_H_
