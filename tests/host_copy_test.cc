// CopyPool (kernels/cuda/host_copy.h): plain host code, tested without a GPU.
#include "kernels/cuda/host_copy.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <vector>

namespace lmhead::cuda {
namespace {

TEST(CopyPoolTest, CopiesEveryByteForAnySizeAndThreadCount) {
  constexpr size_t kPart = CopyPool::kMinBytesPerThread;
  // Sizes below one thread's share, at and around part boundaries, and large odd ones.
  const size_t sizes[] = {0, 1, 63, 4096, kPart - 1, kPart, 2 * kPart + 1, 3 * kPart + 17, (size_t{37} << 20) + 5};
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

}  // namespace
}  // namespace lmhead::cuda
