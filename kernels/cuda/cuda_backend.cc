#include "kernels/cuda/cuda_backend.h"

#include <cuda_bf16.h>
#include <cuda_fp8.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <deque>
#include <map>
#include <memory>
#include <random>
#include <tuple>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "kernels/cuda/cuda_util.h"
#include "kernels/cuda/fp8_gemm.h"
#include "kernels/cuda/fp8_gemv.h"
#include "kernels/cuda/host_copy.h"
#include "kernels/cuda/kernels.h"
#include "kernels/cuda/lt_gemm.h"
#include "kernels/cuda/sampling_kernels.h"
#include "kernels/cuda/slice_plan.h"
#include "kernels/cuda/weight_quant.h"
#include "kernels/status_macros.h"

namespace lmhead::cuda {
namespace {

int64_t RoundUp(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

static_assert(kCudaGemvMaxRows == kGemvMaxRows, "the module API's default must match the GEMV's limit");
static_assert(kCudaGemvExactRows == kGemvExactRows, "the module API must state the GEMV's precision switch");

class CudaBackend final : public Backend {
 public:
  const char* Name() const override { return "cuda"; }
  int64_t vocab() const override { return vocab_; }
  int64_t hidden() const override { return hidden_; }
  uint32_t MaxTopK() const override { return kMaxTopK; }
  int64_t ResidentWeightBytes() const override {
    return static_cast<int64_t>(weights_.bytes() + row_scales_.bytes());
  }
  absl::Status ComputeLogits(const LogitsBatch& batch, std::vector<RowOutput>* out) override;
  // Batches of one slice may be assembled in x_host_[0] (pinned); larger ones are staged slice by
  // slice through the slots' x_host_ buffers (see ComputeLogits).
  float* InputBuffer(int64_t rows) override { return rows <= slice_rows_ ? x_host_[0].get() : nullptr; }
  // bf16 rows are read by the kernels that convert rows themselves: the GEMV and the FP8 GEMMs'.
  uint16_t* Bf16InputBuffer(int64_t rows) override {
    const bool kernels = rows <= gemv_max_rows_ || (fp8_gemms_ && rows > kGemvMaxRows);
    return rows <= slice_rows_ && kernels ? reinterpret_cast<uint16_t*>(x_host_[0].get()) : nullptr;
  }
  // Scaled fp16 rows where the kernels multiply one fp16 per activation (StagesHalfRows).
  HalfRows HalfInputBuffer(int64_t rows) override {
    return rows <= slice_rows_ && StagesHalfRows(rows) ? HalfRowsIn(x_host_[0].get(), rows, hidden_) : HalfRows{};
  }
  std::string TakeStageTimings() override;
  std::string Tuning() const override { return tuning_; }
  absl::StatusOr<HeadWeights> ExportWeights() const override;
  bool DeviceMemory(int64_t* used, int64_t* total) const override {
    size_t free_bytes = 0, total_bytes = 0;
    if (cudaSetDevice(device_) != cudaSuccess || cudaMemGetInfo(&free_bytes, &total_bytes) != cudaSuccess) return false;
    *used = static_cast<int64_t>(total_bytes - free_bytes);
    *total = static_cast<int64_t>(total_bytes);
    return true;
  }
  int64_t WorkspaceBytes() const override {
    return static_cast<int64_t>(x_dev_[0].bytes() + x_dev_[1].bytes() + act_.bytes() + act_scales_.bytes() +
                                gemv_act_.bytes() + gemv_scales_.bytes() + raw_.bytes() +
                                part_max_.bytes() + part_sum_.bytes() + part_arg_.bytes() + topk_hist_.bytes() +
                                topk_bound_.bytes() + range_stored_.bytes() + token_ids_dev_.bytes() +
                                topk_cut_.bytes() + topk_candidates_.bytes() + d_results_.bytes() +
                                processed_.bytes() + select_scratch_.bytes() + d_sampling_arena_.bytes() +
                                d_sample_results_.bytes() + (gemm_ != nullptr ? gemm_->workspace_bytes() : 0));
  }

  absl::Status Init(const CudaModuleArgs& args);
  ~CudaBackend() override {
    ClearGraphs();
    for (cudaEvent_t e : events_) cudaEventDestroy(e);
  }

 private:
  // Rows of the current slice that sample (slice indices) and the top-k width selected on their
  // processed logits.
  struct SamplingPlan {
    std::vector<int64_t> rows;
    int top_k = 0;
  };
  // The host side of one slice in flight. kSlots of them: the host stages a slice's rows and
  // reads an older slice's results while the GPU computes the ones between, so that the GPU
  // always has the next slice queued and the row copies go up back to back. A slot is reused only
  // after its slice was finished. Graph slices (single-slice batches) always use slot 0, whose
  // pointers their graphs hold.
  static constexpr int kSlots = 3;
  struct Slot {
    PinnedBuffer<uint8_t> results;      // ResultLayout; mapped: graph slices' epilogue writes it
    PinnedBuffer<int32_t> token_ids;    // [slice rows, token_capacity_]: to token_ids_dev_ or read in place
    PinnedBuffer<uint8_t> logit_rows;   // [slice_rows]: EpilogueParams::store_rows, read in place
    PinnedBuffer<uint8_t> sampling_arena, sample_results;  // see EnqueueSampling
    Event done;                         // recorded after the slice's last work
    int64_t start = 0, n = 0;           // the batch rows it holds
    bool graph = false;
    SamplingPlan sampling;
  };
  // What one call asks of every slice.
  struct CallShape {
    int top_k = 0;
    int64_t max_ids = 0;
    bool keep_logits = false;  // a later step reads the finished logits (EpilogueParams)
    bool rows_without_logits = false;  // some rows read no logits (their logits need no store)
    bool full_or_sampled = false;      // some rows want their full logits or sample a token

    // Every field, for the CUDA graph key (a call shape's graph differs in any of them).
    auto Fields() const {
      return std::make_tuple(top_k, max_ids, keep_logits, rows_without_logits, full_or_sampled);
    }
    bool operator<(const CallShape& other) const { return Fields() < other.Fields(); }
  };

  // The device buffers a slice's work goes through (Enqueue): the backend's own (own_), or views
  // into raw_ for wide slices (wide_).
  struct SliceBuffers {
    float* rows[2] = {};            // a slice's rows as given, for two consecutive slices (x_dev_)
    uint8_t* act = nullptr;         // cuBLASLt's and LaunchFp8ActGemm's activations (act_)
    float* act_scales = nullptr;
    __half* planes = nullptr;       // the GEMV's and LaunchFp8Gemm's activations (gemv_act_)
    float* plane_scales = nullptr;  // (gemv_scales_)
    float* part_max = nullptr;      // the kernels' partial statistics (part_max_, ...)
    float* part_sum = nullptr;
    int32_t* part_arg = nullptr;
    const Fp8GemmOperands* ops = nullptr;  // the FP8 GEMMs' tensor maps (over act for fp8 activations)
  };

  // How a slice's rows reach Enqueue: fp32, bf16 bits (Bf16InputBuffer; one slice) or scaled fp16
  // (HalfInputBuffer, or fp32 rows that the backend stages for a slice that TakesHalfRows; values
  // then 1 / scales, HalfRowsIn).
  enum class RowFormat { kFp32, kBf16, kHalf };
  size_t RowBytes(RowFormat format, int64_t n) const {
    return format == RowFormat::kHalf   ? HalfRowsBytes(n, hidden_)
           : format == RowFormat::kBf16 ? n * hidden_ * sizeof(uint16_t)
                                        : n * hidden_ * sizeof(float);
  }
  // Where a valid batch's rows start, and their format (exactly one row pointer is set).
  static std::pair<const void*, RowFormat> GivenRows(const LogitsBatch& batch) {
    if (batch.hidden_bf16 != nullptr) return {batch.hidden_bf16, RowFormat::kBf16};
    if (batch.hidden_half != nullptr) return {batch.hidden_half, RowFormat::kHalf};
    return {batch.hidden, RowFormat::kFp32};
  }
  // Whether a slice of n rows multiplies one fp16 per activation (the GEMV above kGemvExactRows
  // rows, the FP8 x fp16 GEMM): scaled fp16 rows give it the same values as fp32 ones.
  bool TakesHalfRows(int64_t n) const {
    return n > kGemvExactRows && (n <= gemv_max_rows_ || (fp8_gemms_ && split_ && n > kGemvMaxRows));
  }
  // Whether fp32 rows of such a slice are made fp16 on the host: where the host converts them with
  // vector instructions (HalfRowsAreFast), else they go as they are.
  bool StagesHalfRows(int64_t n) const { return TakesHalfRows(n) && HalfRowsAreFast(); }

  // Whether a later step reads the row's finished logits (its top-k, full logits or sampling).
  static bool ReadsLogits(const RowSpec& spec) {
    return spec.top_k > 0 || spec.want_logits || spec.sampling != nullptr;
  }

  absl::Status EnsureTokenCapacity(int64_t max_ids);
  // Quantizes (or copies) the source into the device weights, chunk by chunk.
  absl::Status UploadWeights(const HeadSource& src, const QuantizeOptions& q);
  // gemv_weights_.blocks_per_sm_16 and _32: `requested` (1 or 2), or 0: each timed on random rows.
  absl::Status ChooseGemvBlocksPerSm(int requested, std::mt19937& rng);
  // Enqueues rows [start, start + n) of the batch into slots_[slot] and returns without waiting:
  // stages the rows in pinned memory when needed, then the device work (a graph, or Enqueue), the
  // token selection, the copies of requested full logits, and the slot's done event.
  // wide: the slice uses wide_ (WideCall).
  absl::Status EnqueueSlice(const LogitsBatch& batch, int64_t start, int64_t n, const CallShape& call,
                            bool graph, bool pipelined, bool wide, int slot, int rows_buffer,
                            std::vector<RowOutput>* out);
  // Waits for the slice in `slot` and moves its results into `out`.
  absl::Status FinishSlice(const LogitsBatch& batch, const CallShape& call, Slot& slot,
                           std::vector<RowOutput>* out);
  // Enqueues one slice's device work through buffers b: rows from x_src (host) into
  // b.rows[rows_buffer] (on the copy stream when the batch has several slices), then activations,
  // GEMM, epilogue (reading the slot's token ids in place) and the packed results' copy back into
  // the slot. Capturable. graph: the slice is being captured (x_src is x_host_[0]; no events).
  // rows: x_src's format.
  absl::Status Enqueue(const SliceBuffers& b, const void* x_src, RowFormat rows, int64_t n, const CallShape& call,
                       bool graph, bool pipelined, int slot, int rows_buffer);
  // The activations of cuBLASLt and of LaunchFp8ActGemm for n rows of x (device memory; bf16 bits
  // when bf16_rows, only for FP8 heads) into b.act / b.act_scales ([n_pad] rows): E4M3 (high +
  // residual rows when split) for FP8 heads, bf16 otherwise.
  cudaError_t LaunchGemmActivations(const SliceBuffers& b, const void* x, bool bf16_rows, int64_t n, int64_t n_pad,
                                    cudaStream_t s) {
    if (fp8_) {
      auto* q = reinterpret_cast<__nv_fp8_e4m3*>(b.act);
      return bf16_rows ? LaunchQuantizeActivations(static_cast<const uint16_t*>(x), n, hidden_, hidden_pad_, split_,
                                                   n_pad, q, b.act_scales, s)
                       : LaunchQuantizeActivations(static_cast<const float*>(x), n, hidden_, hidden_pad_, split_,
                                                   n_pad, q, b.act_scales, s);
    }
    if (bf16_rows) return cudaErrorInvalidValue;  // (Bf16InputBuffer hands out no buffer for these)
    return LaunchConvertActivationsBf16(static_cast<const float*>(x), n, hidden_, hidden_pad_, n_pad,
                                        reinterpret_cast<__nv_bfloat16*>(b.act), b.act_scales, s);
  }
  // Where a slice's epilogue leaves its results (ResultLayout): graph slices write them straight
  // into slot 0's pinned results (mapped: a few bytes per row and the top-k, no copy node); the
  // others into d_results_, copied back by the slice.
  uint8_t* ResultsFor(bool graph) const { return graph ? slots_[0].results.get() : d_results_.get(); }
  // Enqueues token selection for the slice's sampling rows after its epilogue: processing, the
  // epilogue on the processed rows, selection, and the results' copy back into the slot. Not
  // capturable (the settings change per call); runs on the stream after the slice's graph.
  // `results`: where the slice's epilogue left its results (ResultsFor).
  absl::Status EnqueueSampling(const LogitsBatch& batch, const CallShape& call, const uint8_t* results,
                               Slot& slot);
  // After the slot's slice finished: moves the sampling results into `out`.
  absl::Status ReadSampling(const LogitsBatch& batch, int64_t max_ids, const Slot& slot,
                            std::vector<RowOutput>* out);
  // Points the epilogue's scratch arrays at b's partial statistics and the backend's other
  // buffers (sized for slice_rows_ rows).
  void AttachScratch(const SliceBuffers& b, EpilogueParams* p) const {
    p->part_max = b.part_max;
    p->part_arg = b.part_arg;
    p->part_sum = b.part_sum;
    p->row_max = row_max_.get();
    p->hist = topk_hist_.get();
    p->cut = topk_cut_.get();
    p->candidates = topk_candidates_.get();
  }
  // Slices of several are cut in multiples of this many rows (whole tiles for the FP8 GEMMs).
  int64_t SliceGranule() const { return fp8_gemms_ ? kGemmTileRows : 16; }
  // Wide slices. A batch of several slices whose FP8 GEMMs store no logits (argmax / logsumexp and
  // the token logits the kernels finish: WideCall) leaves raw_ unused, so its slices may exceed
  // slice_rows_, up to wide_rows_ rows (WideSliceSizes), with their buffers carved out of raw_
  // (wide_): fewer GEMM launches, each with its own pipeline fill and partial last wave (on an
  // H100, 131072x5120, the FP8 x FP8 statistics kernel took 1.31 us per row in slices of 384 rows,
  // 1.22-1.25 in slices of 1024-2816).
  static constexpr int64_t kMaxWideRows = 1536;
  bool WideCall(const LogitsBatch& batch, const CallShape& call) const {
    return wide_rows_ > 0 && batch.rows > slice_rows_ && batch.rows >= MinWideRows(kGemmTileRows) &&
           batch.hidden != nullptr && !call.keep_logits &&
           (call.max_ids == 0 || KernelsFinishTokenLogits(kGemvMaxRows + 1, call.max_ids));
  }
  // How a wide slice's rows reach the device: fp32 rows as given, or as scaled fp16 (StagesHalfRows).
  RowFormat WideRowFormat() const { return StagesHalfRows(kGemvMaxRows + 1) ? RowFormat::kHalf : RowFormat::kFp32; }
  // Points wide_ at the buffers of `rows` rows laid out from `base` (nullptr: only measures);
  // returns their bytes.
  size_t CarveWide(int64_t rows, uint8_t* base);
  void ClearGraphs() {
    for (auto& [key, exec] : graphs_) cudaGraphExecDestroy(exec);
    graphs_.clear();
  }

  int device_ = 0;
  bool fp8_ = true;         // FP8 weights (else BF16)
  bool split_ = true;       // FP8 activations as high + residual rows (cuBLASLt slices)
  // Slices above kGemvMaxRows rows run lmhead's FP8 GEMMs instead of cuBLASLt: LaunchFp8Gemm
  // (split_: bf16-level activations) or LaunchFp8ActGemm (fp8 activations).
  bool fp8_gemms_ = false;
  int64_t gemv_max_rows_ = 0;  // slices up to this many rows run the FP8 GEMV
  ScaleMode scale_mode_ = ScaleMode::kPerRow;
  LogitTransform transform_;
  int64_t vocab_ = 0, hidden_ = 0, vocab_pad_ = 0, hidden_pad_ = 0;
  int64_t slice_rows_ = 0;  // rows computed per GEMM

  Stream stream_;
  Stream copy_stream_;  // rows up to the device for batches of several slices, under the compute
  std::unique_ptr<CopyPool> copy_pool_;  // stages rows into pinned memory
  DeviceBuffer<uint8_t> weights_;   // [vocab_pad, hidden_pad] E4M3 codes or bf16
  DeviceBuffer<float> row_scales_;  // [vocab_pad]; empty for bf16
  std::unique_ptr<LtGemm> gemm_;  // null when the GEMV and the FP8 GEMM take every slice

  // Device rows of two consecutive slices: [slice, hidden] each. rows_up_[k]: x_dev_[k] holds its
  // slice's rows (copy stream); rows_read_[k]: that slice's activation kernel has read them.
  DeviceBuffer<float> x_dev_[2];
  Event rows_up_[2], rows_read_[2];
  // cuBLASLt's and LaunchFp8ActGemm's activations: [max(n_pad, slice_rows_), hidden_pad] E4M3 or bf16.
  DeviceBuffer<uint8_t> act_;
  DeviceBuffer<float> act_scales_;
  GemvWeights gemv_weights_;          // weights_ as the GEMV reads them
  std::string tuning_;                // Tuning(): the GEMV's blocks per SM and why
  Fp8GemmOperands gemm_ops_;          // weights_ (and act_ with fp8 activations) as the FP8 GEMMs read them
  // The GEMV's and the FP8 GEMM's activations: [max(kGemvPlaneRows, slice_rows_),
  // GemvActivationStride] planes, and 1 / activation scale per row.
  DeviceBuffer<__half> gemv_act_;
  DeviceBuffer<float> gemv_scales_;
  DeviceBuffer<float> raw_;           // [n_pad, vocab_pad]
  DeviceBuffer<float> part_max_, part_sum_;
  DeviceBuffer<int32_t> part_arg_;
  DeviceBuffer<float> row_max_;
  DeviceBuffer<int32_t> topk_hist_, topk_cut_;
  DeviceBuffer<uint32_t> topk_bound_;   // EpilogueParams::topk_bound
  DeviceBuffer<uint8_t> range_stored_;  // EpilogueParams::range_stored
  DeviceBuffer<int32_t> token_ids_dev_;  // [slice rows, token_capacity_]: a slot's ids, as the FP8 kernels read them
  DeviceBuffer<uint64_t> topk_candidates_;
  SliceBuffers own_;  // the buffers above
  SliceBuffers wide_;  // in raw_, for wide slices of up to wide_rows_ rows
  Fp8GemmOperands wide_ops_;       // wide_.act as LaunchFp8ActGemm reads it (fp8 activations)
  int64_t wide_rows_ = 0;          // 0: no wide slices
  bool wide_planes_dirty_ = true;  // wide_.planes need zeroing: raw_ was written since (padding columns)
  // Per-slice results, packed so that one copy brings them back (see ResultLayout). Device buffers
  // are used in stream order; the host side is per slot.
  DeviceBuffer<uint8_t> d_results_;
  int64_t token_capacity_ = 0;  // ids per row the token buffers hold
  Slot slots_[kSlots];

  // Token selection: processed logits of up to kSampleGroupRows rows at a time; the settings
  // (SampleRowParams, id lists, gathered token ids) go up in one copy through the arena.
  static constexpr int kSampleGroupRows = 16;
  DeviceBuffer<float> processed_;  // [kSampleGroupRows, vocab_pad]
  DeviceBuffer<uint8_t> select_scratch_;  // SelectScratchBytes(kSampleGroupRows, vocab)
  DeviceBuffer<uint8_t> d_sampling_arena_;
  DeviceBuffer<uint8_t> d_sample_results_;  // SampleLayout

  // Single-slice batches of few rows run as CUDA graphs, one per call shape (n and CallShape),
  // captured on first use; their input rows are read from x_host_[0] (pinned; copied
  // there unless the caller assembled them there through InputBuffer). Launch gaps between the
  // short kernels are what a graph removes (~8 us at B = 1, measured on an H100). GEMV batches
  // always run so; others of up to kGraphRows rows only when their rows are already in
  // x_host_[0]: copying 1.3 MB of rows (B = 64, hidden 5120) into pinned memory first costs more
  // than the driver's pipelined copy from pageable memory (measured on an H100 machine: 0.49
  // against 0.42 ms end to end).
  static constexpr int64_t kGraphRows = 64;
  bool UseGraph(int64_t n, const void* x_src) const {
    return n <= gemv_max_rows_ || (n <= kGraphRows && x_src == x_host_[0].get());
  }
  static constexpr size_t kMaxGraphs = 256;
  std::map<std::tuple<int64_t, RowFormat, CallShape>, cudaGraphExec_t> graphs_;  // key: (rows, format, call)

  // Batches of several slices are staged slice by slice in pinned memory (x_host_[slot],
  // CopyPool) and go up on the copy stream while the GPU computes the slices before (an async
  // copy from pageable memory would block the host). A one-slice batch has nothing to overlap:
  // its rows go up on the compute stream straight from the caller's memory (staging 4-5 MB first
  // measured 0.1-0.25 ms slower on an H100 machine).
  // [max(slice_rows_, wide_rows_), hidden] each (or their RowBytes), one per slot.
  PinnedBuffer<float> x_host_[kSlots];

  // Byte offsets of each result array for n rows, top_k and max_ids; `end` = bytes used.
  struct ResultLayout {
    size_t max, lse, arg, top_ids, top_logits, token_logits, end;
    ResultLayout(int64_t n, int64_t top_k, int64_t max_ids) {
      max = 0;
      lse = max + n * 4;
      arg = lse + n * 4;
      top_ids = arg + n * 4;
      top_logits = top_ids + n * top_k * 4;
      token_logits = top_logits + n * top_k * 4;
      end = token_logits + n * max_ids * 4;
    }
  };

  // The sampled rows' results: the processed epilogue's arrays, then sampled ids and logprobs.
  struct SampleLayout {
    ResultLayout base;
    size_t sampled_id, sampled_logprob, sampled_score, end;
    SampleLayout(int64_t n, int64_t top_k, int64_t max_ids) : base(n, top_k, max_ids) {
      sampled_id = base.end;
      sampled_logprob = sampled_id + n * 4;
      sampled_score = sampled_logprob + n * 4;
      end = sampled_score + n * 4;
    }
  };

  // Stage profiling (profile_stages): events between stages and their summed times.
  static constexpr int kStages = 6;  // h2d, activations, gemm, epilogue, d2h, whole graph
  std::vector<cudaEvent_t> events_;
  double stage_ms_[kStages] = {};
  int64_t profiled_slices_ = 0;
  // Records stage event i on the stream that runs the stage (no-op unless profiling).
  void Mark(int i, cudaStream_t on) {
    if (!events_.empty()) cudaEventRecord(events_[i], on);
  }
};

std::string CudaBackend::TakeStageTimings() {
  if (events_.empty() || profiled_slices_ == 0) return "";
  const char* names[kStages] = {"h2d", "activations", "gemm", "epilogue", "d2h", "graph"};
  std::string out = absl::StrCat("slices=", profiled_slices_);
  for (int i = 0; i < kStages; ++i) {
    if (stage_ms_[i] == 0) continue;
    absl::StrAppend(&out, " ", names[i], "=", stage_ms_[i] / profiled_slices_, "ms");
    stage_ms_[i] = 0;
  }
  profiled_slices_ = 0;
  return out;
}

absl::Status CudaBackend::Init(const CudaModuleArgs& args) {
  const HeadSource& src = *args.source;
  device_ = args.device;
  transform_ = args.transform;
  fp8_ = args.quantize.format == WeightFormat::kFp8E4m3;
  split_ = fp8_ && !args.fp8_activations;
  if (args.gemv_max_rows < 0 || args.gemv_max_rows > kGemvMaxRows) {
    return absl::InvalidArgumentError(absl::StrCat("gemv_max_rows = ", args.gemv_max_rows, " must be in [0, ", kGemvMaxRows, "]"));
  }
  if (args.gemv_blocks_per_sm < 0 || args.gemv_blocks_per_sm > 2) {
    return absl::InvalidArgumentError(
        absl::StrCat("gemv_blocks_per_sm = ", args.gemv_blocks_per_sm, " must be 0 (timed), 1 or 2"));
  }
  gemv_max_rows_ = fp8_ ? args.gemv_max_rows : 0;
  vocab_ = src.rows;
  hidden_ = src.cols;
  vocab_pad_ = RoundUp(vocab_, 16);
  hidden_pad_ = RoundUp(hidden_, 16);
  int count = 0;
  CUDA_RETURN_IF_ERROR(cudaGetDeviceCount(&count));
  if (device_ < 0 || device_ >= count) {
    return absl::InvalidArgumentError(absl::StrCat("--device=", device_, " but ", count, " CUDA device(s) are visible"));
  }
  CUDA_RETURN_IF_ERROR(cudaSetDevice(device_));
  copy_pool_ = std::make_unique<CopyPool>(std::clamp(args.host_threads, 1, 8));
  RETURN_IF_ERROR(stream_.Create());
  RETURN_IF_ERROR(copy_stream_.Create());
  for (Event& e : rows_up_) RETURN_IF_ERROR(e.Create());
  for (Event& e : rows_read_) RETURN_IF_ERROR(e.Create());
  for (Slot& slot : slots_) RETURN_IF_ERROR(slot.done.Create());
  CUDA_RETURN_IF_ERROR(PrepareEpilogue());
  if (args.profile_stages) {
    events_.resize(kStages + 1);
    for (cudaEvent_t& e : events_) CUDA_RETURN_IF_ERROR(cudaEventCreate(&e));
  }

  RETURN_IF_ERROR(UploadWeights(src, args.quantize));

  if (fp8_) CUDA_RETURN_IF_ERROR(PrepareFp8Gemv());
  fp8_gemms_ = fp8_ && args.fp8_gemm && Fp8GemmAvailable();
  if (fp8_gemms_) CUDA_RETURN_IF_ERROR(PrepareFp8Gemms());
  // Rows per slice: as many as the output workspace holds (GEMM rows = 2 per row when split; the
  // FP8 GEMMs' slices are whole tiles of kGemmTileRows).
  const int64_t per_row = vocab_pad_ * sizeof(float) * (split_ && !fp8_gemms_ ? 2 : 1);
  const int64_t granule = SliceGranule();
  slice_rows_ = std::clamp<int64_t>(args.output_workspace_bytes / per_row / granule * granule, granule, 4096);
  gemv_max_rows_ = std::min(gemv_max_rows_, slice_rows_);
  if (gemv_max_rows_ > 0) gemv_max_rows_ = std::min(gemv_max_rows_, GemvMaxRows());
  // Rows a cuBLASLt slice may have: those the GEMV and the FP8 GEMM do not take (with both at their
  // full range, none: no cuBLASLt GEMM, plans or workspace then), and its padded GEMM rows.
  const int64_t lt_rows = !fp8_gemms_                        ? slice_rows_
                          : gemv_max_rows_ < kGemvMaxRows ? std::min(slice_rows_, kGemvMaxRows)
                                                          : 0;
  const int64_t n_pad = lt_rows > 0 ? LtGemm::PadRows(split_ ? 2 * lt_rows : lt_rows) : 0;
  if (lt_rows > 0) {
    ASSIGN_OR_RETURN(gemm_, LtGemm::Create(fp8_ ? CUDA_R_8F_E4M3 : CUDA_R_16BF, vocab_pad_, hidden_pad_, 32u << 20));
  }
  const bool fp8_rows_gemm = fp8_gemms_ && !split_;  // LaunchFp8ActGemm reads act_
  const int64_t act_rows = std::max(n_pad, fp8_rows_gemm ? slice_rows_ : 0);
  if (act_rows > 0) {
    RETURN_IF_ERROR(act_.Allocate(act_rows * hidden_pad_ * (fp8_ ? 1 : 2)));
    RETURN_IF_ERROR(act_scales_.Allocate(act_rows));
  }
  if (fp8_rows_gemm) {  // rows past a slice's in its last tile are multiplied too: keep them finite
    CUDA_RETURN_IF_ERROR(cudaMemset(act_.get(), 0, act_.bytes()));
  }
  if (fp8_gemms_) {
    CUDA_RETURN_IF_ERROR(DescribeFp8Gemm(weights_.get(), vocab_pad_, hidden_pad_, fp8_rows_gemm ? act_.get() : nullptr,
                                         act_rows, &gemm_ops_));
  }
  const int64_t chunks = PartialChunks(vocab_);
  // Room for a slice's rows in any RowFormat.
  const int64_t row_floats = (std::max(RowBytes(RowFormat::kFp32, slice_rows_), RowBytes(RowFormat::kHalf, slice_rows_)) +
                              sizeof(float) - 1) / sizeof(float);
  for (DeviceBuffer<float>& x : x_dev_) RETURN_IF_ERROR(x.Allocate(row_floats));
  for (PinnedBuffer<float>& stage : x_host_) RETURN_IF_ERROR(stage.Allocate(row_floats));
  // The GEMV reads its rows from pinned memory: x_host_[0] in a graph (one-slice batches), or
  // the slot's staging buffer (several slices, which are always staged).
  static_assert(kGemvMaxRows <= kGraphRows, "one-slice GEMV batches are graph slices");
  const int64_t gemm_plane_rows = fp8_gemms_ && split_ ? slice_rows_ : 0;  // LaunchFp8Gemm reads gemv_act_
  if (gemv_max_rows_ > 0 || gemm_plane_rows > 0) {
    CUDA_RETURN_IF_ERROR(DescribeGemvWeights(weights_.get(), vocab_pad_, hidden_pad_, &gemv_weights_));
    const int64_t plane_rows = std::max(kGemvPlaneRows, gemm_plane_rows);
    RETURN_IF_ERROR(gemv_act_.Allocate(plane_rows * GemvActivationStride(hidden_pad_)));
    // Padding columns stay zero; rows past a batch's stay finite (the kernels read them all).
    CUDA_RETURN_IF_ERROR(cudaMemset(gemv_act_.get(), 0, gemv_act_.bytes()));
    RETURN_IF_ERROR(gemv_scales_.Allocate(std::max(gemv_max_rows_, gemm_plane_rows)));
  }
  RETURN_IF_ERROR(raw_.Allocate(std::max(n_pad, slice_rows_) * vocab_pad_));
  // Partial statistics: the epilogue's first pass, or the GEMV's or the FP8 GEMM's per-block ones.
  const int64_t partials = std::max({slice_rows_ * chunks, gemv_max_rows_ * GemvMaxPartials(vocab_pad_),
                                     fp8_gemms_ ? slice_rows_ * Fp8GemmMaxPartials(vocab_pad_) : 0});
  RETURN_IF_ERROR(part_max_.Allocate(partials));
  RETURN_IF_ERROR(part_sum_.Allocate(partials));
  RETURN_IF_ERROR(part_arg_.Allocate(partials));
  // [rows, top_k + 1]: a sparse top-k's k is at most its partials.
  RETURN_IF_ERROR(topk_bound_.Allocate(partials + slice_rows_));
  RETURN_IF_ERROR(range_stored_.Allocate(partials));
  RETURN_IF_ERROR(topk_hist_.Allocate(slice_rows_ * kEpilogueBins));
  RETURN_IF_ERROR(row_max_.Allocate(slice_rows_));
  RETURN_IF_ERROR(topk_cut_.Allocate(slice_rows_ * kCutSlots));
  RETURN_IF_ERROR(topk_candidates_.Allocate(slice_rows_ * kMaxCandidates));
  own_ = SliceBuffers{{x_dev_[0].get(), x_dev_[1].get()}, act_.get(), act_scales_.get(), gemv_act_.get(),
                      gemv_scales_.get(), part_max_.get(), part_sum_.get(), part_arg_.get(), &gemm_ops_};
  // Wide slices: as many rows (whole tiles) as raw_ holds the buffers of.
  for (int64_t n = kMaxWideRows; fp8_gemms_ && n > slice_rows_ && wide_rows_ == 0; n -= kGemmTileRows) {
    if (CarveWide(n, nullptr) <= raw_.bytes()) wide_rows_ = n;
  }
  if (wide_rows_ > 0) {
    CarveWide(wide_rows_, reinterpret_cast<uint8_t*>(raw_.get()));
    wide_.ops = &gemm_ops_;
    if (!split_) {
      CUDA_RETURN_IF_ERROR(DescribeFp8Gemm(weights_.get(), vocab_pad_, hidden_pad_, wide_.act, wide_rows_, &wide_ops_));
      wide_.ops = &wide_ops_;
    }
    const size_t wide_floats = (RowBytes(WideRowFormat(), wide_rows_) + sizeof(float) - 1) / sizeof(float);
    for (PinnedBuffer<float>& stage : x_host_) {
      if (stage.count() < wide_floats) RETURN_IF_ERROR(stage.Allocate(wide_floats));
    }
  }
  RETURN_IF_ERROR(EnsureTokenCapacity(16));
  for (Slot& slot : slots_) RETURN_IF_ERROR(slot.logit_rows.Allocate(slice_rows_));
  RETURN_IF_ERROR(processed_.Allocate(kSampleGroupRows * vocab_pad_));
  RETURN_IF_ERROR(select_scratch_.Allocate(SelectScratchBytes(kSampleGroupRows, vocab_)));

  // Plans: cuBLASLt's candidates for every padded GEMM size a slice can have, timed now rather
  // than on the first call of each size (~20-50 ms each), on the activations of a full slice of
  // random rows (candidates timed on zeros ran 0.06-0.1 ms slower on real rows at B = 64-128,
  // measured on an H100); then a warm-up of the small-batch paths (their graphs).
  std::mt19937 rng(1);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  if (lt_rows > 0) {
    std::vector<float> x(lt_rows * hidden_);
    for (float& v : x) v = normal(rng);
    CUDA_RETURN_IF_ERROR(cudaMemcpy(x_dev_[0].get(), x.data(), x.size() * sizeof(float), cudaMemcpyHostToDevice));
    CUDA_RETURN_IF_ERROR(LaunchGemmActivations(own_, x_dev_[0].get(), false, lt_rows, n_pad, stream_.get()));
    for (int64_t size : LtGemm::PaddedSizes(n_pad)) {
      RETURN_IF_ERROR(gemm_->Prepare(weights_.get(), act_.get(), size, raw_.get(), stream_.get()));
    }
  }
  RETURN_IF_ERROR(ChooseGemvBlocksPerSm(args.gemv_blocks_per_sm, rng));
  for (int64_t rows : {int64_t{1}, int64_t{8}, int64_t{16}, int64_t{32}, int64_t{64}, kGemmTileRows}) {
    if (rows > slice_rows_) break;
    std::vector<float> x(rows * hidden_);
    for (float& v : x) v = normal(rng);
    std::vector<RowSpec> specs(rows, RowSpec{1, {}, false});
    std::vector<RowOutput> out;
    RETURN_IF_ERROR(ComputeLogits({x.data(), rows, specs}, &out));
  }
  return absl::OkStatus();
}

absl::Status CudaBackend::ChooseGemvBlocksPerSm(int requested, std::mt19937& rng) {
  if (gemv_max_rows_ < 1 || !Fp8GemmAvailable()) return absl::OkStatus();  // no wgmma GEMV
  if (requested > 0) {
    gemv_weights_.blocks_per_sm_16 = gemv_weights_.blocks_per_sm_32 = requested;
    tuning_ = absl::StrCat("GEMV at 1-32 rows: ", requested, " block(s) per SM (as configured)");
    return absl::OkStatus();
  }
  // Whole argmax calls on random rows in the input buffer, as served (one graph each; the kernel
  // alone, launched back to back, overlaps its own tails and says nothing here): each variant's
  // fastest call of three rounds of 10, the rounds alternating (clocks drift). N = 16 is timed on
  // kGemvExactRows rows; N = 24 on 24 rows, for N = 24 and 32 (17-32 rows).
  struct Choice {
    int64_t rows;
    int* blocks;
    const char* name;
  };
  const Choice choices[] = {{kGemvExactRows, &gemv_weights_.blocks_per_sm_16, "1-16"},
                            {24, &gemv_weights_.blocks_per_sm_32, "17-32"}};
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<std::string> told;
  for (const Choice& choice : choices) {
    if (choice.rows > gemv_max_rows_) break;
    float* x = InputBuffer(choice.rows);
    if (x == nullptr) return absl::InternalError("no input buffer for the GEMV's timing");
    for (int64_t i = 0; i < choice.rows * hidden_; ++i) x[i] = normal(rng);
    const std::vector<RowSpec> specs(choice.rows);
    std::vector<RowOutput> out;
    double best[2] = {1e30, 1e30};
    for (int round = 0; round < 3; ++round) {
      for (int v = 0; v < 2; ++v) {
        *choice.blocks = v + 1;
        ClearGraphs();  // they hold the kernel they were captured with
        RETURN_IF_ERROR(ComputeLogits({x, choice.rows, specs}, &out));  // (captures the graph)
        for (int call = 0; call < 10; ++call) {
          const auto start = std::chrono::steady_clock::now();
          RETURN_IF_ERROR(ComputeLogits({x, choice.rows, specs}, &out));
          best[v] = std::min(best[v], std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
        }
      }
    }
    *choice.blocks = best[1] < 0.995 * best[0] ? 2 : 1;
    told.push_back(absl::StrCat("GEMV at ", choice.name, " rows: ", *choice.blocks, " block(s) per SM (fastest ",
                                choice.rows, "-row argmax call ", absl::SixDigits(best[0] * 1e3), " ms with 1, ",
                                absl::SixDigits(best[1] * 1e3), " ms with 2)"));
  }
  tuning_ = absl::StrJoin(told, "; ");
  ClearGraphs();
  return absl::OkStatus();
}

absl::Status CudaBackend::UploadWeights(const HeadSource& src, const QuantizeOptions& q) {
  // Padded rows and columns are zero (their logits are never read).
  const size_t elem = fp8_ ? 1 : 2;
  RETURN_IF_ERROR(weights_.Allocate(vocab_pad_ * hidden_pad_ * elem));
  CUDA_RETURN_IF_ERROR(cudaMemset(weights_.get(), 0, weights_.bytes()));
  if (fp8_) {
    RETURN_IF_ERROR(row_scales_.Allocate(vocab_pad_));
    CUDA_RETURN_IF_ERROR(cudaMemset(row_scales_.get(), 0, row_scales_.bytes()));
  }
  const bool fp8_source = src.dtype == SourceDType::kF8E4M3;
  if (fp8_source && !src.fp8_scales.empty() && src.fp8_scales.size() != 1 &&
      static_cast<int64_t>(src.fp8_scales.size()) != src.rows) {
    return absl::InvalidArgumentError("FP8 head scales must have 1 or `rows` values");
  }
  // Per-row multipliers of an FP8 source (1 when it has none).
  std::vector<float> source_scales;
  if (fp8_source) {
    source_scales.assign(src.rows, 1.0f);
    for (int64_t r = 0; r < src.rows && !src.fp8_scales.empty(); ++r) {
      source_scales[r] = src.fp8_scales.size() == 1 ? src.fp8_scales[0] : src.fp8_scales[r];
    }
  }
  const int64_t chunk = std::max<int64_t>(1, q.chunk_rows);
  const size_t src_row_bytes = src.cols * SourceDTypeSize(src.dtype);
  DeviceBuffer<uint8_t> staging;
  DeviceBuffer<float> staged_scales, amax;
  DeviceBuffer<unsigned long long> bad_row;
  RETURN_IF_ERROR(staging.Allocate(chunk * src_row_bytes));
  RETURN_IF_ERROR(staged_scales.Allocate(chunk));
  RETURN_IF_ERROR(bad_row.Allocate(1));
  CUDA_RETURN_IF_ERROR(cudaMemset(bad_row.get(), 0xff, sizeof(unsigned long long)));
  auto upload_chunk = [&](int64_t begin, int64_t end) -> absl::Status {
    CUDA_RETURN_IF_ERROR(cudaMemcpy(staging.get(), src.data + begin * src_row_bytes, (end - begin) * src_row_bytes,
                                    cudaMemcpyHostToDevice));
    return absl::OkStatus();
  };

  // Per-tensor scaling needs the whole tensor's amax first: one pass of row maxima.
  float fixed_scale = 1.0f;
  if (fp8_ && !fp8_source && q.scale_mode == ScaleMode::kPerTensor) {
    RETURN_IF_ERROR(amax.Allocate(src.rows));
    for (int64_t begin = 0; begin < src.rows; begin += chunk) {
      const int64_t end = std::min(src.rows, begin + chunk);
      RETURN_IF_ERROR(upload_chunk(begin, end));
      CUDA_RETURN_IF_ERROR(LaunchRowAmax(staging.get(), src.dtype, end - begin, src.cols, amax.get() + begin,
                                         bad_row.get(), begin, nullptr));
    }
    std::vector<float> host_amax(src.rows);
    CUDA_RETURN_IF_ERROR(cudaMemcpy(host_amax.data(), amax.get(), src.rows * sizeof(float), cudaMemcpyDeviceToHost));
    const float m = *std::max_element(host_amax.begin(), host_amax.end());
    fixed_scale = m > 0.0f ? m / 448.0f : 1.0f;
  }

  for (int64_t begin = 0; begin < src.rows; begin += chunk) {
    const int64_t end = std::min(src.rows, begin + chunk);
    if (fp8_source && fp8_) {
      // Pre-quantized FP8 goes up as it is: codes and the checkpoint's scales.
      CUDA_RETURN_IF_ERROR(cudaMemcpy2D(weights_.get() + begin * hidden_pad_, hidden_pad_,
                                        src.data + begin * src.cols, src.cols, src.cols, end - begin,
                                        cudaMemcpyHostToDevice));
      CUDA_RETURN_IF_ERROR(cudaMemcpy(row_scales_.get() + begin, source_scales.data() + begin,
                                      (end - begin) * sizeof(float), cudaMemcpyHostToDevice));
      for (int64_t i = begin * src.cols; i < end * src.cols; ++i) {
        if ((src.data[i] & 0x7f) == 0x7f) {
          return absl::InvalidArgumentError(absl::StrCat("head weight row ", i / src.cols, " has a NaN or infinite value"));
        }
      }
    } else {
      RETURN_IF_ERROR(upload_chunk(begin, end));
      WeightRowsParams p;
      p.src = staging.get();
      p.src_dtype = src.dtype;
      p.rows = end - begin;
      p.cols = src.cols;
      p.ld = hidden_pad_;
      p.out = weights_.get() + begin * hidden_pad_ * elem;
      p.bad_row = bad_row.get();
      p.row_offset = begin;
      if (fp8_) {
        p.kind = q.scale_mode == ScaleMode::kPerRow ? RowOutputKind::kFp8PerRow : RowOutputKind::kFp8Fixed;
        p.fixed_scale = fixed_scale;
        p.scales = row_scales_.get() + begin;
      } else {
        p.kind = RowOutputKind::kBf16;
        if (fp8_source) {
          CUDA_RETURN_IF_ERROR(cudaMemcpy(staged_scales.get(), source_scales.data() + begin,
                                          (end - begin) * sizeof(float), cudaMemcpyHostToDevice));
          p.src_scales = staged_scales.get();
        }
      }
      CUDA_RETURN_IF_ERROR(LaunchQuantizeWeightRows(p, nullptr));
      CUDA_RETURN_IF_ERROR(cudaDeviceSynchronize());  // staging is reused by the next chunk
    }
    if (src.release) src.release(begin * src_row_bytes, (end - begin) * src_row_bytes);
    if (q.on_progress) q.on_progress(end, src.rows);
  }
  unsigned long long bad = 0;
  CUDA_RETURN_IF_ERROR(cudaMemcpy(&bad, bad_row.get(), sizeof(bad), cudaMemcpyDeviceToHost));
  if (bad != ~0ull) return absl::InvalidArgumentError(absl::StrCat("head weight row ", bad, " has a NaN or infinite value"));
  scale_mode_ = EffectiveScaleMode(src, q.scale_mode);
  return absl::OkStatus();
}

absl::StatusOr<HeadWeights> CudaBackend::ExportWeights() const {
  HeadWeights w;
  w.format = fp8_ ? WeightFormat::kFp8E4m3 : WeightFormat::kBf16;
  w.scale_mode = scale_mode_;
  w.vocab = vocab_;
  w.hidden = hidden_;
  const size_t elem = fp8_ ? 1 : 2;
  w.data.resize(vocab_ * hidden_ * elem);
  CUDA_RETURN_IF_ERROR(cudaSetDevice(device_));
  CUDA_RETURN_IF_ERROR(cudaMemcpy2D(w.data.data(), hidden_ * elem, weights_.get(), hidden_pad_ * elem, hidden_ * elem,
                                    vocab_, cudaMemcpyDeviceToHost));
  if (fp8_) {
    w.row_scales.resize(vocab_);
    CUDA_RETURN_IF_ERROR(cudaMemcpy(w.row_scales.data(), row_scales_.get(), vocab_ * sizeof(float),
                                    cudaMemcpyDeviceToHost));
  }
  return w;
}

absl::Status CudaBackend::EnsureTokenCapacity(int64_t max_ids) {
  if (max_ids <= token_capacity_) return absl::OkStatus();
  const int64_t cap = std::max<int64_t>(max_ids, 2 * token_capacity_);
  const int64_t rows = std::max(slice_rows_, wide_rows_);  // wide slices ask for no top-k
  const size_t bytes = std::max(ResultLayout(slice_rows_, kMaxTopK, cap).end, ResultLayout(wide_rows_, 0, cap).end);
  RETURN_IF_ERROR(d_results_.Allocate(bytes));
  RETURN_IF_ERROR(token_ids_dev_.Allocate(rows * cap));
  for (Slot& slot : slots_) {
    RETURN_IF_ERROR(slot.token_ids.Allocate(rows * cap));
    RETURN_IF_ERROR(slot.results.Allocate(bytes));
  }
  token_capacity_ = cap;
  ClearGraphs();  // they point at the old buffers
  return absl::OkStatus();
}

size_t CudaBackend::CarveWide(int64_t rows, uint8_t* base) {
  size_t used = 0;
  auto take = [&](size_t bytes) {
    uint8_t* at = base == nullptr ? nullptr : base + used;
    used += RoundUp(static_cast<int64_t>(bytes), 1024);  // aligned as TMA and vector accesses need
    return at;
  };
  const size_t row_bytes = RowBytes(WideRowFormat(), rows);
  for (float*& buffer : wide_.rows) buffer = reinterpret_cast<float*>(take(row_bytes));
  if (split_) {  // LaunchFp8Gemm's planes
    wide_.planes = reinterpret_cast<__half*>(take(rows * GemvActivationStride(hidden_pad_) * sizeof(__half)));
    wide_.plane_scales = reinterpret_cast<float*>(take(rows * sizeof(float)));
  } else {  // LaunchFp8ActGemm's E4M3 rows
    wide_.act = take(rows * hidden_pad_);
    wide_.act_scales = reinterpret_cast<float*>(take(rows * sizeof(float)));
  }
  const size_t partials = rows * Fp8GemmMaxPartials(vocab_pad_);
  wide_.part_max = reinterpret_cast<float*>(take(partials * sizeof(float)));
  wide_.part_sum = reinterpret_cast<float*>(take(partials * sizeof(float)));
  wide_.part_arg = reinterpret_cast<int32_t*>(take(partials * sizeof(int32_t)));
  return used;
}

absl::Status CudaBackend::ComputeLogits(const LogitsBatch& batch, std::vector<RowOutput>* out) {
  const int64_t rows = batch.rows;
  const int given = (batch.hidden != nullptr) + (batch.hidden_bf16 != nullptr) + (batch.hidden_half != nullptr);
  if (rows <= 0 || given != 1 || static_cast<int64_t>(batch.specs.size()) != rows) {
    return absl::InvalidArgumentError(absl::StrCat(
        "batch has ", rows, " rows, ", batch.specs.size(), " row specs and ", given,
        " kinds of rows (fp32, bf16, fp16: ", batch.hidden != nullptr, batch.hidden_bf16 != nullptr,
        batch.hidden_half != nullptr, "); exactly one must be given"));
  }
  if (batch.hidden_bf16 != nullptr && batch.hidden_bf16 != Bf16InputBuffer(rows)) {
    return absl::InvalidArgumentError(
        absl::StrCat("bf16 rows must be in the buffer Bf16InputBuffer(", rows, ") returns"));
  }
  if (batch.hidden_half != nullptr) {
    const HalfRows buffer = HalfInputBuffer(rows);
    if (batch.hidden_half != buffer.values || batch.half_inv_scales != buffer.inv_scales) {
      return absl::InvalidArgumentError(
          absl::StrCat("fp16 rows and their scales must be in the buffer HalfInputBuffer(", rows, ") returns"));
    }
  }
  CallShape call;
  for (int64_t b = 0; b < rows; ++b) {
    const RowSpec& spec = batch.specs[b];
    if (spec.top_k > std::min<int64_t>(vocab_, kMaxTopK) ||
        (spec.sampling != nullptr && spec.sampling->top_k > std::min<int64_t>(vocab_, kMaxTopK))) {
      return absl::InvalidArgumentError(absl::StrCat("row ", b, ": a top_k exceeds ",
                                                     std::min<int64_t>(vocab_, kMaxTopK),
                                                     " (the vocab size or the CUDA backend's limit)"));
    }
    for (uint32_t id : spec.token_ids) {
      if (id >= vocab_) return absl::InvalidArgumentError(absl::StrCat("row ", b, ": token id ", id, " >= vocab size ", vocab_));
    }
    call.top_k = std::max<int>(call.top_k, static_cast<int>(spec.top_k));
    call.max_ids = std::max<int64_t>(call.max_ids, static_cast<int64_t>(spec.token_ids.size()));
    call.keep_logits |= ReadsLogits(spec);
    call.rows_without_logits |= !ReadsLogits(spec);
    call.full_or_sampled |= spec.want_logits || spec.sampling != nullptr;
  }
  CUDA_RETURN_IF_ERROR(cudaSetDevice(device_));
  RETURN_IF_ERROR(EnsureTokenCapacity(call.max_ids));
  out->assign(rows, RowOutput{});
  // Each slice is finished (waited for, results read) while the GPU computes the next ones (see
  // Slot); with stage profiling, before the next one is enqueued.
  // Wide slices where they take fewer than narrow ones (at 512 rows in slices of 128, 256 and 128
  // against two of 256, an fp8-activation argmax call took 1.12 against 0.98 ms on an H100).
  std::vector<int64_t> sizes = NarrowSliceSizes(rows, slice_rows_, SliceGranule());
  bool wide = WideCall(batch, call);
  if (wide) {
    std::vector<int64_t> wide_sizes = WideSliceSizes(rows, wide_rows_, kGemmTileRows);
    wide = wide_sizes.size() < sizes.size();
    if (wide) sizes = std::move(wide_sizes);
  }
  if (wide && split_ && wide_planes_dirty_) {  // the kernels read the planes' padding columns
    CUDA_RETURN_IF_ERROR(cudaMemsetAsync(wide_.planes, 0, wide_rows_ * GemvActivationStride(hidden_pad_) * sizeof(__half),
                                         stream_.get()));
    wide_planes_dirty_ = false;
  }
  wide_planes_dirty_ |= !wide;  // (a narrow call may store logits in raw_)
  const int64_t slices = static_cast<int64_t>(sizes.size());
  std::deque<int> in_flight;  // slots, oldest first
  absl::Status status;
  for (int64_t start = 0, i = 0; i < slices && status.ok(); start += sizes[i], ++i) {
    const int64_t n = sizes[i];
    const bool graph = slices == 1 && UseGraph(n, GivenRows(batch).first);
    const int slot = graph ? 0 : static_cast<int>(i % kSlots);
    status = EnqueueSlice(batch, start, n, call, graph, slices > 1, wide, slot, static_cast<int>(i % 2), out);
    if (status.ok()) in_flight.push_back(slot);
    const size_t keep_running = events_.empty() ? kSlots - 1 : 0;
    while (status.ok() && in_flight.size() > keep_running) {
      status = FinishSlice(batch, call, slots_[in_flight.front()], out);
      in_flight.pop_front();
    }
  }
  while (status.ok() && !in_flight.empty()) {
    status = FinishSlice(batch, call, slots_[in_flight.front()], out);
    in_flight.pop_front();
  }
  if (!status.ok()) {  // nothing may still be using the buffers when the next call starts
    cudaStreamSynchronize(copy_stream_.get());
    cudaStreamSynchronize(stream_.get());
  }
  return status;
}

absl::Status CudaBackend::Enqueue(const SliceBuffers& b, const void* x_src, RowFormat rows, int64_t n,
                                  const CallShape& call, bool graph, bool pipelined, int slot, int rows_buffer) {
  cudaStream_t s = stream_.get();
  auto mark_stage = [&](int i, cudaStream_t on) {
    if (!graph) Mark(i, on);  // never inside a capture
  };
  const bool gemv = n <= gemv_max_rows_;  // x_src is pinned then (see Init)
  const bool fp8_gemm = fp8_gemms_ && split_ && n > kGemvMaxRows;
  const bool fp8_act_gemm = fp8_gemms_ && !split_ && n > kGemvMaxRows;
  if ((!gemv && !fp8_gemm && !fp8_act_gemm && (gemm_ == nullptr || rows == RowFormat::kBf16)) ||
      (rows == RowFormat::kHalf && !TakesHalfRows(n))) {
    return absl::InternalError(absl::StrCat("no GEMM path for a slice of ", n,
                                            rows == RowFormat::kBf16   ? " bf16"
                                            : rows == RowFormat::kHalf ? " fp16"
                                                                       : "",
                                            " rows"));
  }
  const ResultLayout layout(n, call.top_k, call.max_ids);
  uint8_t* d = ResultsFor(graph);
  EpilogueParams p;
  const bool wide = &b == &wide_;
  p.raw = wide ? nullptr : raw_.get();  // wide slices store no logits (and raw_ holds their buffers)
  p.ld = vocab_pad_;
  p.act_scales = gemv || fp8_gemm ? b.plane_scales : b.act_scales;
  p.row_scales = fp8_ ? row_scales_.get() : nullptr;
  p.rows = n;
  p.vocab = vocab_;
  p.split = split_ && !gemv && !fp8_gemm;
  p.logit_scale = transform_.scale;
  p.softcap = transform_.softcap;
  p.keep_logits = call.keep_logits;
  p.max_logit = reinterpret_cast<float*>(d + layout.max);
  p.argmax = reinterpret_cast<int32_t*>(d + layout.arg);
  p.logsumexp = reinterpret_cast<float*>(d + layout.lse);
  p.top_k = call.top_k;
  p.top_ids = reinterpret_cast<int32_t*>(d + layout.top_ids);
  p.top_logits = reinterpret_cast<float*>(d + layout.top_logits);
  // The FP8 kernels' activation kernel copies the ids to the device with the rows (RowWords), the
  // FP8 x FP8 GEMM's path copies them before its activations; cuBLASLt's read them in place over
  // PCIe (a few ids per row: a copy node between the GEMM and the epilogue would also end the
  // epilogue's early launch).
  const bool ids_on_device = (gemv || fp8_gemm || fp8_act_gemm) && call.max_ids > 0;
  p.token_ids = ids_on_device ? token_ids_dev_.get() : slots_[slot].token_ids.get();
  p.max_token_ids = static_cast<int>(call.max_ids);
  p.token_logits = reinterpret_cast<float*>(d + layout.token_logits);
  // lmhead's FP8 kernels finish the token logits in their tile store: no logits stored for them;
  // in a batch that mixes rows that read their logits with rows that do not, only the former's are
  // stored (unless the epilogue reads every row's token logits from them). The flags cost a read
  // over PCIe in every block, so uniform batches go without.
  p.kernel_token_logits = (gemv || fp8_gemm || fp8_act_gemm) && KernelsFinishTokenLogits(n, call.max_ids);
  // The kernels' partial statistics per row (the FP8 x FP8 GEMM's statistics-only kernel, for calls
  // that store no logits, writes finer ones than its tile-store kernel).
  p.ready_partials = fp8_gemm       ? Fp8GemmPartials(vocab_pad_)
                     : fp8_act_gemm ? Fp8ActGemmPartials(vocab_pad_, p)
                     : gemv         ? GemvPartials(n, vocab_pad_)
                                    : 0;
  p.partial_rows = fp8_act_gemm ? Fp8ActGemmPartialRows(p) : p.ready_partials > 0 ? GemvPartialRows(n) : 0;
  const bool token_logits_need_no_store = call.max_ids == 0 || p.kernel_token_logits;
  if (call.keep_logits && call.rows_without_logits && token_logits_need_no_store) {
    p.store_rows = slots_[slot].logit_rows.get();
  }
  AttachScratch(b, &p);
  // Where only the top-k reads the stored logits, the kernels store those of few vocab blocks (the
  // activation kernel clears the bound they keep).
  const bool sparse_topk = (gemv || fp8_gemm) && KernelsStoreSparseTopK(n) && !call.full_or_sampled &&
                           token_logits_need_no_store && TopKFromPartials(p);
  if (sparse_topk) {
    p.topk_bound = topk_bound_.get();
    p.range_stored = range_stored_.get();
  }

  float* x_dev = b.rows[rows_buffer];
  if (!gemv) {  // the GEMV's activation kernel reads the pinned rows straight over PCIe instead
    const size_t bytes = RowBytes(rows, n);
    if (!pipelined) {
      mark_stage(0, s);
      CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(x_dev, x_src, bytes, cudaMemcpyHostToDevice, s));
      mark_stage(1, s);
    } else {
      // On the copy stream, once the slice before last has read the buffer, so that it overlaps
      // the compute of the slices before.
      cudaStream_t c = copy_stream_.get();
      CUDA_RETURN_IF_ERROR(cudaStreamWaitEvent(c, rows_read_[rows_buffer].get()));
      mark_stage(0, c);
      CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(x_dev, x_src, bytes, cudaMemcpyHostToDevice, c));
      mark_stage(1, c);
      CUDA_RETURN_IF_ERROR(cudaEventRecord(rows_up_[rows_buffer].get(), c));
      CUDA_RETURN_IF_ERROR(cudaStreamWaitEvent(s, rows_up_[rows_buffer].get()));
    }
  }
  const int64_t n_pad = LtGemm::PadRows(split_ ? 2 * n : n);
  // The GEMV's and the FP8 GEMM's activations from x (in `rows` format).
  auto fp8_kernel_activations = [&](const void* x) {
    RowWords words;
    if (p.topk_bound != nullptr) words.zero = p.topk_bound, words.zero_per_row = p.top_k + 1;
    if (ids_on_device) {
      words.ids_from = slots_[slot].token_ids.get();
      words.ids_to = token_ids_dev_.get();
      words.ids_per_row = static_cast<int>(call.max_ids);
    }
    if (rows == RowFormat::kHalf) {
      const HalfRows half = HalfRowsIn(const_cast<void*>(x), n, hidden_);
      return LaunchGemvActivationsFromHalf(half.values, half.inv_scales, n, hidden_, hidden_pad_, b.planes,
                                           b.plane_scales, s, words);
    }
    return rows == RowFormat::kBf16 ? LaunchGemvActivations(static_cast<const uint16_t*>(x), n, hidden_, hidden_pad_,
                                                            b.planes, b.plane_scales, s, words)
                                    : LaunchGemvActivations(static_cast<const float*>(x), n, hidden_, hidden_pad_,
                                                            b.planes, b.plane_scales, s, words);
  };
  if (gemv) {
    mark_stage(0, s);  // no copy: the activation kernel reads the pinned rows
    mark_stage(1, s);
    CUDA_RETURN_IF_ERROR(fp8_kernel_activations(x_src));
  } else if (fp8_gemm) {
    CUDA_RETURN_IF_ERROR(fp8_kernel_activations(x_dev));
  } else {  // LaunchFp8ActGemm's E4M3 rows need no padding rows (the kernel masks them)
    if (ids_on_device) {
      CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(token_ids_dev_.get(), slots_[slot].token_ids.get(),
                                           n * call.max_ids * sizeof(int32_t), cudaMemcpyHostToDevice, s));
    }
    // (rows past the slice's in its last tile zeroed: they are multiplied too)
    CUDA_RETURN_IF_ERROR(LaunchGemmActivations(b, x_dev, rows == RowFormat::kBf16, n,
                                               fp8_act_gemm ? RoundUp(n, kGemmTileRows) : n_pad, s));
  }
  if (pipelined) CUDA_RETURN_IF_ERROR(cudaEventRecord(rows_read_[rows_buffer].get(), s));
  mark_stage(2, s);
  if (gemv) {
    CUDA_RETURN_IF_ERROR(LaunchFp8Gemv(gemv_weights_, b.planes, p, s));
  } else if (fp8_gemm) {
    CUDA_RETURN_IF_ERROR(LaunchFp8Gemm(*b.ops, b.planes, p, s));
  } else if (fp8_act_gemm) {
    CUDA_RETURN_IF_ERROR(LaunchFp8ActGemm(*b.ops, p, s));
  } else {
    RETURN_IF_ERROR(gemm_->Run(weights_.get(), act_.get(), n_pad, raw_.get(), s));
  }
  mark_stage(3, s);
  CUDA_RETURN_IF_ERROR(LaunchEpilogue(p, s));
  mark_stage(4, s);
  if (!graph) {
    CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(slots_[slot].results.get(), d, layout.end, cudaMemcpyDeviceToHost, s));
  }
  return absl::OkStatus();
}

absl::Status CudaBackend::EnqueueSlice(const LogitsBatch& batch, int64_t start, int64_t n, const CallShape& call,
                                       bool graph, bool pipelined, bool wide, int slot_index, int rows_buffer,
                                       std::vector<RowOutput>* out) {
  cudaStream_t s = stream_.get();
  Slot& slot = slots_[slot_index];
  slot.start = start;
  slot.n = n;
  slot.graph = graph;
  if (call.keep_logits && call.rows_without_logits) {  // EpilogueParams::store_rows (see Enqueue)
    for (int64_t r = 0; r < n; ++r) slot.logit_rows.get()[r] = ReadsLogits(batch.specs[start + r]);
  }
  if (call.max_ids > 0) {
    int32_t* ids = slot.token_ids.get();
    for (int64_t r = 0; r < n; ++r) {
      const RowSpec& spec = batch.specs[start + r];
      for (int64_t i = 0; i < call.max_ids; ++i) {
        ids[r * call.max_ids + i] =
            i < static_cast<int64_t>(spec.token_ids.size()) ? static_cast<int32_t>(spec.token_ids[i]) : -1;
      }
    }
  }
  // The slice's rows as given (bf16 and fp16 rows: one slice, in x_host_[0]); a graph slice reads
  // them from x_host_[0] and a slice of several from its slot's buffer, where the host stages them
  // first -- fp32 rows as scaled fp16 where StagesHalfRows (half the bytes to move).
  auto [x_src, rows] = GivenRows(batch);
  if (rows == RowFormat::kFp32) x_src = batch.hidden + start * hidden_;
  void* staging = x_host_[graph ? 0 : slot_index].get();
  if (graph ? x_src != staging : pipelined) {
    if (rows == RowFormat::kFp32 && StagesHalfRows(n)) {
      copy_pool_->ToHalfRows(static_cast<const float*>(x_src), n, hidden_, HalfRowsIn(staging, n, hidden_));
      rows = RowFormat::kHalf;
    } else {
      copy_pool_->Copy(staging, x_src, RowBytes(rows, n));
    }
    x_src = staging;
  }
  if (graph) {
    const auto key = std::make_tuple(n, rows, call);
    auto it = graphs_.find(key);
    if (it == graphs_.end()) {
      if (graphs_.size() >= kMaxGraphs) ClearGraphs();
      if (n > gemv_max_rows_ && gemm_ != nullptr) {
        const int64_t n_pad = LtGemm::PadRows(split_ ? 2 * n : n);
        RETURN_IF_ERROR(gemm_->Prepare(weights_.get(), act_.get(), n_pad, raw_.get(), s));
      }
      cudaGraph_t captured_graph;
      CUDA_RETURN_IF_ERROR(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal));
      absl::Status captured =
          Enqueue(own_, x_host_[0].get(), rows, n, call, /*graph=*/true, /*pipelined=*/false, 0, 0);
      const cudaError_t ended = cudaStreamEndCapture(s, &captured_graph);
      RETURN_IF_ERROR(captured);
      CUDA_RETURN_IF_ERROR(ended);
      cudaGraphExec_t exec;
      const cudaError_t made = cudaGraphInstantiate(&exec, captured_graph, 0);
      cudaGraphDestroy(captured_graph);
      CUDA_RETURN_IF_ERROR(made);
      it = graphs_.emplace(key, exec).first;
    }
    Mark(0, s);
    CUDA_RETURN_IF_ERROR(cudaGraphLaunch(it->second, s));
    Mark(5, s);
  } else {
    // (Several slices are staged, and so are GEMV slices among them: the GEMV reads pinned rows.)
    RETURN_IF_ERROR(Enqueue(wide ? wide_ : own_, x_src, rows, n, call, /*graph=*/false, pipelined, slot_index,
                            rows_buffer));
  }
  RETURN_IF_ERROR(EnqueueSampling(batch, call, ResultsFor(graph), slot));
  for (int64_t r = 0; r < n; ++r) {
    if (!batch.specs[start + r].want_logits) continue;
    std::vector<float>& logits = (*out)[start + r].logits;
    logits.resize(vocab_);
    CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(logits.data(), raw_.get() + r * vocab_pad_, vocab_ * sizeof(float),
                                         cudaMemcpyDeviceToHost, s));
  }
  if (!graph) Mark(5, s);
  CUDA_RETURN_IF_ERROR(cudaEventRecord(slot.done.get(), s));
  return absl::OkStatus();
}

absl::Status CudaBackend::FinishSlice(const LogitsBatch& batch, const CallShape& call, Slot& slot,
                                      std::vector<RowOutput>* out) {
  CUDA_RETURN_IF_ERROR(cudaEventSynchronize(slot.done.get()));
  if (!events_.empty()) {  // profiling: this slice was the only one in flight
    float ms = 0;
    if (slot.graph) {
      CUDA_RETURN_IF_ERROR(cudaEventElapsedTime(&ms, events_[0], events_[5]));
      stage_ms_[5] += ms;
    } else {
      for (int i = 0; i < 5; ++i) {
        if (cudaEventElapsedTime(&ms, events_[i], events_[i + 1]) == cudaSuccess) stage_ms_[i] += ms;
      }
    }
    ++profiled_slices_;
  }
  const int64_t start = slot.start, n = slot.n, top_k = call.top_k, max_ids = call.max_ids;
  const ResultLayout layout(n, top_k, max_ids);
  const uint8_t* h = slot.results.get();
  const float* h_max = reinterpret_cast<const float*>(h + layout.max);
  const float* h_lse = reinterpret_cast<const float*>(h + layout.lse);
  const int32_t* h_arg = reinterpret_cast<const int32_t*>(h + layout.arg);
  const int32_t* h_top_ids = reinterpret_cast<const int32_t*>(h + layout.top_ids);
  const float* h_top_logits = reinterpret_cast<const float*>(h + layout.top_logits);
  const float* h_token_logits = reinterpret_cast<const float*>(h + layout.token_logits);
  for (int64_t r = 0; r < n; ++r) {
    const RowSpec& spec = batch.specs[start + r];
    RowOutput& o = (*out)[start + r];
    o.max_logit = h_max[r];
    o.logsumexp = h_lse[r];
    o.logprob_lse = o.logsumexp;
    o.argmax_id = static_cast<uint32_t>(h_arg[r]);
    if (!std::isfinite(o.max_logit) || !std::isfinite(o.logsumexp)) {
      return absl::InvalidArgumentError(absl::StrCat("row ", start + r,
                                                     ": logits are not finite (hidden-state magnitudes too large)"));
    }
    for (uint32_t k = 0; k < spec.top_k; ++k) {
      o.top_ids.push_back(static_cast<uint32_t>(h_top_ids[r * top_k + k]));
      o.top_logits.push_back(h_top_logits[r * top_k + k]);
    }
    for (size_t i = 0; i < spec.token_ids.size(); ++i) o.token_logits.push_back(h_token_logits[r * max_ids + i]);
  }
  return ReadSampling(batch, max_ids, slot, out);
}

absl::Status CudaBackend::EnqueueSampling(const LogitsBatch& batch, const CallShape& call, const uint8_t* results,
                                          Slot& slot) {
  const int64_t start = slot.start, n = slot.n, max_ids = call.max_ids;
  SamplingPlan* plan = &slot.sampling;
  plan->rows.clear();
  plan->top_k = 0;
  int64_t list_ids = 0;
  for (int64_t r = 0; r < n; ++r) {
    const RowSpec& spec = batch.specs[start + r];
    if (spec.sampling == nullptr) continue;
    const SamplingSpec& s = *spec.sampling;
    plan->rows.push_back(r);
    plan->top_k = std::max<int>(plan->top_k, static_cast<int>(std::max(spec.processed_logprobs ? spec.top_k : 0u,
                                                                       s.greedy() ? 0u : s.top_k)));
    list_ids += static_cast<int64_t>(s.logit_bias.size() + s.allowed_token_ids.size() + s.banned_token_ids.size() +
                                     s.previous_counts.size());
  }
  if (plan->rows.empty()) return absl::OkStatus();
  const int count = static_cast<int>(plan->rows.size());

  // Arena: params[count] | ids[list_ids] | bias_values[list_ids] | counts[list_ids] | token_ids[count, max_ids].
  auto align = [](size_t x) { return (x + 15) / 16 * 16; };
  const size_t ids_at = align(count * sizeof(SampleRowParams));
  const size_t values_at = align(ids_at + list_ids * 4);
  const size_t counts_at = align(values_at + list_ids * 4);
  const size_t tokens_at = align(counts_at + list_ids * 4);
  const size_t arena_bytes = tokens_at + count * max_ids * 4;
  // Device buffers grow only when no other slice is using them.
  if (slot.sampling_arena.bytes() < arena_bytes) {
    RETURN_IF_ERROR(slot.sampling_arena.Allocate(std::max(arena_bytes, 2 * slot.sampling_arena.bytes())));
  }
  if (d_sampling_arena_.bytes() < arena_bytes) {
    CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream_.get()));
    RETURN_IF_ERROR(d_sampling_arena_.Allocate(std::max(arena_bytes, 2 * d_sampling_arena_.bytes())));
  }
  uint8_t* h = slot.sampling_arena.get();
  auto* params = reinterpret_cast<SampleRowParams*>(h);
  auto* ids = reinterpret_cast<uint32_t*>(h + ids_at);
  auto* values = reinterpret_cast<float*>(h + values_at);
  auto* counts = reinterpret_cast<uint32_t*>(h + counts_at);
  auto* tokens = reinterpret_cast<int32_t*>(h + tokens_at);
  int32_t next = 0;
  for (int i = 0; i < count; ++i) {
    const RowSpec& spec = batch.specs[start + plan->rows[i]];
    const SamplingSpec& s = *spec.sampling;
    SampleRowParams& p = params[i];
    p = SampleRowParams{};
    p.src_row = static_cast<int32_t>(plan->rows[i]);
    p.temperature = s.temperature;
    p.top_k = static_cast<int32_t>(s.top_k);
    p.top_p = s.top_p;
    p.min_p = s.min_p;
    p.repetition = s.repetition_penalty;
    p.presence = s.presence_penalty;
    p.frequency = s.frequency_penalty;
    p.seed = s.seed;
    p.step = s.step;
    p.token_offset = s.token_offset;
    p.has_keep = s.has_keep ? 1 : 0;
    p.keep_above = s.keep_above;
    p.keep_tie_max_id = s.keep_tie_max_id;
    p.processed_logprobs = spec.processed_logprobs ? 1 : 0;
    p.bias_offset = next;
    for (const auto& [id, bias] : s.logit_bias) ids[next] = id, values[next++] = bias;
    p.bias_count = next - p.bias_offset;
    p.allowed_offset = next;
    for (uint32_t id : s.allowed_token_ids) ids[next++] = id;
    p.allowed_count = next - p.allowed_offset;
    p.banned_offset = next;
    for (uint32_t id : s.banned_token_ids) ids[next++] = id;
    p.banned_count = next - p.banned_offset;
    p.previous_offset = next;
    for (const auto& [id, c] : s.previous_counts) ids[next] = id, counts[next++] = c;
    p.previous_count = next - p.previous_offset;
    for (int64_t k = 0; k < max_ids; ++k) {
      tokens[i * max_ids + k] = k < static_cast<int64_t>(spec.token_ids.size()) ? static_cast<int32_t>(spec.token_ids[k]) : -1;
    }
  }
  cudaStream_t stream = stream_.get();
  uint8_t* d = d_sampling_arena_.get();
  CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(d, h, arena_bytes, cudaMemcpyHostToDevice, stream));
  SamplingArenas arenas;
  arenas.rows = reinterpret_cast<const SampleRowParams*>(d);
  arenas.ids = reinterpret_cast<const uint32_t*>(d + ids_at);
  arenas.bias_values = reinterpret_cast<const float*>(d + values_at);
  arenas.counts = reinterpret_cast<const uint32_t*>(d + counts_at);
  const int32_t* d_tokens = reinterpret_cast<const int32_t*>(d + tokens_at);

  const SampleLayout layout(count, plan->top_k, max_ids);
  if (slot.sample_results.bytes() < layout.end) {
    RETURN_IF_ERROR(slot.sample_results.Allocate(std::max(layout.end, 2 * slot.sample_results.bytes())));
  }
  if (d_sample_results_.bytes() < layout.end) {
    CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream_.get()));
    RETURN_IF_ERROR(d_sample_results_.Allocate(std::max(layout.end, 2 * d_sample_results_.bytes())));
  }
  uint8_t* out = d_sample_results_.get();
  const ResultLayout slice_layout(n, call.top_k, max_ids);
  const int K = plan->top_k;
  for (int g0 = 0; g0 < count; g0 += kSampleGroupRows) {
    const int gc = std::min(kSampleGroupRows, count - g0);
    CUDA_RETURN_IF_ERROR(LaunchProcessLogits(raw_.get(), vocab_pad_, vocab_, arenas, g0, gc, processed_.get(), stream));
    EpilogueParams e;
    e.raw = processed_.get();
    e.ld = vocab_pad_;
    e.rows = gc;
    e.vocab = vocab_;
    e.max_logit = reinterpret_cast<float*>(out + layout.base.max) + g0;
    e.argmax = reinterpret_cast<int32_t*>(out + layout.base.arg) + g0;
    e.logsumexp = reinterpret_cast<float*>(out + layout.base.lse) + g0;
    e.top_k = K;
    e.top_ids = reinterpret_cast<int32_t*>(out + layout.base.top_ids) + g0 * K;
    e.top_logits = reinterpret_cast<float*>(out + layout.base.top_logits) + g0 * K;
    e.token_ids = d_tokens + g0 * max_ids;
    e.max_token_ids = static_cast<int>(max_ids);
    e.token_logits = reinterpret_cast<float*>(out + layout.base.token_logits) + g0 * max_ids;
    AttachScratch(own_, &e);
    CUDA_RETURN_IF_ERROR(LaunchEpilogue(e, stream));
    SelectTokenParams sp;
    sp.arenas = arenas;
    sp.first = g0;
    sp.count = gc;
    sp.processed = processed_.get();
    sp.ld = vocab_pad_;
    sp.vocab = vocab_;
    sp.proc_max = e.max_logit;
    sp.proc_argmax = e.argmax;
    sp.proc_lse = e.logsumexp;
    sp.proc_top_ids = e.top_ids;
    sp.top_stride = K;
    sp.raw = raw_.get();
    sp.raw_lse = reinterpret_cast<const float*>(results + slice_layout.lse);
    sp.sampled_id = reinterpret_cast<int32_t*>(out + layout.sampled_id) + g0;
    sp.sampled_logprob = reinterpret_cast<float*>(out + layout.sampled_logprob) + g0;
    sp.sampled_score = reinterpret_cast<float*>(out + layout.sampled_score) + g0;
    sp.scratch = select_scratch_.get();
    for (int i = g0; i < g0 + gc; ++i) {
      const SamplingSpec& spec = *batch.specs[start + plan->rows[i]].sampling;
      sp.any_dense_top_p |= !spec.greedy() && spec.top_p < 1.0f && spec.top_k == 0;
    }
    CUDA_RETURN_IF_ERROR(LaunchSelectTokens(sp, stream));
  }
  CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(slot.sample_results.get(), out, layout.end, cudaMemcpyDeviceToHost, stream));
  return absl::OkStatus();
}

absl::Status CudaBackend::ReadSampling(const LogitsBatch& batch, int64_t max_ids, const Slot& slot,
                                       std::vector<RowOutput>* out) {
  const SamplingPlan& plan = slot.sampling;
  const int64_t start = slot.start;
  if (plan.rows.empty()) return absl::OkStatus();
  const int64_t count = static_cast<int64_t>(plan.rows.size());
  const SampleLayout layout(count, plan.top_k, max_ids);
  const uint8_t* h = slot.sample_results.get();
  const float* max = reinterpret_cast<const float*>(h + layout.base.max);
  const float* lse = reinterpret_cast<const float*>(h + layout.base.lse);
  const int32_t* top_ids = reinterpret_cast<const int32_t*>(h + layout.base.top_ids);
  const float* top_logits = reinterpret_cast<const float*>(h + layout.base.top_logits);
  const float* token_logits = reinterpret_cast<const float*>(h + layout.base.token_logits);
  const int32_t* sampled = reinterpret_cast<const int32_t*>(h + layout.sampled_id);
  const float* logprob = reinterpret_cast<const float*>(h + layout.sampled_logprob);
  const float* score = reinterpret_cast<const float*>(h + layout.sampled_score);
  for (int64_t i = 0; i < count; ++i) {
    const int64_t row = start + plan.rows[i];
    const RowSpec& spec = batch.specs[row];
    RowOutput& o = (*out)[row];
    if (!std::isfinite(max[i]) || !std::isfinite(lse[i])) {
      return absl::InvalidArgumentError(absl::StrCat(
          "row ", row, ": processed logits are not finite (temperature too small for these logits?)"));
    }
    o.sampled = sampled[i] >= 0;  // -1: an explicit kept set holds none of these rows (a shard)
    o.sampled_id = o.sampled ? static_cast<uint32_t>(sampled[i]) : 0;
    o.sampled_logprob = logprob[i];
    o.sampled_score = score[i];
    if (!spec.processed_logprobs) continue;
    o.logprob_lse = lse[i];
    o.top_ids.clear();
    o.top_logits.clear();
    for (uint32_t k = 0; k < spec.top_k; ++k) {
      o.top_ids.push_back(static_cast<uint32_t>(top_ids[i * plan.top_k + k]));
      o.top_logits.push_back(top_logits[i * plan.top_k + k]);
    }
    for (size_t k = 0; k < spec.token_ids.size(); ++k) o.token_logits[k] = token_logits[i * max_ids + k];
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<Backend>> NewCudaBackend(const CudaModuleArgs& args) {
  if (args.source == nullptr || args.source->rows <= 0 || args.source->cols <= 0 || args.source->data == nullptr) {
    return absl::InvalidArgumentError("the CUDA backend needs a loaded head");
  }
  auto backend = std::make_unique<CudaBackend>();
  RETURN_IF_ERROR(backend->Init(args));
  return std::unique_ptr<Backend>(std::move(backend));
}

}  // namespace lmhead::cuda
