#include "kernels/cuda/slice_plan.h"

#include <algorithm>

namespace lmhead::cuda {
namespace {

int64_t RoundUp(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

}  // namespace

std::vector<int64_t> NarrowSliceSizes(int64_t rows, int64_t slice_rows, int64_t granule) {
  const int64_t slices = (rows + slice_rows - 1) / slice_rows;
  const int64_t per = slices == 1 ? rows : std::min(slice_rows, RoundUp((rows + slices - 1) / slices, granule));
  std::vector<int64_t> sizes(slices, per);
  sizes[0] = rows - (slices - 1) * per;
  return sizes;
}

std::vector<int64_t> WideSliceSizes(int64_t rows, int64_t wide_rows, int64_t tile) {
  std::vector<int64_t> sizes;
  for (int64_t left = rows, next = tile; left > 0; next = std::min(2 * next, wide_rows)) {
    sizes.push_back(std::min(next, left));
    left -= sizes.back();
  }
  const size_t k = sizes.size();
  if (k >= 3 && sizes[k - 1] < sizes[k - 2] / 2) {
    const int64_t both = sizes[k - 2] + sizes[k - 1];
    if (both <= wide_rows) {
      sizes[k - 2] = both;
      sizes.pop_back();
    } else {
      sizes[k - 2] = std::max(tile, both / 2 / tile * tile);
      sizes[k - 1] = both - sizes[k - 2];
    }
  }
  return sizes;
}

}  // namespace lmhead::cuda
