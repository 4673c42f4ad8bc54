// Hidden-state rows as the CUDA backend's FP8 kernels multiply them when a batch takes one fp16
// per activation (the GEMV above kCudaGemvExactRows rows, the FP8 x fp16 GEMM): each row scaled by
// a power of two and rounded to fp16. Made on the host while the rows are gathered, they cross
// PCIe at half the bytes of fp32 rows and give bit-identical results (the GPU's activation kernels
// make the same values from fp32 rows). Plain host code; thread-safe (no shared state).
#ifndef LMHEAD_KERNELS_HALF_ROWS_H_
#define LMHEAD_KERNELS_HALF_ROWS_H_

#include <cstddef>
#include <cstdint>

namespace lmhead {

// Where a batch of scaled fp16 rows goes (a backend's buffer, see Backend::HalfInputBuffer).
struct HalfRows {
  uint16_t* values = nullptr;   // [rows, hidden] fp16 bits
  float* inv_scales = nullptr;  // [rows]: 1 / s of each row
};

// Bytes HalfRowsIn needs for `rows` rows of `hidden` values (the scales after the values, on a
// 64-byte boundary).
size_t HalfRowsBytes(int64_t rows, int64_t hidden);
// The two arrays of a HalfRows laid out in `buffer` (64-byte aligned, HalfRowsBytes(rows, hidden)
// bytes) for `rows` rows: values first, scales after them.
HalfRows HalfRowsIn(void* buffer, int64_t rows, int64_t hidden);

// How ScaleRowToHalf computes: every path gives the same bits.
enum class HalfRowsPath { kPortable, kAvx2F16c, kAvx512, kNeon };

// The fastest path this CPU runs.
HalfRowsPath BestHalfRowsPath();
// Whether this CPU runs a vector path. The portable one (scalar conversions) costs several times a
// copy of the rows, more than half the bytes across PCIe save: backends offer fp16 rows only
// where this holds.
inline bool HalfRowsAreFast() { return BestHalfRowsPath() != HalfRowsPath::kPortable; }
// Whether this CPU can run `path`.
bool HalfRowsPathRuns(HalfRowsPath path);

// Writes row[0, n) (finite fp32) to out[0, n) as fp16(x * s), rounded to nearest even, with
// s = 2^(14 - e) where max|x| = m * 2^e, m in [0.5, 1) (e = 14 for an all-zero row; e >= -100), so
// that max|x| * s lies in [2^13, 2^14) and no value overflows. Returns 1 / s. BestHalfRowsPath().
float ScaleRowToHalf(const float* row, int64_t n, uint16_t* out);
// The same on a given path (HalfRowsPathRuns(path) must hold): for tests.
float ScaleRowToHalfOn(HalfRowsPath path, const float* row, int64_t n, uint16_t* out);

// ScaleRowToHalf over `rows` consecutive rows of `hidden` values at src, into rows [first,
// first + rows) of dst.
void ScaleRowsToHalf(const float* src, int64_t rows, int64_t hidden, HalfRows dst, int64_t first = 0);

}  // namespace lmhead

#endif  // LMHEAD_KERNELS_HALF_ROWS_H_
