// CopyPool (kernels/cuda/host_copy.h): plain host code, tested without a GPU.
#include "kernels/cuda/host_copy.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <random>
#include <vector>

namespace lmhead::cuda {
namespace {

TEST(CopyPoolTest, CopiesEveryByteForAnySizeAndThreadCount) {
  constexpr size_t kPart = CopyPool::kMinBytesPerThread, kHelpers = CopyPool::kMinBytesForHelpers;
  // Sizes for the caller's thread alone, at and around the helpers' threshold and part boundaries,
  // and large odd ones.
  const size_t sizes[] = {0, 1, 63, 4096, kPart + 1, kHelpers - 1, kHelpers, kHelpers + kPart + 17,
                          (size_t{37} << 20) + 5};
  for (int threads : {0, 1, 2, 3, 8}) {
    CopyPool pool(threads);  // one pool for many copies in a row, as the backend uses it
    for (size_t bytes : sizes) {
      SCOPED_TRACE(::testing::Message() << bytes << " bytes, " << threads << " threads");
      std::vector<uint8_t> src(bytes);
      for (size_t i = 0; i < bytes; ++i) src[i] = static_cast<uint8_t>(i * 131 + (i >> 9) + threads);
      // Guard bytes on both sides must stay untouched.
      std::vector<uint8_t> dst(bytes + 128, 0xA5);
      pool.Copy(dst.data() + 64, src.data(), bytes);
      for (size_t i = 0; i < 64; ++i) ASSERT_EQ(dst[i], 0xA5) << "before the destination, " << i;
      for (size_t i = 0; i < 64; ++i) ASSERT_EQ(dst[64 + bytes + i], 0xA5) << "after the destination, " << i;
      ASSERT_TRUE(std::equal(src.begin(), src.end(), dst.begin() + 64));
    }
  }
}

// Rows split over the threads (see kMinBytesForHelpers) convert as ScaleRowToHalf
// converts each alone; rows with very different magnitudes get their own scales.
TEST(CopyPoolTest, ConvertsRowsToScaledHalfOnAnyThreadCount) {
  constexpr int64_t kHidden = 5000;
  constexpr int64_t kRowBytes = kHidden * sizeof(float);
  constexpr int64_t kShare = CopyPool::kMinBytesPerThread / kRowBytes;  // rows per thread's share
  constexpr int64_t kAlone = CopyPool::kMinBytesForHelpers / kRowBytes;  // the most rows on one thread
  for (int threads : {1, 3, 8}) {
    CopyPool pool(threads);
    for (int64_t rows : {int64_t{1}, kAlone, kAlone + 1, kAlone + kShare + 1, int64_t{160}, int64_t{384}}) {
      SCOPED_TRACE(::testing::Message() << rows << " rows, " << threads << " threads");
      std::mt19937_64 rng(rows * 10 + threads);
      std::normal_distribution<float> normal(0.0f, 1.0f);
      std::vector<float> src(rows * kHidden);
      for (int64_t i = 0; i < rows * kHidden; ++i) src[i] = normal(rng) * static_cast<float>(1 + i / kHidden % 7 * 100);
      std::vector<uint8_t> buffer(HalfRowsBytes(rows, kHidden) + 64);
      void* base = buffer.data() + (64 - reinterpret_cast<uintptr_t>(buffer.data()) % 64) % 64;
      const HalfRows dst = HalfRowsIn(base, rows, kHidden);
      pool.ToHalfRows(src.data(), rows, kHidden, dst);
      std::vector<uint16_t> want(kHidden);
      for (int64_t r = 0; r < rows; ++r) {
        ASSERT_EQ(dst.inv_scales[r], ScaleRowToHalf(src.data() + r * kHidden, kHidden, want.data())) << "row " << r;
        ASSERT_TRUE(std::equal(want.begin(), want.end(), dst.values + r * kHidden)) << "row " << r;
      }
    }
  }
}

}  // namespace
}  // namespace lmhead::cuda
