#include "service/batching/batcher.h"

#include <condition_variable>
#include <mutex>

#include "gtest/gtest.h"
#include "kernels/cpu/cpu_backend.h"
#include "kernels/head_quantizer.h"
#include "tests/test_util.h"

namespace lmhead {
namespace {

constexpr int64_t kVocab = 97;
constexpr int64_t kHidden = 24;

std::unique_ptr<Backend> RealBackend() {
  const std::vector<float> w = testing::RandomWeights(kVocab, kHidden, 5);
  HeadSource s;
  s.dtype = SourceDType::kF32;
  s.rows = kVocab;
  s.cols = kHidden;
  s.data = reinterpret_cast<const uint8_t*>(w.data());
  return *NewCpuBackend(*QuantizeHead(s, QuantizeOptions{}), {}, 2);
}

// The real CPU backend behind a gate: ComputeLogits waits until Open() (lets a test hold the
// worker busy) and records each batch's size.
class GatedBackend : public Backend {
 public:
  explicit GatedBackend(std::unique_ptr<Backend> inner) : inner_(std::move(inner)) {}
  const char* Name() const override { return inner_->Name(); }
  int64_t vocab() const override { return inner_->vocab(); }
  int64_t hidden() const override { return inner_->hidden(); }
  int64_t ResidentWeightBytes() const override { return inner_->ResidentWeightBytes(); }
  absl::StatusOr<HeadWeights> ExportWeights() const override { return inner_->ExportWeights(); }
  absl::Status ComputeLogits(const LogitsBatch& batch, std::vector<RowOutput>* out) override {
    std::unique_lock<std::mutex> lock(mu_);
    batch_sizes_.push_back(batch.rows);
    entered_cv_.notify_all();
    cv_.wait(lock, [&] { return open_; });
    lock.unlock();
    return inner_->ComputeLogits(batch, out);
  }
  void Open() {
    std::lock_guard<std::mutex> lock(mu_);
    open_ = true;
    cv_.notify_all();
  }
  void WaitForBatches(size_t n) {
    std::unique_lock<std::mutex> lock(mu_);
    entered_cv_.wait(lock, [&] { return batch_sizes_.size() >= n; });
  }
  std::vector<int64_t> batch_sizes() {
    std::lock_guard<std::mutex> lock(mu_);
    return batch_sizes_;
  }

 private:
  std::unique_ptr<Backend> inner_;
  std::mutex mu_;
  std::condition_variable cv_, entered_cv_;
  bool open_ = false;
  std::vector<int64_t> batch_sizes_;
};

// Collects task results.
struct Results {
  std::mutex mu;
  std::vector<std::pair<int, absl::StatusOr<TaskResult>>> done;
};

std::unique_ptr<Task> MakeTask(int tag, int64_t rows, Results* results, float value = 0.5f) {
  auto t = std::make_unique<Task>();
  t->rows = rows;
  t->hidden.assign(rows * kHidden, value);
  for (int64_t i = 0; i < rows * kHidden; ++i) t->hidden[i] += 0.01f * ((i * 7 + tag) % 13);
  t->top_k = 3;
  t->done = [results, tag](absl::StatusOr<TaskResult> r) {
    std::lock_guard<std::mutex> lock(results->mu);
    results->done.emplace_back(tag, std::move(r));
  };
  return t;
}

TEST(BatcherTest, CoalescesQueuedTasksAndReturnsEachItsOwnRows) {
  GatedBackend backend(RealBackend());
  auto reference = RealBackend();
  Results results;
  {
    Batcher batcher(&backend, {/*max_batch_rows=*/8, /*max_queued_rows=*/100}, nullptr);
    auto first = MakeTask(0, 1, &results);
    ASSERT_TRUE(batcher.Schedule(&first).ok());
    backend.WaitForBatches(1);  // the worker holds task 0; the rest queue up behind it
    for (int tag = 1; tag <= 5; ++tag) {
      auto t = MakeTask(tag, tag % 3 + 1, &results);
      ASSERT_TRUE(batcher.Schedule(&t).ok());
      EXPECT_EQ(t, nullptr) << "Schedule takes the task";
    }
    backend.Open();
    batcher.Stop();
  }
  // Tasks 1..5 have 2+3+1+2+3 = 11 rows: batches of 8 (tasks 1-4) and 3 (task 5).
  EXPECT_EQ(backend.batch_sizes(), (std::vector<int64_t>{1, 8, 3}));
  ASSERT_EQ(results.done.size(), 6u);
  for (auto& [tag, r] : results.done) {
    ASSERT_TRUE(r.ok()) << r.status();
    Results unused;
    auto alone = MakeTask(tag, tag == 0 ? 1 : tag % 3 + 1, &unused);
    std::vector<RowSpec> specs(alone->rows, RowSpec{3, {}, false});
    std::vector<RowOutput> expected;
    ASSERT_TRUE(reference->ComputeLogits({alone->hidden.data(), alone->rows, specs}, &expected).ok());
    ASSERT_EQ(r->rows.size(), expected.size());
    for (size_t i = 0; i < expected.size(); ++i) {
      EXPECT_EQ(r->rows[i].top_ids, expected[i].top_ids) << "task " << tag;
      EXPECT_EQ(r->rows[i].logsumexp, expected[i].logsumexp);
    }
  }
}

TEST(BatcherTest, FullQueueIsRefusedAtOnce) {
  GatedBackend backend(RealBackend());
  Results results;
  Batcher batcher(&backend, {/*max_batch_rows=*/4, /*max_queued_rows=*/6}, nullptr);
  auto busy = MakeTask(0, 1, &results);
  ASSERT_TRUE(batcher.Schedule(&busy).ok());
  backend.WaitForBatches(1);
  auto a = MakeTask(1, 4, &results);
  auto b = MakeTask(2, 2, &results);
  auto c = MakeTask(3, 1, &results);
  ASSERT_TRUE(batcher.Schedule(&a).ok());
  ASSERT_TRUE(batcher.Schedule(&b).ok());
  absl::Status full = batcher.Schedule(&c);
  EXPECT_EQ(full.code(), absl::StatusCode::kResourceExhausted) << full;
  ASSERT_NE(c, nullptr) << "a refused task stays with the caller";
  auto too_big = MakeTask(4, 5, &results);
  EXPECT_EQ(batcher.Schedule(&too_big).code(), absl::StatusCode::kInvalidArgument);
  backend.Open();
  batcher.Stop();
  EXPECT_EQ(results.done.size(), 3u);
  EXPECT_EQ(batcher.Schedule(&c).code(), absl::StatusCode::kUnavailable) << "stopped";
}

TEST(BatcherTest, AFailingTaskDoesNotFailItsBatchmates) {
  GatedBackend backend(RealBackend());
  Results results;
  Batcher batcher(&backend, {8, 100}, nullptr);
  auto busy = MakeTask(0, 1, &results);
  ASSERT_TRUE(batcher.Schedule(&busy).ok());
  backend.WaitForBatches(1);
  auto good1 = MakeTask(1, 2, &results);
  auto overflow = MakeTask(2, 1, &results, 3e38f);  // finite input, infinite logits
  auto good2 = MakeTask(3, 2, &results);
  ASSERT_TRUE(batcher.Schedule(&good1).ok());
  ASSERT_TRUE(batcher.Schedule(&overflow).ok());
  ASSERT_TRUE(batcher.Schedule(&good2).ok());
  backend.Open();
  batcher.Stop();
  ASSERT_EQ(results.done.size(), 4u);
  for (auto& [tag, r] : results.done) {
    if (tag == 2) {
      EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
    } else {
      EXPECT_TRUE(r.ok()) << "task " << tag << ": " << r.status();
    }
  }
}

}  // namespace
}  // namespace lmhead
