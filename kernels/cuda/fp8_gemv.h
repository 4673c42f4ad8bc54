// Head product with FP8 weights and fp16 activations on tensor cores: the small-batch GEMV, and
// the activations of the large-batch FP8 x fp16 GEMM (LaunchFp8Gemm in fp8_gemm.h).
//
// For batches of up to kGemvMaxRows rows the head is a skinny GEMM bound by reading the weights.
// This path reads every weight byte once, decodes E4M3 to fp16 in registers (exact: every E4M3
// value is an fp16 value) and multiplies on tensor cores (fp32 accumulation). Activations get a
// per-row power-of-two scale (max |x| in [2^13, 2^14), so no fp16 overflow and no precision lost
// to the scale) and are then carried as
// - up to kGemvExactRows rows: hi + lo, two fp16 values ("planes") per element, so x is kept to
//   ~2^-22 relative and the products match an fp32 dot product over the same FP8 codes;
// - above that: one fp16 value (11 significant bits, relative rounding error <= 2^-11 per
//   element, finer than bf16's 2^-8), which halves the tensor-core work.
// On Hopper the warpgroup MMA (wgmma, N = 16, 24, 32, 48 or 64 columns) with the weights and activations
// brought into shared memory by the copy engine (TMA) takes every batch (1-64 rows) and does the
// epilogue's first pass on its products (GemvPartials); elsewhere mma.sync m16n8k16 with the
// weights loaded straight into registers takes up to kGemvMmaRows rows (the first pass too up to
// kGemvFusedRows rows).
//
// Shapes are row-major. Kernels know nothing of the service.
#ifndef LMHEAD_KERNELS_CUDA_FP8_GEMV_H_
#define LMHEAD_KERNELS_CUDA_FP8_GEMV_H_

#include <cuda.h>  // CUtensorMap (a plain struct; nothing links libcuda)
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/cuda/kernels.h"

namespace lmhead::cuda {

// Most rows one GEMV call takes (on Hopper; kGemvMmaRows elsewhere).
inline constexpr int64_t kGemvMaxRows = 64;
// Batches of up to this many rows carry activations as fp16 hi + lo; larger ones as one fp16.
inline constexpr int64_t kGemvExactRows = 8;
// Most rows the mma.sync GEMV takes (GPUs other than Hopper; on Hopper 1-64 rows run the wgmma
// GEMV, with N = 16, 24, 32, 48 or 64 MMA columns, hi + lo planes counting two columns per row).
inline constexpr int64_t kGemvMmaRows = 16;

// fp16 planes per batch row for a batch of `rows` rows (2 = hi + lo, 1 = single).
inline constexpr int64_t GemvPlanes(int64_t rows) { return rows <= kGemvExactRows ? 2 : 1; }
// Plane rows every activation buffer holds: the kernels read all of them whatever the batch (rows
// past a batch's only reach results that are never stored, but must be finite: zero the buffer
// once when allocated).
inline constexpr int64_t kGemvPlaneRows = kGemvMaxRows;

// Row stride (fp16 elements) of the activation planes for a head of `hidden_pad` columns.
int64_t GemvActivationStride(int64_t hidden_pad);

// Per-row words the activation kernels prepare for the kernels after them, beside the rows:
// [rows, zero_per_row] words set to 0 (EpilogueParams::topk_bound), and [rows, ids_per_row] token
// ids copied from ids_from (pinned host memory, read over PCIe with the rows) to ids_to (device
// memory), so that the tile stores and the epilogue read them from the device
// (EpilogueParams::token_ids: read in host memory, a round trip in every block's tile store, they
// made top-20 + token logprob calls 1-5 us slower on an H100).
struct RowWords {
  uint32_t* zero = nullptr;
  int zero_per_row = 0;
  const int32_t* ids_from = nullptr;
  int32_t* ids_to = nullptr;
  int ids_per_row = 0;
};

// x: [rows, hidden] fp32, in device memory or pinned host memory (read once, over PCIe).
// act: [kGemvPlaneRows * GemvActivationStride] fp16. For the mma.sync GEMV (rows <=
// kGemvMmaRows) writes the first GemvPlanes(rows) * rows plane rows of stride
// GemvActivationStride, columns permuted within each 128 for the GEMV's loads: with two planes
// row 2b is hi_b = fp16(x_b * s_b) and row 2b + 1 is lo_b = fp16(x_b * s_b - hi_b); with one, row
// b is hi_b. For the wgmma GEMV the same planes, plane p of row b as MMA column
// GemvPlanes(rows) * b + p, in the shared-memory layout of its MMAs (N = 16, 24, 32, 48 or 64 columns per
// k16 block, one run of k16 blocks per staged chunk). s_b is a power of two that puts
// max|x_b| in [2^13, 2^14), and inv_scales[b] = 1 / s_b. Only the columns below `hidden`
// are written: `act` must be zeroed once when allocated. `words`: what the kernel also prepares
// for the kernels that follow (RowWords).
// rows > kGemvMaxRows (Hopper, for LaunchFp8Gemm in fp8_gemm.h): one plane, tiles of kGemmTileRows rows in the
// wgmma layout for N = kGemmTileRows, tile i at act + i * kGemmTileRows * GemvActivationStride;
// act then holds RoundUp(rows, kGemmTileRows) plane rows (zeroed once: the last tile's rows past
// the batch are multiplied too).
cudaError_t LaunchGemvActivations(const float* x, int64_t rows, int64_t hidden, int64_t hidden_pad, __half* act,
                                  float* inv_scales, cudaStream_t stream, const RowWords& words = {});
// The same from rows of bf16 bits (each exact in fp32: the planes are those of the fp32 values).
cudaError_t LaunchGemvActivations(const uint16_t* x_bf16, int64_t rows, int64_t hidden, int64_t hidden_pad,
                                  __half* act, float* inv_scales, cudaStream_t stream, const RowWords& words = {});
// The same from fp32 rows the host already scaled and rounded (ScaleRowToHalf, kernels/half_rows.h):
// x_half [rows, hidden] fp16 bits, host_inv_scales [rows] their 1 / s (both in device or pinned host
// memory). The planes and scales are those of the fp32 rows; one plane only, so rows must be more
// than kGemvExactRows (else cudaErrorInvalidValue).
cudaError_t LaunchGemvActivationsFromHalf(const uint16_t* x_half, const float* host_inv_scales, int64_t rows,
                                          int64_t hidden, int64_t hidden_pad, __half* act, float* inv_scales,
                                          cudaStream_t stream, const RowWords& words = {});

// Allows the GEMV variants their shared memory on the current device, and checks whether the
// activation kernel's thread-block clusters (Hopper, up to kGemvExactRows rows) can run there
// (else it reads each row in one block). Call once per process before LaunchGemvActivations and
// LaunchFp8Gemv (and before capturing them in a graph).
cudaError_t PrepareFp8Gemv();

// Most rows the GEMV takes on the device PrepareFp8Gemv saw: kGemvMaxRows on Hopper (sm_90),
// kGemvMmaRows elsewhere.
int64_t GemvMaxRows();

// The mma.sync GEMV does the epilogue's first pass for batches of up to this many rows (above,
// it writes raw products).
inline constexpr int64_t kGemvFusedRows = 4;

// Partial statistics per batch row (one per block of vocab rows) the GEMV writes for a batch of
// `rows` rows on the device PrepareFp8Gemv saw; 0 = it writes raw products instead (the mma.sync
// GEMV above kGemvFusedRows rows, on GPUs other than Hopper). At most GemvMaxPartials.
int64_t GemvPartials(int64_t rows, int64_t vocab_pad);
int64_t GemvMaxPartials(int64_t vocab_pad);
// Vocab rows each of those partial statistics covers (as the FP8 GEMM's for rows > kGemvMaxRows).
int64_t GemvPartialRows(int64_t rows);

// Batch rows per tile of the large-batch FP8 GEMMs (fp8_gemm.h).
inline constexpr int64_t kGemmTileRows = 128;
// The head's FP8 codes as the GEMV reads them.
struct GemvWeights {
  const uint8_t* codes = nullptr;  // [vocab_pad, hidden_pad] E4M3, device memory
  int64_t vocab_pad = 0;           // multiples of 16
  int64_t hidden_pad = 0;
  CUtensorMap tensor_map{};        // Hopper: the codes for the wgmma GEMV's TMA reads
  // The wgmma GEMV at 1-16 rows (N = 16) and at 17-32 rows (N = 24, 32) in one or two blocks per SM:
  // which is faster depends on the head (the caller times both; see WgmmaGemvShape in fp8_gemv.cu).
  int blocks_per_sm_16 = 1;
  int blocks_per_sm_32 = 1;
};

// A 2-D tensor map (Hopper's copy engine) over a row-major byte matrix [rows, cols] in device
// memory (cols a multiple of 16): boxes of box_rows (<= 256) rows x 128 bytes, written to shared
// memory with the 128-byte swizzle; bytes outside the matrix read as zeros.
cudaError_t DescribeByteMatrix(const void* base, int64_t cols, int64_t rows, int box_rows, CUtensorMap* out);

// Describes `codes` for LaunchFp8Gemv (after PrepareFp8Gemv; the codes must outlive the result).
cudaError_t DescribeGemvWeights(const uint8_t* codes, int64_t vocab_pad, int64_t hidden_pad, GemvWeights* out);

// The head times the activation planes for p.rows <= kGemvMaxRows rows. Where GemvPartials(rows)
// > 0 the GEMV also does the epilogue's first pass: the logits FinishLogit(p.act_scales[b] *
// sum_k W[v, k] * (hi_b[k] + lo_b[k])) with p.row_scales, p.logit_scale and p.softcap for
// v < p.vocab, per block (max, argmax, sum of exp) in p.part_* ([rows, GemvPartials]) -- run the
// epilogue with ready_partials set to that -- and the logits in p.raw ([rows, p.ld]; the wgmma
// GEMV stores them only when p.keep_logits or p.max_token_ids > 0). Otherwise p.raw gets raw
// products (the sums, unscaled) for the epilogue's first pass, with p.act_scales (the inv_scales
// of LaunchGemvActivations) as the activation scales.
// act: from LaunchGemvActivations for the same rows (the previous kernel on `stream`: the GEMV
// starts streaming weights before it ends).
// p.rows must be <= GemvMaxRows().
cudaError_t LaunchFp8Gemv(const GemvWeights& w, const __half* act, const EpilogueParams& p, cudaStream_t stream);

// Whether the large-batch FP8 GEMMs (fp8_gemm.h) run on the device PrepareFp8Gemv saw (Hopper).
bool Fp8GemmAvailable();

// Whether a batch of `rows` rows runs the wgmma GEMV or the FP8 GEMMs (their tile store can store a
// top-k call's logits sparsely: EpilogueParams::topk_bound) on the device PrepareFp8Gemv saw.
bool KernelsStoreSparseTopK(int64_t rows);

// Whether the wgmma GEMV (rows <= kGemvMaxRows) or the FP8 GEMMs (above) finish max_ids requested
// token logits per row in their tile store for a batch of `rows` rows (EpilogueParams::
// kernel_token_logits), so that a call asking for token logits but no top-k or full logits
// stores no logits: on Hopper, for at most one id per thread (512) per tile. The mma.sync GEMV
// (other GPUs) stores its logits and leaves the token logits to the epilogue.
bool KernelsFinishTokenLogits(int64_t rows, int64_t max_ids);

}  // namespace lmhead::cuda

#endif  // LMHEAD_KERNELS_CUDA_FP8_GEMV_H_
