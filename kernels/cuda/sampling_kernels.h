// Token selection on the GPU (the contract is kernels/sampling.h; the CPU reference is
// kernels/cpu/row_sampling.cc). Runs on logits already on the device: no logits cross to the host.
#ifndef LMHEAD_KERNELS_CUDA_SAMPLING_KERNELS_H_
#define LMHEAD_KERNELS_CUDA_SAMPLING_KERNELS_H_

#include <cuda_runtime.h>

#include <cstdint>

namespace lmhead::cuda {

// One sampled row's settings, as uploaded to the device. List members index the arenas of
// SamplingArenas (sorted, unique ids, as SamplingSpec holds them).
struct SampleRowParams {
  int32_t src_row = 0;  // row of the slice's logits
  float temperature = 1.0f;
  int32_t top_k = 0;
  float top_p = 1.0f;
  float min_p = 0.0f;
  float repetition = 1.0f;
  float presence = 0.0f;
  float frequency = 0.0f;
  uint64_t seed = 0;
  uint64_t step = 0;
  uint32_t token_offset = 0;  // global id of row 0 (vocab shards): the noise is keyed by global ids
  int32_t has_keep = 0;       // explicit kept set (SamplingSpec::keep_above), replacing the filters
  float keep_above = 0.0f;
  uint32_t keep_tie_max_id = 0;  // global id
  int32_t processed_logprobs = 0;
  int32_t bias_offset = 0, bias_count = 0;        // ids[] and bias_values[]
  int32_t allowed_offset = 0, allowed_count = 0;  // ids[]
  int32_t banned_offset = 0, banned_count = 0;    // ids[]
  int32_t previous_offset = 0, previous_count = 0;  // ids[] and counts[]
};

struct SamplingArenas {
  const SampleRowParams* rows = nullptr;
  const uint32_t* ids = nullptr;
  const float* bias_values = nullptr;  // parallel to ids (bias entries only)
  const uint32_t* counts = nullptr;    // parallel to ids (previous-token entries only)
};

// processed[j, v] = the processed logit (steps 1-4 of sampling.h) of raw[rows[first + j].src_row, v]
// for j < count, v < vocab. raw and processed are [.., ld] row-major.
cudaError_t LaunchProcessLogits(const float* raw, int64_t ld, int64_t vocab, SamplingArenas arenas, int first,
                                int count, float* processed, cudaStream_t stream);

struct SelectTokenParams {
  SamplingArenas arenas;
  int first = 0;  // rows[first + j] for processed row j
  int count = 0;
  const float* processed = nullptr;  // [count, ld]
  int64_t ld = 0;
  int64_t vocab = 0;
  // The processed rows' statistics and top lists (from the epilogue run on `processed`).
  const float* proc_max = nullptr;     // [count]
  const int32_t* proc_argmax = nullptr;
  const float* proc_lse = nullptr;
  const int32_t* proc_top_ids = nullptr;  // [count, top_stride], descending
  int top_stride = 0;
  // Raw logits and their logsumexp, indexed by src_row (for raw-mode logprobs).
  const float* raw = nullptr;
  const float* raw_lse = nullptr;
  // Whether some row needs the top-p threshold over its whole vocabulary (top_p < 1, top_k = 0,
  // not greedy): the host knows, and skips those passes otherwise.
  bool any_dense_top_p = false;
  // Device scratch of SelectScratchBytes(count, vocab) bytes.
  void* scratch = nullptr;
  // Outputs.
  int32_t* sampled_id = nullptr;     // [count]
  float* sampled_logprob = nullptr;  // [count]
  float* sampled_score = nullptr;    // [count]: processed logit + noise of the winner
};

size_t SelectScratchBytes(int count, int64_t vocab);

// Selects each row's token (greedy, or top-k / min-p / top-p filtered Gumbel-max). Every pass over
// the vocabulary is spread over many blocks per row; reductions are deterministic (integer mass
// histograms, fixed-order pick reduction), so a (seed, step) gives the same token on every run.
cudaError_t LaunchSelectTokens(const SelectTokenParams& p, cudaStream_t stream);

}  // namespace lmhead::cuda

#endif  // LMHEAD_KERNELS_CUDA_SAMPLING_KERNELS_H_
