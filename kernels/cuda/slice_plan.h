// How the CUDA backend cuts a batch of rows into slices, each one pass of activations, GEMM and
// epilogue (see CudaBackend::ComputeLogits). Plain host code (tested without a GPU); thread-safe.
#ifndef LMHEAD_KERNELS_CUDA_SLICE_PLAN_H_
#define LMHEAD_KERNELS_CUDA_SLICE_PLAN_H_

#include <cstdint>
#include <vector>

namespace lmhead::cuda {

// Narrow slices: as few as hold `rows` in at most `slice_rows` each (a multiple of `granule`), all
// but the first equal and whole granules, the remainder first: the GPU starts once the first
// slice's rows are up (host copy and PCIe), so a short first slice starts it sooner while the next
// ones are staged. rows, slice_rows, granule >= 1.
std::vector<int64_t> NarrowSliceSizes(int64_t rows, int64_t slice_rows, int64_t granule);

// The fewest rows WideSliceSizes takes: three tiles.
inline int64_t MinWideRows(int64_t tile) { return 3 * tile; }

// Wide slices (up to wide_rows >= 2 * tile rows each, a multiple of tile): one tile, then each
// twice the one before, so that the GPU starts as soon as with narrow slices and the host's staging
// keeps ahead; a remainder below half the slice before joins it where the two fit in one slice,
// else the two share their rows (whole tiles first). For rows >= MinWideRows(tile): every slice
// but the last whole tiles, every slice above half a tile and at most wide_rows, at least two.
std::vector<int64_t> WideSliceSizes(int64_t rows, int64_t wide_rows, int64_t tile);

}  // namespace lmhead::cuda

#endif  // LMHEAD_KERNELS_CUDA_SLICE_PLAN_H_
