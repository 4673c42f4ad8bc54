// C++ client for lmhead. Hides the proto: hidden states go in as typed row-major buffers,
// results come back as plain structs. Thread-safe: one LmHeadClient may be shared by threads;
// a StreamSession is used by one sender thread and one receiver thread at most.
#ifndef LMHEAD_CLIENT_LMHEAD_CLIENT_H_
#define LMHEAD_CLIENT_LMHEAD_CLIENT_H_

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "kernels/tensor.h"

namespace grpc {
class Channel;
class ClientContext;
}

namespace lmhead::client {

using lmhead::DType;

// [rows, hidden] row-major little-endian values in `dtype`.
struct HiddenStates {
  int64_t rows = 0;
  DType dtype = DType::kFp32;
  std::string data;

  // Converts float values ([rows, hidden]) to `dtype` (round to nearest even).
  static HiddenStates FromFloats(const std::vector<float>& values, int64_t rows, DType dtype);
};

// Mirrors lmhead.v1.SamplingParams (see the proto for ranges and the order of steps).
struct SamplingOptions {
  std::optional<float> temperature;  // absent = 1; 0 = greedy
  uint32_t top_k = 0;
  std::optional<float> top_p;
  float min_p = 0.0f;
  std::optional<uint64_t> seed;  // absent = the server draws one (RowResult::seed)
  uint64_t step = 0;
  std::map<uint32_t, float> logit_bias;
  std::vector<uint32_t> allowed_token_ids;
  std::vector<uint32_t> banned_token_ids;
  std::optional<float> repetition_penalty;
  float presence_penalty = 0.0f;
  float frequency_penalty = 0.0f;
  std::vector<uint32_t> previous_token_ids;
  // An explicit kept set replacing top_k / top_p / min_p (set by ShardedClient's second round;
  // see SamplingParams.keep_above).
  std::optional<float> keep_above;
  uint32_t keep_tie_max_id = 0;
};

struct OutputOptions {
  uint32_t top_k = 0;
  std::vector<uint32_t> logprob_token_ids;
  bool return_logits = false;
  DType logits_dtype = DType::kFp32;
  // Sampling for every row, or (row_sampling) one entry per row; neither = no sampling.
  std::optional<SamplingOptions> sampling;
  std::vector<SamplingOptions> row_sampling;
  // With sampling: top/token/sampled logprobs of the processed logits instead of the raw ones.
  bool processed_logprobs = false;
};

struct RowResult {
  uint32_t argmax_id = 0;
  float max_logit = 0;
  float logsumexp = 0;
  std::vector<uint32_t> top_ids;  // descending logit
  std::vector<float> top_logits;
  std::vector<float> top_logprobs;
  std::vector<float> token_logprobs;  // parallel to OutputOptions::logprob_token_ids
  std::optional<uint32_t> sampled_id;  // with sampling
  float sampled_logprob = 0.0f;
  uint64_t seed = 0;  // the seed that drew sampled_id
  // Normalizer of top/token/sampled logprobs (logit = logprob + this), and the winner's perturbed
  // score: what vocab shards need to merge exactly.
  float logprob_logsumexp = 0.0f;
  float sampled_score = 0.0f;
};

struct LogitsResult {
  std::string request_id;
  // OK, or this message's own error (streams only; unary errors are the call's status).
  absl::Status error;
  std::vector<RowResult> rows;
  std::vector<float> logits;  // [rows, vocab] when return_logits, converted to float
  int64_t queue_us = 0;
  int64_t compute_us = 0;
  int64_t batch_rows = 0;
  int64_t wire_bytes = 0;  // serialized size of the response message
};

struct ModelInfo {
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  std::string weight_format;
  std::string scale_mode;
  int64_t weight_bytes = 0;
  int64_t reference_bytes = 0;
  std::string model_path;
  std::string model_name;
  std::string backend;
  std::string weight_name;
  std::string source_dtype;
  bool tied_embeddings = false;
  float logit_scale = 0;
  float final_logit_softcapping = 0;
  int64_t max_rows_per_request = 0;
  int64_t max_top_k = 0;
  // Rows this server holds: [vocab_begin, vocab_end) of vocab_size (a vocab shard, or all).
  int64_t vocab_begin = 0;
  int64_t vocab_end = 0;
  // What the backend chose for this machine and head at startup (ModelInfo.backend_tuning).
  std::string backend_tuning;
};

struct ClientOptions {
  // Deadline of each unary call.
  absl::Duration timeout = absl::Seconds(30);
  int64_t max_message_bytes = 256 << 20;
  // TLS: verify the server against tls_root_pem (PEM text; empty = the system's roots). With
  // tls_cert_pem + tls_key_pem the client presents a certificate (mutual TLS). tls_server_name
  // overrides the name checked in the server's certificate (testing, IP targets).
  bool use_tls = false;
  std::string tls_root_pem;
  std::string tls_cert_pem;
  std::string tls_key_pem;
  std::string tls_server_name;
  // Sent as "authorization: Bearer <token>" on every LmHead call when non-empty.
  std::string auth_token;
};

// The contents of a PEM (or token) file; NOT_FOUND naming the path when it cannot be read.
absl::StatusOr<std::string> ReadTextFile(const std::string& path);

class StreamSession;

class LmHeadClient {
 public:
  // Creates a channel to `target` (host:port, or dns:///name:port to balance over every address
  // the name resolves to: calls are spread round-robin, e.g. over `docker compose --scale`
  // replicas or a headless Kubernetes Service). Does not wait for the server.
  static std::unique_ptr<LmHeadClient> Connect(const std::string& target, const ClientOptions& options = {});
  ~LmHeadClient();

  // Errors carry the server's gRPC status code and message.
  absl::StatusOr<LogitsResult> ComputeLogits(const HiddenStates& hidden, const OutputOptions& output,
                                             const std::string& request_id = "");
  absl::StatusOr<ModelInfo> GetModelInfo();
  // True when the health service reports lmhead.v1.LmHead SERVING.
  absl::StatusOr<bool> IsServing();
  // Opens a StreamLogits call.
  std::unique_ptr<StreamSession> OpenStream();

 private:
  LmHeadClient(std::shared_ptr<grpc::Channel> channel, const ClientOptions& options);
  // Deadline and credentials of one call.
  void Prepare(grpc::ClientContext* context) const;
  struct Stubs;
  std::unique_ptr<Stubs> stubs_;
  ClientOptions options_;
};

// One StreamLogits call: Send one request per decode step, Receive the responses in order.
class StreamSession {
 public:
  virtual ~StreamSession() = default;
  // Blocks until the message is handed to gRPC (flow control may hold it).
  virtual absl::Status Send(const HiddenStates& hidden, const OutputOptions& output,
                            const std::string& request_id) = 0;
  // The next response; a bad message's error is in LogitsResult::error and the stream stays
  // usable. OUT_OF_RANGE after the server has answered everything and closed; other errors are
  // transport failures (the stream's final status).
  virtual absl::StatusOr<LogitsResult> Receive() = 0;
  // Half-closes: no more Send; Receive returns OUT_OF_RANGE once every response has been read.
  // May run concurrently with Receive.
  virtual absl::Status CloseSend() = 0;
  // Half-closes, drains unread responses, and returns the call's final status. Not concurrently
  // with Receive.
  virtual absl::Status Close() = 0;
};

}  // namespace lmhead::client

#endif  // LMHEAD_CLIENT_LMHEAD_CLIENT_H_
