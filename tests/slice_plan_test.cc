// The CUDA backend's slicing (kernels/cuda/slice_plan.h): plain host code, tested without a GPU.
#include "kernels/cuda/slice_plan.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <numeric>
#include <vector>

namespace lmhead::cuda {
namespace {

constexpr int64_t kTile = 128;  // the FP8 GEMMs' tile rows (kGemmTileRows)

int64_t Sum(const std::vector<int64_t>& sizes) { return std::accumulate(sizes.begin(), sizes.end(), int64_t{0}); }

TEST(SlicePlanTest, NarrowSlicesAreTheFewestEqualOnesWithTheRemainderFirst) {
  for (int64_t granule : {int64_t{16}, kTile}) {
    for (int64_t slice_rows : {granule, 5 * granule, 3 * kTile}) {
      for (int64_t rows = 1; rows <= 5000; ++rows) {
        SCOPED_TRACE(::testing::Message() << rows << " rows, slices of " << slice_rows << ", granule " << granule);
        const std::vector<int64_t> sizes = NarrowSliceSizes(rows, slice_rows, granule);
        ASSERT_EQ(Sum(sizes), rows);
        ASSERT_EQ(static_cast<int64_t>(sizes.size()), (rows + slice_rows - 1) / slice_rows);
        ASSERT_GE(sizes[0], 1);
        for (size_t i = 1; i < sizes.size(); ++i) {
          ASSERT_EQ(sizes[i], sizes[1]);
          ASSERT_EQ(sizes[i] % granule, 0);
          ASSERT_LE(sizes[i], slice_rows);
          ASSERT_LE(sizes[0], sizes[i]);
        }
      }
    }
  }
  EXPECT_EQ(NarrowSliceSizes(400, 128, kTile), (std::vector<int64_t>{16, 128, 128, 128}));
  EXPECT_EQ(NarrowSliceSizes(300, 384, kTile), (std::vector<int64_t>{300}));
  std::vector<int64_t> want(22, 384);
  want[0] = 128;
  EXPECT_EQ(NarrowSliceSizes(8192, 384, kTile), want);
}

// Every slice runs an FP8 GEMM (above the GEMV's 64 rows, half a tile) over buffers of wide_rows
// rows in whole tiles but the last; the first is one tile, so the GPU starts as early as with
// narrow slices.
TEST(SlicePlanTest, WideSlicesDoubleFromOneTileAndFitTheirBuffers) {
  for (int64_t wide_rows = 2 * kTile; wide_rows <= 16 * kTile; wide_rows += kTile) {
    for (int64_t rows = MinWideRows(kTile); rows <= 20000; ++rows) {
      SCOPED_TRACE(::testing::Message() << rows << " rows, wide slices of up to " << wide_rows);
      const std::vector<int64_t> sizes = WideSliceSizes(rows, wide_rows, kTile);
      ASSERT_EQ(Sum(sizes), rows);
      ASSERT_GE(sizes.size(), 2u);
      ASSERT_EQ(sizes[0], kTile);
      for (size_t i = 0; i < sizes.size(); ++i) {
        ASSERT_GT(sizes[i], kTile / 2) << "slice " << i;
        ASSERT_LE(sizes[i], wide_rows) << "slice " << i;
        if (i + 1 < sizes.size()) {
          ASSERT_EQ(sizes[i] % kTile, 0) << "slice " << i;
        }
      }
    }
  }
  // The bench's batches with 1536-row buffers, and the conformance test's.
  EXPECT_EQ(WideSliceSizes(2048, 1536, kTile), (std::vector<int64_t>{128, 256, 512, 1152}));
  EXPECT_EQ(WideSliceSizes(8192, 1536, kTile), (std::vector<int64_t>{128, 256, 512, 1024, 1536, 1536, 1536, 768, 896}));
  EXPECT_EQ(WideSliceSizes(936, 768, kTile), (std::vector<int64_t>{128, 256, 552}));
  EXPECT_EQ(WideSliceSizes(400, 768, kTile), (std::vector<int64_t>{128, 272}));
}

}  // namespace
}  // namespace lmhead::cuda
