// End to end over a real gRPC channel: an in-process LmHeadServer and the client library.
#include <atomic>
#include <cmath>
#include <random>
#include <thread>

#include "absl/strings/str_cat.h"
#include "client/lmhead_client.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "kernels/cpu/cpu_backend.h"
#include "lmhead/v1/lmhead.grpc.pb.h"
#include "prometheus/text_serializer.h"
#include "service/server.h"
#include "tests/test_util.h"

namespace lmhead {
namespace {

using client::HiddenStates;
using client::LmHeadClient;
using client::OutputOptions;
using client::SamplingOptions;

constexpr int64_t kVocab = 1500;
constexpr int64_t kHidden = 64;

class E2eTest : public ::testing::Test {
 protected:
  void SetUp() override {
    testing::WriteBf16Checkpoint(dir_.path(), testing::RandomWeights(kVocab, kHidden, 9), kVocab, kHidden,
                                 "lm_head.weight", ", \"_name_or_path\": \"e2e-model\"");
    options_.listen_address = "127.0.0.1:0";
    options_.metrics_address = "";
    options_.head.checkpoint_dir = dir_.path();
    options_.head.log_progress = false;
    options_.backend.kind = BackendKind::kCpu;
    options_.backend.cpu_threads = 2;
    options_.max_rows_per_request = 16;
    options_.max_top_k = 50;
  }

  void StartAndLoad() {
    auto s = LmHeadServer::Start(options_);
    ASSERT_TRUE(s.ok()) << s.status();
    server_ = std::move(*s);
    ASSERT_TRUE(server_->LoadAndServe().ok());
    client_ = LmHeadClient::Connect(Target());
  }

  std::string Target() const { return "127.0.0.1:" + std::to_string(server_->port()); }

  // The same head computed in-process by the CPU backend.
  std::vector<RowOutput> Expected(const std::vector<float>& x, int64_t rows, uint32_t top_k) {
    if (!reference_) {
      HeadLoadOptions opt = options_.head;
      reference_ = *NewCpuBackend(std::move(LoadHead(opt)->weights), {}, 1);
    }
    std::vector<RowSpec> specs(rows, RowSpec{top_k, {}, false});
    std::vector<RowOutput> out;
    EXPECT_TRUE(reference_->ComputeLogits({x.data(), rows, specs}, &out).ok());
    return out;
  }

  std::string MetricsText() {
    return prometheus::TextSerializer().Serialize(server_->registry().Collect());
  }

  double InflightRequests() {
    const std::string text = MetricsText();
    const std::string key = "\nlmhead_inflight_requests ";
    const size_t at = text.find(key);
    return at == std::string::npos ? 0 : std::stod(text.substr(at + key.size()));
  }

  static std::vector<float> Random(int64_t rows, uint64_t seed) {
    std::mt19937_64 rng(seed);
    std::normal_distribution<float> n(0, 2);
    std::vector<float> x(rows * kHidden);
    for (float& v : x) v = n(rng);
    return x;
  }

  testing::TempDir dir_;
  ServerOptions options_;
  std::unique_ptr<LmHeadServer> server_;
  std::unique_ptr<LmHeadClient> client_;
  std::unique_ptr<Backend> reference_;
};

TEST_F(E2eTest, NotServingUntilLoaded) {
  auto s = LmHeadServer::Start(options_);
  ASSERT_TRUE(s.ok()) << s.status();
  server_ = std::move(*s);
  client_ = LmHeadClient::Connect(Target());
  EXPECT_EQ(*client_->IsServing(), false);
  EXPECT_EQ(client_->GetModelInfo().status().code(), absl::StatusCode::kFailedPrecondition);
  auto early = client_->ComputeLogits(HiddenStates::FromFloats(Random(1, 1), 1, DType::kFp32), {});
  EXPECT_EQ(early.status().code(), absl::StatusCode::kFailedPrecondition);
  ASSERT_TRUE(server_->LoadAndServe().ok());
  EXPECT_EQ(*client_->IsServing(), true);
  server_->Shutdown();
  EXPECT_FALSE(client_->IsServing().ok() && *client_->IsServing());
}

TEST_F(E2eTest, ModelInfoReportsTheHead) {
  StartAndLoad();
  auto info = client_->GetModelInfo();
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->vocab_size, kVocab);
  EXPECT_EQ(info->hidden_size, kHidden);
  EXPECT_EQ(info->weight_format, "fp8_e4m3");
  EXPECT_EQ(info->scale_mode, "per_row");
  EXPECT_EQ(info->weight_bytes, kVocab * kHidden + kVocab * 4);
  EXPECT_EQ(info->reference_bytes, kVocab * kHidden * 2);
  EXPECT_EQ(info->backend, "cpu");
  EXPECT_NE(info->backend_tuning.find(" kernel, 2 thread(s)"), std::string::npos) << info->backend_tuning;
  EXPECT_EQ(info->model_name, "e2e-model");
  EXPECT_EQ(info->weight_name, "lm_head.weight");
  EXPECT_EQ(info->source_dtype, "BF16");
  EXPECT_EQ(info->max_rows_per_request, 16);
}

TEST_F(E2eTest, UnaryMatchesTheBackendForEveryDType) {
  StartAndLoad();
  const std::vector<float> x = Random(5, 2);
  const auto expected = Expected(x, 5, 7);
  OutputOptions out;
  out.top_k = 7;
  out.logprob_token_ids = {3, 1499};
  out.return_logits = true;
  auto r = client_->ComputeLogits(HiddenStates::FromFloats(x, 5, DType::kFp32), out, "u1");
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->request_id, "u1");
  ASSERT_EQ(r->rows.size(), 5u);
  ASSERT_EQ(r->logits.size(), static_cast<size_t>(5 * kVocab));
  for (int i = 0; i < 5; ++i) {
    EXPECT_EQ(r->rows[i].top_ids, expected[i].top_ids);
    EXPECT_EQ(r->rows[i].argmax_id, expected[i].argmax_id);
    EXPECT_EQ(r->rows[i].logsumexp, expected[i].logsumexp);
    EXPECT_FLOAT_EQ(r->rows[i].token_logprobs[1], r->logits[i * kVocab + 1499] - r->rows[i].logsumexp);
  }
  for (DType d : {DType::kBf16, DType::kFp16}) {
    auto rd = client_->ComputeLogits(HiddenStates::FromFloats(x, 5, d), out);
    ASSERT_TRUE(rd.ok()) << rd.status();
    for (int i = 0; i < 5; ++i) EXPECT_NEAR(rd->rows[i].logsumexp, expected[i].logsumexp, 0.05);
  }
}

TEST_F(E2eTest, StreamAnswersInOrderAndSurvivesBadMessages) {
  StartAndLoad();
  constexpr int kSteps = 40;
  std::mt19937 rng(4);
  std::vector<std::vector<float>> inputs;
  for (int i = 0; i < kSteps; ++i) inputs.push_back(Random(1 + rng() % 4, 100 + i));
  auto is_bad = [](int i) { return i % 10 == 5; };

  auto stream = client_->OpenStream();
  std::thread sender([&] {
    for (int i = 0; i < kSteps; ++i) {
      const int64_t rows = static_cast<int64_t>(inputs[i].size()) / kHidden;
      HiddenStates h = HiddenStates::FromFloats(inputs[i], rows, DType::kFp32);
      if (is_bad(i)) h.data.resize(h.data.size() - 4);  // a malformed message
      OutputOptions out;
      out.top_k = 3;
      EXPECT_TRUE(stream->Send(h, out, absl::StrCat("s", i)).ok());
    }
  });
  for (int i = 0; i < kSteps; ++i) {
    auto r = stream->Receive();
    ASSERT_TRUE(r.ok()) << r.status();
    ASSERT_EQ(r->request_id, absl::StrCat("s", i));
    if (is_bad(i)) {
      EXPECT_EQ(r->error.code(), absl::StatusCode::kInvalidArgument);
      EXPECT_NE(r->error.message().find("hidden_size"), std::string::npos) << r->error;
      EXPECT_TRUE(r->rows.empty());
      continue;
    }
    ASSERT_TRUE(r->error.ok()) << r->error;
    const int64_t rows = static_cast<int64_t>(inputs[i].size()) / kHidden;
    const auto expected = Expected(inputs[i], rows, 3);
    ASSERT_EQ(r->rows.size(), static_cast<size_t>(rows));
    for (int64_t k = 0; k < rows; ++k) EXPECT_EQ(r->rows[k].top_ids, expected[k].top_ids);
  }
  sender.join();
  EXPECT_TRUE(stream->Close().ok());
  const std::string metrics = MetricsText();
  EXPECT_NE(metrics.find("lmhead_requests_total{code=\"INVALID_ARGUMENT\",rpc=\"StreamLogits\"} 4"),
            std::string::npos) << metrics;
  EXPECT_NE(metrics.find("lmhead_requests_total{code=\"OK\",rpc=\"StreamLogits\"} 36"), std::string::npos);
}

TEST_F(E2eTest, EveryValidationErrorComesBackAsInvalidArgument) {
  StartAndLoad();
  auto channel = grpc::CreateChannel(Target(), grpc::InsecureChannelCredentials());
  auto stub = v1::LmHead::NewStub(channel);
  auto good = [] {
    v1::LogitsRequest r;
    r.mutable_hidden()->set_rows(1);
    r.mutable_hidden()->set_dtype(v1::DTYPE_FP32);
    std::vector<float> x(kHidden, 0.5f);
    r.mutable_hidden()->set_data(std::string(reinterpret_cast<char*>(x.data()), x.size() * 4));
    return r;
  };
  struct Case {
    const char* what;
    std::function<void(v1::LogitsRequest&)> mutate;
  };
  const Case cases[] = {
      {"hidden_size is 64", [](auto& r) { r.mutable_hidden()->set_data(std::string(65 * 4, '\0')); }},
      {"expected rows (1) x hidden_size (64)", [](auto& r) { r.mutable_hidden()->mutable_data()->push_back('x'); }},
      {"hidden.dtype is unspecified", [](auto& r) { r.mutable_hidden()->set_dtype(v1::DTYPE_UNSPECIFIED); }},
      {"hidden.rows must be at least 1", [](auto& r) { r.mutable_hidden()->set_rows(0); }},
      {"over the server's limit of 16 rows", [](auto& r) { r.mutable_hidden()->set_rows(17); }},
      {"exceeds the vocab size 1500", [](auto& r) { r.mutable_output()->set_top_k(1501); }},
      {"exceeds the server's limit of 50", [](auto& r) { r.mutable_output()->set_top_k(51); }},
      {"out of range for vocab size 1500", [](auto& r) { r.mutable_output()->add_logprob_token_ids(1500); }},
      {"row 0 has a non-finite value (NaN) at column 2", [](auto& r) {
         float nan = std::nanf("");
         r.mutable_hidden()->mutable_data()->replace(8, 4, reinterpret_cast<char*>(&nan), 4);
       }},
      {"hidden is missing", [](auto& r) { r.clear_hidden(); }},
  };
  for (const Case& c : cases) {
    v1::LogitsRequest r = good();
    c.mutate(r);
    grpc::ClientContext ctx;
    v1::LogitsResponse resp;
    grpc::Status s = stub->ComputeLogits(&ctx, r, &resp);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << c.what;
    EXPECT_NE(s.error_message().find(c.what), std::string::npos) << s.error_message();
  }
  // The bad requests did not disturb a good one.
  grpc::ClientContext ctx;
  v1::LogitsResponse resp;
  EXPECT_TRUE(stub->ComputeLogits(&ctx, good(), &resp).ok());
  const std::string metrics = MetricsText();
  EXPECT_NE(metrics.find("lmhead_requests_total{code=\"INVALID_ARGUMENT\",rpc=\"ComputeLogits\"} 10"),
            std::string::npos);
  EXPECT_NE(metrics.find("lmhead_weight_saved_bytes " + std::to_string(kVocab * kHidden - 4 * kVocab)),
            std::string::npos);
  EXPECT_NE(metrics.find("lmhead_weight_bytes{format=\"fp8_e4m3\"}"), std::string::npos);
  EXPECT_NE(metrics.find("lmhead_rows_total{rpc=\"ComputeLogits\"} 1"), std::string::npos);
  EXPECT_NE(metrics.find("lmhead_ready 1"), std::string::npos);
}

TEST_F(E2eTest, RequestsLargerThanABatchAreSplitAndReassembled) {
  options_.batcher.max_batch_rows = 4;
  options_.max_rows_per_request = 16;
  StartAndLoad();
  const std::vector<float> x = Random(13, 21);
  const auto expected = Expected(x, 13, 5);
  OutputOptions out;
  out.top_k = 5;
  auto r = client_->ComputeLogits(HiddenStates::FromFloats(x, 13, DType::kFp32), out, "big");
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_EQ(r->rows.size(), 13u);
  for (int i = 0; i < 13; ++i) EXPECT_EQ(r->rows[i].top_ids, expected[i].top_ids) << "row " << i;
  EXPECT_LE(r->batch_rows, 4);
}

// Sampling over gRPC: per-row settings survive splitting, the seed is echoed and reproduces the
// draw, greedy rows return the argmax, and the sampled token equals the in-process reference.
TEST_F(E2eTest, SamplingPerRowIsReproducibleAndMatchesTheBackend) {
  options_.batcher.max_batch_rows = 3;  // 7 rows: split into parts, per-row specs must follow
  StartAndLoad();
  const std::vector<float> x = Random(7, 33);
  OutputOptions out;
  out.top_k = 3;
  std::vector<SamplingSpec> specs(7);
  for (int r = 0; r < 7; ++r) {
    SamplingOptions o;
    o.temperature = r == 0 ? 0.0f : 0.5f + 0.25f * r;
    o.top_k = r % 2 == 0 ? 0u : 20u;
    o.top_p = 0.9f;
    o.seed = 100 + r;
    o.step = r;
    o.banned_token_ids = {static_cast<uint32_t>(r)};
    out.row_sampling.push_back(o);
    specs[r].temperature = *o.temperature;
    specs[r].top_k = o.top_k;
    specs[r].top_p = 0.9f;
    specs[r].seed = 100 + r;
    specs[r].step = r;
    specs[r].banned_token_ids = {static_cast<uint32_t>(r)};
  }
  auto first = client_->ComputeLogits(HiddenStates::FromFloats(x, 7, DType::kFp32), out);
  ASSERT_TRUE(first.ok()) << first.status();
  auto again = client_->ComputeLogits(HiddenStates::FromFloats(x, 7, DType::kFp32), out);
  ASSERT_TRUE(again.ok()) << again.status();

  Expected(x, 1, 0);  // builds reference_
  std::vector<RowSpec> row_specs;
  for (int r = 0; r < 7; ++r) row_specs.push_back(RowSpec{3, {}, false, &specs[r], false});
  std::vector<RowOutput> ref;
  ASSERT_TRUE(reference_->ComputeLogits({x.data(), 7, row_specs}, &ref).ok());
  for (int r = 0; r < 7; ++r) {
    const auto& row = first->rows[r];
    ASSERT_TRUE(row.sampled_id.has_value()) << "row " << r;
    EXPECT_EQ(*row.sampled_id, ref[r].sampled_id) << "row " << r;
    EXPECT_EQ(*row.sampled_id, *again->rows[r].sampled_id) << "row " << r;
    EXPECT_NE(*row.sampled_id, static_cast<uint32_t>(r)) << "banned";
    EXPECT_EQ(row.seed, 100u + r);
    EXPECT_NEAR(row.sampled_logprob, ref[r].sampled_logprob, 1e-5);
  }
  // Row 0 is greedy; token 0 is banned there, so it is the argmax unless that is token 0.
  if (first->rows[0].argmax_id != 0) {
    EXPECT_EQ(*first->rows[0].sampled_id, first->rows[0].argmax_id);
  }

  // Without a seed the server draws one and returns it; sending it back reproduces the token.
  const std::vector<float> x1(x.begin(), x.begin() + kHidden);
  OutputOptions unseeded;
  unseeded.sampling = SamplingOptions{};
  auto drawn = client_->ComputeLogits(HiddenStates::FromFloats(x1, 1, DType::kFp32), unseeded);
  ASSERT_TRUE(drawn.ok()) << drawn.status();
  OutputOptions seeded = unseeded;
  seeded.sampling->seed = drawn->rows[0].seed;
  auto replay = client_->ComputeLogits(HiddenStates::FromFloats(x1, 1, DType::kFp32), seeded);
  ASSERT_TRUE(replay.ok());
  EXPECT_EQ(*replay->rows[0].sampled_id, *drawn->rows[0].sampled_id);
  // Rows without sampling carry no sampled token.
  auto plain = client_->ComputeLogits(HiddenStates::FromFloats(x1, 1, DType::kFp32), OutputOptions{});
  ASSERT_TRUE(plain.ok());
  EXPECT_FALSE(plain->rows[0].sampled_id.has_value());
  // Bad settings come back as INVALID_ARGUMENT naming the field.
  OutputOptions bad;
  bad.sampling = SamplingOptions{};
  bad.sampling->top_p = 0.0f;
  auto refused = client_->ComputeLogits(HiddenStates::FromFloats(x1, 1, DType::kFp32), bad);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(refused.status().message().find("sampling.top_p"), std::string::npos) << refused.status();
}

// 32 streams x 200 messages of 1-4 rows each, sent while responses are read on another thread:
// every response matches the backend's result for its own input; none lost, duplicated or misrouted.
TEST_F(E2eTest, ManyConcurrentStreamsGetTheirOwnResultsInOrder) {
  constexpr int kStreams = 32, kMessages = 200;
  options_.batcher.max_batch_rows = 32;
  // Room for every stream's outstanding messages (64 of up to 4 rows): nothing is refused here.
  options_.batcher.max_queued_rows = kStreams * options_.max_stream_outstanding * 4;
  StartAndLoad();
  // Distinct inputs per (stream, message); expected results computed up front.
  std::vector<std::vector<std::vector<float>>> inputs(kStreams);
  std::vector<std::vector<std::vector<uint32_t>>> expected(kStreams);
  for (int s = 0; s < kStreams; ++s) {
    for (int m = 0; m < kMessages; ++m) {
      const int64_t rows = 1 + (s * 7 + m) % 4;
      inputs[s].push_back(Random(rows, 1000 * s + m));
      std::vector<uint32_t> argmax;
      for (const RowOutput& o : Expected(inputs[s].back(), rows, 1)) argmax.push_back(o.argmax_id);
      expected[s].push_back(argmax);
    }
  }
  std::atomic<int> mismatches{0}, received{0};
  std::vector<std::thread> threads;
  for (int s = 0; s < kStreams; ++s) {
    threads.emplace_back([&, s] {
      auto c = LmHeadClient::Connect(Target());
      auto stream = c->OpenStream();
      std::thread sender([&] {
        for (int m = 0; m < kMessages; ++m) {
          const int64_t rows = static_cast<int64_t>(inputs[s][m].size()) / kHidden;
          EXPECT_TRUE(stream->Send(HiddenStates::FromFloats(inputs[s][m], rows, DType::kFp32), {},
                                   absl::StrCat(s, "/", m)).ok());
        }
      });
      for (int m = 0; m < kMessages; ++m) {
        auto r = stream->Receive();
        if (!r.ok() || !r->error.ok() || r->request_id != absl::StrCat(s, "/", m)) {
          if (mismatches++ < 5) {
            ADD_FAILURE() << "stream " << s << " message " << m << ": " << r.status() << " "
                          << (r.ok() ? r->error.ToString() + " id " + r->request_id : "");
          }
          continue;
        }
        std::vector<uint32_t> argmax;
        for (const auto& row : r->rows) argmax.push_back(row.argmax_id);
        if (argmax != expected[s][m] && mismatches++ < 5) {
          ADD_FAILURE() << "stream " << s << " message " << m << ": argmax differs";
        }
        ++received;
      }
      sender.join();
      EXPECT_TRUE(stream->Close().ok());
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(mismatches.load(), 0);
  EXPECT_EQ(received.load(), kStreams * kMessages);
}

// Queued work whose call is cancelled, or whose deadline passes, is dropped before compute: the
// server answers CANCELLED / DEADLINE_EXCEEDED and counts it, and the work ahead is unaffected.
TEST_F(E2eTest, CancelledAndExpiredCallsAreDroppedBeforeCompute) {
  // A head big enough that 64-row batches keep the 2-thread CPU backend busy for a while.
  testing::TempDir big;
  constexpr int64_t kBigVocab = 32000, kBigHidden = 4096;  // ~55 ms per 64-row batch with AVX-512
  testing::WriteBf16Checkpoint(big.path(), testing::RandomWeights(kBigVocab, kBigHidden, 5), kBigVocab, kBigHidden);
  options_.head.checkpoint_dir = big.path();
  options_.batcher.max_batch_rows = 64;
  options_.max_rows_per_request = 64;
  StartAndLoad();
  auto channel = grpc::CreateChannel(Target(), grpc::InsecureChannelCredentials());
  auto stub = v1::LmHead::NewStub(channel);
  auto request = [](int64_t rows) {
    v1::LogitsRequest r;
    r.mutable_hidden()->set_rows(static_cast<uint32_t>(rows));
    r.mutable_hidden()->set_dtype(v1::DTYPE_FP32);
    std::vector<float> x(rows * kBigHidden, 0.25f);
    r.mutable_hidden()->set_data(std::string(reinterpret_cast<char*>(x.data()), x.size() * 4));
    return r;
  };
  // Busy work ahead: 4 full batches.
  std::vector<std::thread> busy;
  std::atomic<int> busy_ok{0};
  for (int i = 0; i < 4; ++i) {
    busy.emplace_back([&] {
      grpc::ClientContext ctx;
      v1::LogitsResponse resp;
      if (stub->ComputeLogits(&ctx, request(64), &resp).ok()) ++busy_ok;
    });
  }
  absl::SleepFor(absl::Milliseconds(20));
  grpc::Status cancelled_status, expired_status;
  {
    // First probe: cancelled once the server holds it (4 busy calls + this one in flight).
    grpc::ClientContext ctx;
    v1::LogitsResponse resp;
    std::thread canceller([&] {
      for (int i = 0; i < 500 && InflightRequests() < 5; ++i) absl::SleepFor(absl::Milliseconds(1));
      ctx.TryCancel();
    });
    cancelled_status = stub->ComputeLogits(&ctx, request(1), &resp);
    canceller.join();
  }
  {
    // Second probe: a deadline far shorter than the busy batches still ahead of it.
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(30));
    v1::LogitsResponse resp;
    expired_status = stub->ComputeLogits(&ctx, request(1), &resp);
  }
  for (auto& t : busy) t.join();
  EXPECT_EQ(busy_ok.load(), 4);
  EXPECT_EQ(cancelled_status.error_code(), grpc::StatusCode::CANCELLED);
  EXPECT_EQ(expired_status.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
  // The server dropped both before computing them (a batch ahead takes far longer than 30 ms; the
  // probes arrive while the first one runs, and are checked when the next batch is formed).
  auto both_counted = [&] {
    const std::string text = MetricsText();
    return text.find("lmhead_cancelled_total 1\n") != std::string::npos &&
           text.find("lmhead_deadline_exceeded_total 1\n") != std::string::npos;
  };
  for (int i = 0; i < 200 && !both_counted(); ++i) absl::SleepFor(absl::Milliseconds(10));
  const std::string metrics = MetricsText();
  EXPECT_NE(metrics.find("lmhead_cancelled_total 1\n"), std::string::npos) << metrics;
  EXPECT_NE(metrics.find("lmhead_deadline_exceeded_total 1\n"), std::string::npos) << metrics;
}

// A graceful stop answers every message a stream has delivered, in order, then ends the stream
// with UNAVAILABLE so that the client reconnects elsewhere.
TEST_F(E2eTest, GracefulStopDrainsStreamsThenEndsThemWithUnavailable) {
  StartAndLoad();
  auto stream = client_->OpenStream();
  OutputOptions out;
  out.top_k = 1;
  for (int i = 0; i < 10; ++i) {
    ASSERT_TRUE(stream->Send(HiddenStates::FromFloats(Random(2, i), 2, DType::kFp32), out, std::to_string(i)).ok());
  }
  for (int i = 0; i < 10; ++i) {
    auto r = stream->Receive();
    ASSERT_TRUE(r.ok() && r->error.ok()) << r.status();
    EXPECT_EQ(r->request_id, std::to_string(i));
  }
  for (int i = 10; i < 15; ++i) {
    ASSERT_TRUE(stream->Send(HiddenStates::FromFloats(Random(2, i), 2, DType::kFp32), out, std::to_string(i)).ok());
  }
  std::thread stopper([&] { server_->Shutdown(); });
  int next = 10;
  absl::Status end;
  while (true) {
    auto r = stream->Receive();
    if (!r.ok()) {
      end = r.status();
      break;
    }
    ASSERT_TRUE(r->error.ok()) << r->error;
    EXPECT_EQ(r->request_id, std::to_string(next++)) << "answers stay in order";
  }
  stopper.join();
  EXPECT_LE(next, 15);
  EXPECT_EQ(end.code(), absl::StatusCode::kUnavailable) << end;
}

// Every call the service accepted completes OK during a graceful stop. Calls that race the stop
// are refused with UNAVAILABLE (by the batcher) or CANCELLED (by gRPC, before they reached the
// service); nothing else may happen, and the server's own count of OK calls equals the client's.
TEST_F(E2eTest, GracefulShutdownFinishesAcceptedWork) {
  StartAndLoad();
  std::atomic<int> ok{0}, refused{0}, other{0};
  std::vector<std::thread> callers;
  for (int t = 0; t < 6; ++t) {
    callers.emplace_back([&, t] {
      auto c = LmHeadClient::Connect(Target());
      for (int i = 0; i < 30; ++i) {
        const std::vector<float> x = Random(4, t * 100 + i);
        OutputOptions out;
        out.top_k = 2;
        auto r = c->ComputeLogits(HiddenStates::FromFloats(x, 4, DType::kFp32), out);
        if (r.ok() && r->rows.size() == 4) {
          ++ok;
        } else if (r.status().code() == absl::StatusCode::kUnavailable ||
                   r.status().code() == absl::StatusCode::kCancelled) {
          ++refused;  // sent after the server stopped accepting
        } else {
          ++other;
          ADD_FAILURE() << "unexpected result: " << r.status();
        }
      }
    });
  }
  while (ok.load() < 20) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  server_->Shutdown();
  for (auto& t : callers) t.join();
  EXPECT_EQ(other.load(), 0);
  EXPECT_EQ(ok.load() + refused.load(), 180);
  EXPECT_GE(ok.load(), 20);
  EXPECT_NE(MetricsText().find("lmhead_requests_total{code=\"OK\",rpc=\"ComputeLogits\"} " +
                               std::to_string(ok.load()) + "\n"),
            std::string::npos);
}

}  // namespace
}  // namespace lmhead
