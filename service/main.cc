// lmhead-server: flags -> ServerOptions -> LmHeadServer; SIGTERM/SIGINT drain and exit 0.
#include <signal.h>

#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/time.h"
#include "service/server.h"
#include "service/util/log.h"
#include "service/util/stop_signal.h"

ABSL_FLAG(std::string, listen, "0.0.0.0:50051", "gRPC listen address (host:port)");
ABSL_FLAG(std::string, metrics_listen, "0.0.0.0:9400",
          "Prometheus metrics address (host:port); empty disables the endpoint");
ABSL_FLAG(std::string, checkpoint, "", "HuggingFace checkpoint directory (config.json + safetensors)");
ABSL_FLAG(std::string, weight_name, "",
          "Head tensor name; default lm_head.weight, or the input embedding for tied models");
ABSL_FLAG(std::string, weight_format, "fp8_e4m3", "Served weight format: fp8_e4m3 | bf16");
ABSL_FLAG(std::string, scale_mode, "per_row",
          "FP8 scaling: per_row | per_tensor | none (unscaled cast, for comparison only)");
ABSL_FLAG(std::string, backend, "auto", "Compute backend: auto | cpu | cuda");
ABSL_FLAG(int, device, 0, "CUDA device ordinal");
ABSL_FLAG(std::string, activation_precision, "bf16",
          "CUDA backend activations for batches over 16 rows: bf16 (FP8 high + residual rows, bf16-level accuracy) | "
          "fp8 (one FP8 row per token); smaller batches run the fp16 hi + lo GEMV in either mode");
ABSL_FLAG(int, gpu_workspace_mb, 192, "CUDA backend: device memory for one slice of GEMM output (MiB)");
ABSL_FLAG(int, gpu_gemv_blocks_per_sm, 0,
          "CUDA backend on Hopper: the GEMV at 1-32 rows in 1 or 2 blocks per SM; 0 = whichever runs faster on the "
          "head, timed at startup (results are the same bits either way)");
ABSL_FLAG(std::string, tls_cert, "", "PEM certificate chain of the gRPC endpoint (with --tls_key: TLS)");
ABSL_FLAG(std::string, tls_key, "", "PEM private key of --tls_cert");
ABSL_FLAG(std::string, tls_client_ca, "", "PEM CA that client certificates must chain to (mutual TLS)");
ABSL_FLAG(std::string, auth_token_file, "",
          "File holding the bearer token LmHead calls must send (needs TLS unless --listen is loopback)");
ABSL_FLAG(std::string, vocab_range, "",
          "Serve only rows START:END of the head (a vocab shard; ids on the wire stay global)");
ABSL_FLAG(std::string, shard, "", "Serve shard I/N: N equal 16-row-aligned parts of the vocab, this is part I");
ABSL_FLAG(std::string, cuda_module, "", "Path of liblmhead_cuda.so (default: next to the server, then the library path)");
ABSL_FLAG(int, threads, 0, "CPU backend and loader threads; the CUDA backend stages large batches on up to 8 (0 = all cores)");
ABSL_FLAG(int, max_rows_per_request, 64, "Most hidden-state rows in one request");
ABSL_FLAG(int, max_batch_rows, 64, "Most rows the batcher puts in one backend batch");
ABSL_FLAG(absl::Duration, max_queue_delay, absl::ZeroDuration(),
          "How long a batch may wait for more rows after its first arrives (0: compute what is queued)");
ABSL_FLAG(int, max_queued_rows, 4096, "Most rows waiting for compute; beyond it requests get RESOURCE_EXHAUSTED");
ABSL_FLAG(int, max_top_k, 256, "Largest top_k a request may ask for");
ABSL_FLAG(int, max_logprob_token_ids, 1024, "Most logprob_token_ids per request");
ABSL_FLAG(int64_t, max_message_bytes, 64 << 20, "Largest gRPC message sent or received");
ABSL_FLAG(int, max_stream_outstanding, 64,
          "Unanswered messages per stream before the server stops reading it");
ABSL_FLAG(absl::Duration, shutdown_grace, absl::Seconds(30),
          "How long SIGTERM waits for accepted requests before cancelling them");

namespace {

int Fail(const std::string& message) {
  LOG_ERROR() << message;
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage("lmhead-server --checkpoint=DIR [flags]: serves an LLM's lm_head in FP8");
  absl::ParseCommandLine(argc, argv);

  lmhead::BlockStopSignals();  // before any thread starts; main waits for them below

  lmhead::ServerOptions options;
  options.listen_address = absl::GetFlag(FLAGS_listen);
  options.metrics_address = absl::GetFlag(FLAGS_metrics_listen);
  options.security.tls_cert_file = absl::GetFlag(FLAGS_tls_cert);
  options.security.tls_key_file = absl::GetFlag(FLAGS_tls_key);
  options.security.tls_client_ca_file = absl::GetFlag(FLAGS_tls_client_ca);
  options.security.auth_token_file = absl::GetFlag(FLAGS_auth_token_file);
  options.head.checkpoint_dir = absl::GetFlag(FLAGS_checkpoint);
  options.head.weight_name = absl::GetFlag(FLAGS_weight_name);
  if (options.head.checkpoint_dir.empty()) return Fail("--checkpoint is required");
  if (!absl::GetFlag(FLAGS_vocab_range).empty() && !absl::GetFlag(FLAGS_shard).empty()) {
    return Fail("--vocab_range and --shard are alternatives; give one");
  }
  if (const std::string range = absl::GetFlag(FLAGS_vocab_range); !range.empty()) {
    const std::vector<std::string> parts = absl::StrSplit(range, ':');
    if (parts.size() != 2 || !absl::SimpleAtoi(parts[0], &options.head.range_begin) ||
        !absl::SimpleAtoi(parts[1], &options.head.range_end)) {
      return Fail("--vocab_range must be START:END (token ids, END exclusive), e.g. 0:64128");
    }
  }
  if (const std::string shard = absl::GetFlag(FLAGS_shard); !shard.empty()) {
    const std::vector<std::string> parts = absl::StrSplit(shard, '/');
    if (parts.size() != 2 || !absl::SimpleAtoi(parts[0], &options.head.shard_index) ||
        !absl::SimpleAtoi(parts[1], &options.head.shard_count) || options.head.shard_count < 1) {
      return Fail("--shard must be I/N with N >= 1, e.g. 0/2");
    }
  }
  if (!lmhead::ParseWeightFormat(absl::GetFlag(FLAGS_weight_format), &options.head.format)) {
    return Fail("--weight_format must be fp8_e4m3 or bf16");
  }
  if (!lmhead::ParseScaleMode(absl::GetFlag(FLAGS_scale_mode), &options.head.scale_mode)) {
    return Fail("--scale_mode must be per_row, per_tensor or none");
  }
  if (!lmhead::ParseBackendKind(absl::GetFlag(FLAGS_backend), &options.backend.kind)) {
    return Fail("--backend must be auto, cpu or cuda");
  }
  options.backend.device = absl::GetFlag(FLAGS_device);
  if (!lmhead::ParseActivationPrecision(absl::GetFlag(FLAGS_activation_precision),
                                        &options.backend.activation_precision)) {
    return Fail("--activation_precision must be bf16 or fp8");
  }
  if (absl::GetFlag(FLAGS_gpu_workspace_mb) < 1) return Fail("--gpu_workspace_mb must be positive");
  options.backend.gpu_output_workspace_bytes = int64_t{absl::GetFlag(FLAGS_gpu_workspace_mb)} << 20;
  const int gemv_blocks = absl::GetFlag(FLAGS_gpu_gemv_blocks_per_sm);
  if (gemv_blocks < 0 || gemv_blocks > 2) return Fail("--gpu_gemv_blocks_per_sm must be 0 (timed), 1 or 2");
  options.backend.gpu_gemv_blocks_per_sm = gemv_blocks;
  options.backend.cuda_module_path = absl::GetFlag(FLAGS_cuda_module);
  int threads = absl::GetFlag(FLAGS_threads);
  if (threads < 0) return Fail("--threads must be >= 0");
  if (threads == 0) threads = std::max(1u, std::thread::hardware_concurrency());
  options.backend.cpu_threads = threads;
  options.head.threads = threads;

  const int max_rows = absl::GetFlag(FLAGS_max_rows_per_request);
  const int max_batch = absl::GetFlag(FLAGS_max_batch_rows);
  const int max_queued = absl::GetFlag(FLAGS_max_queued_rows);
  const int max_top_k = absl::GetFlag(FLAGS_max_top_k);
  const int max_ids = absl::GetFlag(FLAGS_max_logprob_token_ids);
  const int outstanding = absl::GetFlag(FLAGS_max_stream_outstanding);
  if (max_rows < 1 || max_batch < 1 || max_top_k < 0 || max_ids < 0 || outstanding < 1) {
    return Fail("row, batch and stream limits must be positive; top-k and id limits non-negative");
  }
  if (max_queued < std::max(max_rows, max_batch)) {
    return Fail("--max_queued_rows must be at least --max_rows_per_request and --max_batch_rows");
  }
  options.batcher.max_queue_delay = absl::GetFlag(FLAGS_max_queue_delay);
  if (options.batcher.max_queue_delay < absl::ZeroDuration()) return Fail("--max_queue_delay must be >= 0");
  options.max_rows_per_request = static_cast<uint32_t>(max_rows);
  options.batcher.max_batch_rows = max_batch;
  options.batcher.max_queued_rows = max_queued;
  options.max_top_k = static_cast<uint32_t>(max_top_k);
  options.max_logprob_token_ids = static_cast<uint32_t>(max_ids);
  options.max_message_bytes = absl::GetFlag(FLAGS_max_message_bytes);
  options.max_stream_outstanding = outstanding;
  options.shutdown_grace = absl::GetFlag(FLAGS_shutdown_grace);
  if (options.shutdown_grace < absl::ZeroDuration()) return Fail("--shutdown_grace must be >= 0");

  auto server = lmhead::LmHeadServer::Start(options);
  if (!server.ok()) return Fail(std::string(server.status().message()));
  if (absl::Status loaded = (*server)->LoadAndServe(); !loaded.ok()) {
    return Fail(absl::StrCat("cannot load the head: ", loaded.message()));
  }

  const int signal = lmhead::WaitForStopSignal();
  LOG_INFO() << "received " << (signal == SIGTERM ? "SIGTERM" : "SIGINT")
             << "; draining accepted requests (grace " << absl::FormatDuration(options.shutdown_grace) << ")";
  (*server)->Shutdown();
  LOG_INFO() << "stopped";
  return 0;
}
