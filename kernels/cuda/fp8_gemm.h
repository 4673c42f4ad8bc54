// Large batches on Hopper: lmhead's FP8 GEMMs over the head's FP8 codes, in blocks of 256 vocab
// rows x kGemmTileRows batch rows, with the epilogue's first pass done on the accumulators (per
// batch row and block one partial statistic; the finished logits stored only when a later pass
// reads them), so an argmax / logsumexp call writes no logits.
// - LaunchFp8Gemm, bf16-level activations: one fp16 per activation (LaunchGemvActivations' tiles),
//   the weights decoded to fp16 in registers (the GEMV's FP8 x fp16 product; rms logit error
//   2.1e-4, 3x below cuBLASLt's FP8 high + residual pair, at the tensor work of a BF16 GEMM).
// - LaunchFp8ActGemm, fp8 activations: one E4M3 row per batch row (LaunchQuantizeActivations,
//   split = false) times the codes at the FP8 rate. The tensor cores sum 128 columns at a time,
//   which are then added in fp32 registers (their own accumulation keeps ~14 bits), so the
//   products match an fp32 sum over the same codes to the tolerance cuBLASLt's FP8 GEMM meets.
//
// Shapes are row-major. Kernels know nothing of the service.
#ifndef LMHEAD_KERNELS_CUDA_FP8_GEMM_H_
#define LMHEAD_KERNELS_CUDA_FP8_GEMM_H_

#include <cuda.h>  // CUtensorMap (a plain struct; nothing links libcuda)
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/cuda/kernels.h"

namespace lmhead::cuda {

// The operands' tensor maps, described once (the buffers must outlive them).
struct Fp8GemmOperands {
  CUtensorMap weights{};   // [vocab_pad, hidden_pad] E4M3 codes
  CUtensorMap fp8_rows{};  // [fp8_rows_capacity, hidden_pad] E4M3 activation rows (LaunchFp8ActGemm)
  int64_t vocab_pad = 0;
  int64_t hidden_pad = 0;
  int64_t fp8_rows_capacity = 0;  // 0: no fp8 rows described
  CUtensorMap stats_weights{};     // the codes again, in the boxes of LaunchFp8ActGemm's statistics-only kernel
  int sms = 0;                     // multiprocessors of the device (that kernel's persistent blocks)
};

// Allows both kernels their shared memory on the current device (Hopper, after PrepareFp8Gemv
// says Fp8GemmAvailable). Call once per process.
cudaError_t PrepareFp8Gemms();

// codes: [vocab_pad, hidden_pad] (multiples of 16). fp8_rows (may be null): [fp8_rows_capacity,
// hidden_pad], the buffer LaunchQuantizeActivations writes with ld = hidden_pad; zero it once when
// allocated (the last tile of 128 rows also multiplies the rows past a batch; their results are
// never stored).
cudaError_t DescribeFp8Gemm(const uint8_t* codes, int64_t vocab_pad, int64_t hidden_pad, const uint8_t* fp8_rows,
                            int64_t fp8_rows_capacity, Fp8GemmOperands* out);

// Partial statistics per batch row: one per block of 256 vocab rows (LaunchFp8Gemm, and
// LaunchFp8ActGemm where it stores logits).
int64_t Fp8GemmPartials(int64_t vocab_pad);
// LaunchFp8ActGemm for a call that stores no logits (Fp8ActGemmStoresNoLogits: argmax / logsumexp,
// and token logits finished in the kernel -- p.kernel_token_logits, p.token_ids in device memory)
// runs a warp-specialized kernel whose partial statistics cover 192 vocab rows each: for p,
// Fp8ActGemmPartials per batch row of Fp8ActGemmPartialRows vocab rows; at most Fp8GemmMaxPartials.
bool Fp8ActGemmStoresNoLogits(const EpilogueParams& p);
int64_t Fp8ActGemmPartials(int64_t vocab_pad, const EpilogueParams& p);
int64_t Fp8ActGemmPartialRows(const EpilogueParams& p);
int64_t Fp8GemmMaxPartials(int64_t vocab_pad);

// Both: p.rows rows; the logits FinishLogit(p.act_scales[b] * sum_k W[v, k] * a_b[k]) with
// p.row_scales, p.logit_scale and p.softcap; per batch row and block the partial statistic in
// p.part_* ([rows, Fp8GemmPartials(vocab_pad)]; run the epilogue with ready_partials set to that),
// and the finished logits in p.raw ([rows, p.ld]) only when p.keep_logits or p.max_token_ids > 0.
// The activations come from the previous kernel on `stream` (the weights' first loads start
// before it ends).
// act: LaunchGemvActivations' tiles for p.rows > kGemvMaxRows rows, p.act_scales its inv_scales.
cudaError_t LaunchFp8Gemm(const Fp8GemmOperands& ops, const __half* act, const EpilogueParams& p, cudaStream_t stream);
// The E4M3 rows of ops.fp8_rows (p.rows <= fp8_rows_capacity), p.act_scales their scales.
cudaError_t LaunchFp8ActGemm(const Fp8GemmOperands& ops, const EpilogueParams& p, cudaStream_t stream);

}  // namespace lmhead::cuda

#endif  // LMHEAD_KERNELS_CUDA_FP8_GEMM_H_
