#include "service/batching/batcher.h"

#include <atomic>
#include <cmath>
#include <condition_variable>
#include <mutex>

#include "gtest/gtest.h"
#include "kernels/cpu/cpu_backend.h"
#include "kernels/half.h"
#include "kernels/half_rows.h"
#include "kernels/head_quantizer.h"
#include "tests/test_util.h"

namespace lmhead {
namespace {

constexpr int64_t kVocab = 97;
constexpr int64_t kHidden = 24;

std::unique_ptr<Backend> RealBackend() {
  const std::vector<float> w = testing::RandomWeights(kVocab, kHidden, 5);
  return *NewCpuBackend(*QuantizeHead(testing::F32HeadSource(w, kVocab, kHidden), QuantizeOptions{}), {}, 2);
}

// The real CPU backend behind a gate: ComputeLogits waits until Open() (lets a test hold the
// worker busy) and records each batch's size. With an input buffer it offers one, as the CUDA
// backend does, and counts the batches whose rows arrived in it; with a bf16 one likewise (the
// rows are widened for the CPU backend); with half_from_rows > 0, a buffer of scaled fp16 rows for
// batches of at least that many rows (kept for the test, then widened: value * 1 / s).
class GatedBackend : public Backend {
 public:
  explicit GatedBackend(std::unique_ptr<Backend> inner, bool input_buffer = false, bool bf16_buffer = false,
                        int64_t half_from_rows = 0)
      : inner_(std::move(inner)), offers_buffer_(input_buffer), offers_bf16_(bf16_buffer),
        half_from_rows_(half_from_rows) {}
  float* InputBuffer(int64_t rows) override {
    if (!offers_buffer_) return nullptr;
    buffer_.assign(rows * hidden(), std::nanf(""));  // stale values must not survive
    return buffer_.data();
  }
  uint16_t* Bf16InputBuffer(int64_t rows) override {
    if (!offers_bf16_) return nullptr;
    buffer16_.assign(rows * hidden(), 0x7fc0);  // NaN: stale values must not survive
    return buffer16_.data();
  }
  HalfRows HalfInputBuffer(int64_t rows) override {
    if (half_from_rows_ == 0 || rows < half_from_rows_) return {};
    half_buffer_.assign(HalfRowsBytes(rows, hidden()), 0xff);  // NaN bits: stale values must not survive
    return HalfRowsIn(half_buffer_.data(), rows, hidden());
  }
  const char* Name() const override { return inner_->Name(); }
  int64_t vocab() const override { return inner_->vocab(); }
  int64_t hidden() const override { return inner_->hidden(); }
  int64_t ResidentWeightBytes() const override { return inner_->ResidentWeightBytes(); }
  absl::StatusOr<HeadWeights> ExportWeights() const override { return inner_->ExportWeights(); }
  absl::Status ComputeLogits(const LogitsBatch& batch, std::vector<RowOutput>* out) override {
    std::unique_lock<std::mutex> lock(mu_);
    batch_sizes_.push_back(batch.rows);
    if (offers_buffer_ && batch.hidden != nullptr && batch.hidden == buffer_.data()) ++buffered_batches_;
    entered_cv_.notify_all();
    cv_.wait(lock, [&] { return open_; });
    lock.unlock();
    if (batch.hidden_half != nullptr) {
      EXPECT_EQ(batch.hidden, nullptr);
      const HalfRows mine = HalfRowsIn(half_buffer_.data(), batch.rows, hidden());
      EXPECT_EQ(batch.hidden_half, mine.values) << "half rows only in the buffer handed out";
      EXPECT_EQ(batch.half_inv_scales, mine.inv_scales);
      std::vector<float> widened(batch.rows * hidden());
      for (size_t i = 0; i < widened.size(); ++i) {
        widened[i] = HalfToFloat(batch.hidden_half[i]) * batch.half_inv_scales[i / hidden()];
      }
      std::lock_guard<std::mutex> lock(mu_);
      half_batches_.push_back({std::vector<uint16_t>(batch.hidden_half, batch.hidden_half + widened.size()),
                               std::vector<float>(batch.half_inv_scales, batch.half_inv_scales + batch.rows)});
      return inner_->ComputeLogits({widened.data(), batch.rows, batch.specs}, out);
    }
    if (batch.hidden_bf16 == nullptr) return inner_->ComputeLogits(batch, out);
    EXPECT_EQ(batch.hidden, nullptr);
    EXPECT_EQ(batch.hidden_bf16, buffer16_.data()) << "bf16 rows only in the buffer handed out";
    ++bf16_batches_;
    std::vector<float> widened(batch.rows * hidden());
    for (size_t i = 0; i < widened.size(); ++i) widened[i] = Bf16ToFloat(batch.hidden_bf16[i]);
    return inner_->ComputeLogits({widened.data(), batch.rows, batch.specs}, out);
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
  int buffered_batches() {
    std::lock_guard<std::mutex> lock(mu_);
    return buffered_batches_;
  }
  int bf16_batches() {
    std::lock_guard<std::mutex> lock(mu_);
    return bf16_batches_;
  }
  // Each batch that came as half rows: its values and scales.
  std::vector<std::pair<std::vector<uint16_t>, std::vector<float>>> half_batches() {
    std::lock_guard<std::mutex> lock(mu_);
    return half_batches_;
  }

 private:
  std::unique_ptr<Backend> inner_;
  const bool offers_buffer_, offers_bf16_;
  const int64_t half_from_rows_;
  std::vector<float> buffer_;
  std::vector<uint16_t> buffer16_;
  std::vector<uint8_t> half_buffer_;
  std::vector<std::pair<std::vector<uint16_t>, std::vector<float>>> half_batches_;
  int buffered_batches_ = 0, bf16_batches_ = 0;
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

// bf16: the rows arrive as bf16 (values rounded to bf16, and their bits kept as the codec does).
std::unique_ptr<Task> MakeTask(int tag, int64_t rows, Results* results, float value = 0.5f, bool bf16 = false) {
  auto t = std::make_unique<Task>();
  t->rows = rows;
  t->hidden.assign(rows * kHidden, value);
  for (int64_t i = 0; i < rows * kHidden; ++i) t->hidden[i] += 0.01f * ((i * 7 + tag) % 13);
  if (bf16) {
    for (float& v : t->hidden) {
      t->hidden_bf16.push_back(FloatToBf16(v));
      v = Bf16ToFloat(t->hidden_bf16.back());
    }
  }
  t->top_k = 3;
  t->done = [results, tag](absl::StatusOr<TaskResult> r) {
    std::lock_guard<std::mutex> lock(results->mu);
    results->done.emplace_back(tag, std::move(r));
  };
  return t;
}

// Param: the backend offers an input buffer (rows are gathered there) or not.
class CoalescingTest : public ::testing::TestWithParam<bool> {};

TEST_P(CoalescingTest, CoalescesQueuedTasksAndReturnsEachItsOwnRows) {
  GatedBackend backend(RealBackend(), GetParam());
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
  EXPECT_EQ(backend.buffered_batches(), GetParam() ? 3 : 0);
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

// Tasks whose rows all arrived as bf16 reach a backend that takes bf16 rows as bf16 (gathered in its
// buffer); a batch with one fp32 task goes as fp32. Every task gets the results of its own rows.
TEST(BatcherTest, Bf16RowsGoAsBf16WhenEveryTaskHasThem) {
  GatedBackend backend(RealBackend(), /*input_buffer=*/true, /*bf16_buffer=*/true);
  auto reference = RealBackend();
  Results results;
  std::vector<std::vector<float>> rows_of(6);
  {
    Batcher batcher(&backend, {/*max_batch_rows=*/6, /*max_queued_rows=*/100}, nullptr);
    auto first = MakeTask(0, 1, &results, 0.5f, /*bf16=*/true);
    rows_of[0] = first->hidden;
    ASSERT_TRUE(batcher.Schedule(&first).ok());
    backend.WaitForBatches(1);
    for (int tag = 1; tag <= 5; ++tag) {  // batches: tasks 1-3 (bf16, 6 rows), tasks 4-5 (one fp32)
      auto t = MakeTask(tag, 2, &results, 0.5f, /*bf16=*/tag != 5);
      rows_of[tag] = t->hidden;
      ASSERT_TRUE(batcher.Schedule(&t).ok());
    }
    backend.Open();
    batcher.Stop();
  }
  EXPECT_EQ(backend.batch_sizes(), (std::vector<int64_t>{1, 6, 4}));
  EXPECT_EQ(backend.bf16_batches(), 2);
  EXPECT_EQ(backend.buffered_batches(), 1) << "the batch with an fp32 task goes through the fp32 buffer";
  ASSERT_EQ(results.done.size(), 6u);
  for (auto& [tag, r] : results.done) {
    ASSERT_TRUE(r.ok()) << r.status();
    const int64_t rows = tag == 0 ? 1 : 2;
    std::vector<RowSpec> specs(rows, RowSpec{3, {}, false});
    std::vector<RowOutput> expected;
    ASSERT_TRUE(reference->ComputeLogits({rows_of[tag].data(), rows, specs}, &expected).ok());
    ASSERT_EQ(r->rows.size(), expected.size());
    for (size_t i = 0; i < expected.size(); ++i) {
      EXPECT_EQ(r->rows[i].top_ids, expected[i].top_ids) << "task " << tag;
      EXPECT_EQ(r->rows[i].logsumexp, expected[i].logsumexp) << "task " << tag;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(InputBuffer, CoalescingTest, ::testing::Bool(),
                         [](const ::testing::TestParamInfo<bool>& info) {
                           return info.param ? "BackendBuffer" : "OwnBuffer";
                         });

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
  auto empty = MakeTask(4, 0, &results);
  EXPECT_EQ(batcher.Schedule(&empty).code(), absl::StatusCode::kInvalidArgument);
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

// Expected outputs for a task made by MakeTask(tag, rows, ...), computed by the backend alone.
std::vector<RowOutput> Direct(Backend& backend, int tag, int64_t rows) {
  Results unused;
  auto alone = MakeTask(tag, rows, &unused);
  std::vector<RowSpec> specs(rows, RowSpec{3, {}, false});
  std::vector<RowOutput> out;
  EXPECT_TRUE(backend.ComputeLogits({alone->hidden.data(), rows, specs}, &out).ok());
  return out;
}

TEST(BatcherTest, SplitsLargeTasksAndReassemblesThemInOrder) {
  GatedBackend backend(RealBackend());
  auto reference = RealBackend();
  Results results;
  {
    Batcher batcher(&backend, {/*max_batch_rows=*/8, /*max_queued_rows=*/100}, nullptr);
    backend.Open();
    auto big = MakeTask(7, 21, &results);
    ASSERT_TRUE(batcher.Schedule(&big).ok());
    batcher.Stop();
  }
  EXPECT_EQ(backend.batch_sizes(), (std::vector<int64_t>{8, 8, 5}));
  ASSERT_EQ(results.done.size(), 1u);
  ASSERT_TRUE(results.done[0].second.ok());
  const auto expected = Direct(*reference, 7, 21);
  const auto& rows = results.done[0].second->rows;
  ASSERT_EQ(rows.size(), 21u);
  for (size_t i = 0; i < rows.size(); ++i) EXPECT_EQ(rows[i].top_ids, expected[i].top_ids) << "row " << i;
}

TEST(BatcherTest, ExpiredAndCancelledTasksAreDroppedBeforeCompute) {
  GatedBackend backend(RealBackend());
  Results results;
  Batcher batcher(&backend, {8, 100}, nullptr);
  auto busy = MakeTask(0, 1, &results);
  ASSERT_TRUE(batcher.Schedule(&busy).ok());
  backend.WaitForBatches(1);
  auto expired = MakeTask(1, 2, &results);
  expired->deadline = absl::Now() + absl::Milliseconds(1);
  auto cancelled = MakeTask(2, 2, &results);
  auto flag = std::make_shared<std::atomic<bool>>(false);
  cancelled->cancelled = [flag] { return flag->load(); };
  auto fine = MakeTask(3, 2, &results);
  fine->deadline = absl::Now() + absl::Hours(1);
  ASSERT_TRUE(batcher.Schedule(&expired).ok());
  ASSERT_TRUE(batcher.Schedule(&cancelled).ok());
  ASSERT_TRUE(batcher.Schedule(&fine).ok());
  flag->store(true);
  absl::SleepFor(absl::Milliseconds(5));  // past the first deadline
  backend.Open();
  batcher.Stop();
  ASSERT_EQ(results.done.size(), 4u);
  for (auto& [tag, r] : results.done) {
    if (tag == 1) {
      EXPECT_EQ(r.status().code(), absl::StatusCode::kDeadlineExceeded) << r.status();
    } else if (tag == 2) {
      EXPECT_EQ(r.status().code(), absl::StatusCode::kCancelled) << r.status();
    } else {
      EXPECT_TRUE(r.ok()) << r.status();  // tasks 0 and 3
    }
  }
  // Only the live task reached the backend after the busy one.
  EXPECT_EQ(backend.batch_sizes(), (std::vector<int64_t>{1, 2}));
}

TEST(BatcherTest, EarliestDeadlineFirstWhenMoreThanOneBatchWaits) {
  GatedBackend backend(RealBackend());
  Results results;
  Batcher batcher(&backend, {/*max_batch_rows=*/4, 100}, nullptr);
  auto busy = MakeTask(0, 1, &results);
  ASSERT_TRUE(batcher.Schedule(&busy).ok());
  backend.WaitForBatches(1);
  const absl::Time now = absl::Now();
  const int64_t late_rows = 3, early_rows = 4;  // distinct sizes identify the batches
  auto late = MakeTask(1, late_rows, &results);
  late->deadline = now + absl::Hours(2);
  auto early = MakeTask(2, early_rows, &results);
  early->deadline = now + absl::Hours(1);
  ASSERT_TRUE(batcher.Schedule(&late).ok());
  ASSERT_TRUE(batcher.Schedule(&early).ok());
  backend.Open();
  batcher.Stop();
  EXPECT_EQ(backend.batch_sizes(), (std::vector<int64_t>{1, early_rows, late_rows}));
}

// fp32 rows of batches the backend takes as scaled fp16 (HalfInputBuffer) are converted while they
// are gathered: each row exactly as ScaleRowToHalf makes it, in batch order. All-bf16 batches
// still go as bf16, and batches the backend takes no half rows for as fp32. Every task gets the
// results of the values the backend multiplied.
TEST(BatcherTest, Fp32RowsGoAsScaledHalfWhereTheBackendTakesThem) {
  GatedBackend backend(RealBackend(), /*input_buffer=*/true, /*bf16_buffer=*/true, /*half_from_rows=*/3);
  auto reference = RealBackend();
  Results results;
  std::vector<std::vector<float>> rows_of(6);
  {
    Batcher batcher(&backend, {/*max_batch_rows=*/4, /*max_queued_rows=*/100}, nullptr);
    auto first = MakeTask(0, 1, &results);
    rows_of[0] = first->hidden;
    ASSERT_TRUE(batcher.Schedule(&first).ok());
    backend.WaitForBatches(1);
    // Batches: tasks 1-2 (fp32, 4 rows: half), 3-4 (bf16, 4 rows: bf16), 5 (fp32, 1 row: fp32).
    for (int tag = 1; tag <= 5; ++tag) {
      auto t = MakeTask(tag, tag == 5 ? 1 : 2, &results, 0.25f * tag, /*bf16=*/tag == 3 || tag == 4);
      if (t->hidden_bf16.empty()) {  // (both signs)
        for (int64_t i = 0; i < t->rows * kHidden; ++i) t->hidden[i] *= i % 2 ? -1 : 1;
      }
      rows_of[tag] = t->hidden;
      ASSERT_TRUE(batcher.Schedule(&t).ok());
    }
    backend.Open();
    batcher.Stop();
  }
  EXPECT_EQ(backend.batch_sizes(), (std::vector<int64_t>{1, 4, 4, 1}));
  EXPECT_EQ(backend.bf16_batches(), 1);
  EXPECT_EQ(backend.buffered_batches(), 2) << "the one-row batches go through the fp32 buffer";
  const auto half = backend.half_batches();
  ASSERT_EQ(half.size(), 1u);
  // Tasks 1 and 2 in order, each row converted on its own.
  std::vector<std::vector<float>> multiplied = rows_of;
  for (int64_t r = 0; r < 4; ++r) {
    std::vector<float>& rows = multiplied[1 + r / 2];
    std::vector<uint16_t> want(kHidden);
    const float inv = ScaleRowToHalf(rows.data() + r % 2 * kHidden, kHidden, want.data());
    EXPECT_EQ(half[0].second[r], inv) << "row " << r;
    EXPECT_TRUE(std::equal(want.begin(), want.end(), half[0].first.begin() + r * kHidden)) << "row " << r;
    for (int64_t i = 0; i < kHidden; ++i) rows[r % 2 * kHidden + i] = HalfToFloat(want[i]) * inv;
  }
  ASSERT_EQ(results.done.size(), 6u);
  for (auto& [tag, r] : results.done) {
    ASSERT_TRUE(r.ok()) << r.status();
    const int64_t rows = tag == 0 || tag == 5 ? 1 : 2;
    std::vector<RowSpec> specs(rows, RowSpec{3, {}, false});
    std::vector<RowOutput> expected;
    ASSERT_TRUE(reference->ComputeLogits({multiplied[tag].data(), rows, specs}, &expected).ok());
    ASSERT_EQ(r->rows.size(), expected.size());
    for (size_t i = 0; i < expected.size(); ++i) {
      EXPECT_EQ(r->rows[i].top_ids, expected[i].top_ids) << "task " << tag;
      EXPECT_EQ(r->rows[i].logsumexp, expected[i].logsumexp) << "task " << tag;
    }
  }
}

TEST(BatcherTest, QueueDelayGathersRowsIntoOneBatch) {
  GatedBackend backend(RealBackend());
  backend.Open();
  Results results;
  Batcher batcher(&backend, {/*max_batch_rows=*/64, 100, /*max_queue_delay=*/absl::Milliseconds(500)}, nullptr);
  auto first = MakeTask(0, 2, &results);
  ASSERT_TRUE(batcher.Schedule(&first).ok());
  absl::SleepFor(absl::Milliseconds(50));  // without the delay, the first task would run alone
  for (int tag = 1; tag < 5; ++tag) {
    auto t = MakeTask(tag, 2, &results);
    ASSERT_TRUE(batcher.Schedule(&t).ok());
  }
  for (int i = 0; i < 400; ++i) {
    {
      std::lock_guard<std::mutex> lock(results.mu);
      if (results.done.size() == 5) break;
    }
    absl::SleepFor(absl::Milliseconds(5));
  }
  EXPECT_EQ(backend.batch_sizes(), (std::vector<int64_t>{10}));
  batcher.Stop();
}

}  // namespace
}  // namespace lmhead
