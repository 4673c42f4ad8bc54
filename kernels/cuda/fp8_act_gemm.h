// Large batches with fp8 activations on Hopper: the head's FP8 codes times per-token E4M3
// activations (LaunchQuantizeActivations, split = false) on the tensor cores at the FP8 rate, with
// the epilogue's first pass done on the accumulators as LaunchFp8Gemm does, so no raw products
// are written or read back. The tensor cores sum 128 columns at a time, which are then added in
// fp32 registers (their own accumulation keeps ~14 bits), so the products match an fp32 sum over
// the same codes to the tolerance cuBLASLt's FP8 GEMM meets.
//
// Shapes are row-major. Kernels know nothing of the service.
#ifndef LMHEAD_KERNELS_CUDA_FP8_ACT_GEMM_H_
#define LMHEAD_KERNELS_CUDA_FP8_ACT_GEMM_H_

#include <cuda.h>  // CUtensorMap (a plain struct; nothing links libcuda)
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/cuda/kernels.h"

namespace lmhead::cuda {

// The operands' tensor maps, described once (the buffers must outlive them).
struct Fp8ActGemmOperands {
  CUtensorMap weights{};      // [vocab_pad, hidden_pad] E4M3 codes
  CUtensorMap activations{};  // [act_rows, hidden_pad] E4M3 rows
  int64_t vocab_pad = 0;
  int64_t hidden_pad = 0;
  int64_t act_rows = 0;
};

// Allows the kernel its shared memory on the current device (Hopper). Call once per process.
cudaError_t PrepareFp8ActGemm();

// codes: [vocab_pad, hidden_pad]; act: [act_rows, hidden_pad] (hidden_pad a multiple of 16), the
// buffer LaunchQuantizeActivations writes with ld = hidden_pad. Zero it once when allocated (the
// last tile of 128 rows also multiplies the rows past a batch; their results are never stored).
cudaError_t DescribeFp8ActGemm(const uint8_t* codes, int64_t vocab_pad, int64_t hidden_pad, const uint8_t* act,
                               int64_t act_rows, Fp8ActGemmOperands* out);

// p.rows rows (<= act_rows) of the activations with p.act_scales their per-row scales: the
// logits FinishLogit(p.act_scales[b] * sum_k W[v, k] * q_b[k]) with p.row_scales, p.logit_scale and
// p.softcap; per batch row and block of 256 vocab rows the partial statistic in p.part_* ([rows,
// Fp8GemmPartials(vocab_pad)]; run the epilogue with ready_partials set to that), and the finished
// logits in p.raw ([rows, p.ld]) only when p.keep_logits or p.max_token_ids > 0. The activations
// come from the previous kernel on `stream` (the weights' first loads start before it ends).
cudaError_t LaunchFp8ActGemm(const Fp8ActGemmOperands& ops, const EpilogueParams& p, cudaStream_t stream);

}  // namespace lmhead::cuda

#endif  // LMHEAD_KERNELS_CUDA_FP8_ACT_GEMM_H_
