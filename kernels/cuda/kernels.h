// CUDA kernels of the lmhead backend. Launchers take device pointers, sizes and a stream, and
// return the launch error; they know nothing of the service. Shapes are row-major.
#ifndef LMHEAD_KERNELS_CUDA_KERNELS_H_
#define LMHEAD_KERNELS_CUDA_KERNELS_H_

#include <cuda_bf16.h>
#include <cuda_fp8.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace lmhead::cuda {

// Most top_k the fused selection supports.
inline constexpr int kMaxTopK = 1024;
// Top-k scratch per row: histogram bins, counters and candidate slots.
inline constexpr int kEpilogueBins = 512;
inline constexpr int kCutSlots = 6;
inline constexpr int kMaxCandidates = 4096;

// Quantizes activations to E4M3 with one scale per row. x: [rows, hidden] fp32.
// split = false: out rows [0, rows) hold q = RNE(x / s), s = max|x_row| / 448.
// split = true:  rows [0, rows) hold that "high" part and rows [rows, 2*rows) an E4M3 residual
//                of x - q*s with its own scale, so q_hi*s_hi + q_lo*s_lo carries ~bf16 accuracy.
// out: [n_pad, ld] with ld >= hidden (columns past hidden zeroed); scales: [n_pad]; rows past
// the used ones are zeroed (scale 0).
cudaError_t LaunchQuantizeActivations(const float* x, int64_t rows, int64_t hidden, int64_t ld, bool split,
                                      int64_t n_pad, __nv_fp8_e4m3* out, float* scales,
                                      cudaStream_t stream);
// The same from rows of bf16 bits (each exact in fp32: the codes are those of the fp32 values).
cudaError_t LaunchQuantizeActivations(const uint16_t* x_bf16, int64_t rows, int64_t hidden, int64_t ld, bool split,
                                      int64_t n_pad, __nv_fp8_e4m3* out, float* scales, cudaStream_t stream);

// x: [rows, hidden] fp32 -> out: [n_pad, ld] bf16 (padding zeroed), scales[n_pad] = 1.
cudaError_t LaunchConvertActivationsBf16(const float* x, int64_t rows, int64_t hidden, int64_t ld,
                                         int64_t n_pad, __nv_bfloat16* out, float* scales,
                                         cudaStream_t stream);

struct EpilogueParams {
  // [n_pad, ld] raw dot products: row b (and row rows + b when split) for batch row b. raw and
  // row_scales are 16-byte aligned (the first pass reads four ids at a time).
  float* raw = nullptr;
  int64_t ld = 0;  // row stride of raw (>= vocab, a multiple of 4)
  // [n_pad]; null when `raw` already holds finished logits (rows of processed logits, which may
  // be -inf): then no scales or transforms are applied and nothing is written back.
  const float* act_scales = nullptr;
  const float* row_scales = nullptr;  // [vocab], or null for unscaled weights
  int64_t rows = 0;
  int64_t vocab = 0;
  bool split = false;
  // > 0: raw already holds finished logits and part_* this many partial statistics per row
  // ([rows, ready_partials]; the GEMV computes both), so the first pass is skipped. Partial i
  // covers vocab ids [i * partial_rows, (i + 1) * partial_rows).
  int64_t ready_partials = 0;
  int64_t partial_rows = 0;
  float logit_scale = 1.0f;
  float softcap = 0.0f;  // 0 = none
  // Outputs. With keep_logits the logits overwrite raw rows [0, rows) in place ([rows, ld], first
  // vocab columns: for a top-k, the caller's copy of full logits or token selection); without it
  // raw is only read (the token logits are finished from it), which saves a write of the rows.
  // A top_k > 0 needs keep_logits. The arrays below may be in mapped host memory: the kernels
  // only write them (and read token_ids).
  bool keep_logits = true;
  // [rows] or null: with keep_logits, lmhead's wgmma kernels store the logits only of the rows
  // whose flag is set (those a later step reads: top-k, full logits, sampling); the epilogue still
  // runs every row, and its results for the others are not used. May be in mapped host memory.
  const uint8_t* store_rows = nullptr;
  float* max_logit = nullptr;   // [rows]
  int32_t* argmax = nullptr;    // [rows]
  float* logsumexp = nullptr;   // [rows]
  // Selection: top `top_k` per row (0 = none), and logits of requested ids.
  int top_k = 0;
  int32_t* top_ids = nullptr;    // [rows, top_k]
  float* top_logits = nullptr;   // [rows, top_k]
  const int32_t* token_ids = nullptr;  // [rows, max_token_ids]; -1 = unused slot
  int max_token_ids = 0;
  float* token_logits = nullptr;  // [rows, max_token_ids]
  // The GEMV / FP8 GEMM kernel finishes token_logits itself (KernelsFinishTokenLogits in
  // fp8_gemv.h), so it stores the logits only for keep_logits and the epilogue leaves them.
  bool kernel_token_logits = false;
  // Sparse top-k store, for calls whose stored logits only the top-k reads (TopKFromPartials, no
  // full logits, no sampling, token logits finished by the kernel): the wgmma kernels then store a
  // row's logits of one vocab block (one partial statistic) only when the block's second-largest
  // logit reaches topk_bound's running lower bound of the row's k-th largest logit, and say so in
  // range_stored; a block not stored can hold no top-k logit but its maximum (part_max, part_arg),
  // which the selection takes from there. topk_bound: [rows, top_k + 1] FloatKeys (a published
  // bound, then k slots; see StoreWgmmaTile), zeroed before the kernel (LaunchGemvActivations does
  // it); range_stored: [rows, ready_partials]. Device memory.
  uint32_t* topk_bound = nullptr;
  uint8_t* range_stored = nullptr;
  // Scratch (device memory): [rows, PartialChunks(vocab)] each; top-k: [rows] (a device copy of
  // max_logit, which may live in host memory), [rows, kEpilogueBins], [rows, kCutSlots],
  // [rows, kMaxCandidates].
  float* part_max = nullptr;
  int32_t* part_arg = nullptr;
  float* part_sum = nullptr;
  float* row_max = nullptr;
  int32_t* hist = nullptr;
  int32_t* cut = nullptr;
  uint64_t* candidates = nullptr;
};

// Number of vocab chunks of the first epilogue pass (sizes the part_* scratch).
int64_t PartialChunks(int64_t vocab);

// Allows the selection pass its shared memory on the current device. Call once per process before
// LaunchEpilogue.
cudaError_t PrepareEpilogue();

// Whether LaunchEpilogue takes p's top-k from the kernels' partial statistics (ready_partials with
// partial_rows, and a top_k small against them): reading only the vocab blocks whose maximum
// reaches a cut. Only then may the kernels store sparsely (EpilogueParams::topk_bound).
bool TopKFromPartials(const EpilogueParams& p);

// Logits (in place), argmax, logsumexp, top-k (ties: lower id first) and token logits.
cudaError_t LaunchEpilogue(const EpilogueParams& p, cudaStream_t stream);

}  // namespace lmhead::cuda

#endif  // LMHEAD_KERNELS_CUDA_KERNELS_H_
