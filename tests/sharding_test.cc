// Vocab shards as separate lmhead-server processes on loopback, merged by ShardedClient, against
// one unsharded server on the same checkpoint: 1-4 shards (uneven splits too), exact ids and
// logprobs within 1e-5, identical seeded samples, a chi-squared test of the sharded sampler,
// sharded streams, and a replica killed mid-load without a lost request.
#include "client/sharded_client.h"

#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cmath>
#include <cstring>
#include <map>
#include <random>
#include <thread>

#include "gtest/gtest.h"
#include "tests/test_util.h"

extern char** environ;

namespace lmhead {
namespace {

using client::HiddenStates;
using client::LmHeadClient;
using client::LogitsResult;
using client::OutputOptions;
using client::SamplingOptions;
using client::ShardedClient;

constexpr int64_t kVocab = 1000, kHidden = 64;

int FreePort() {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a));
  socklen_t len = sizeof(a);
  getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  close(fd);
  return ntohs(a.sin_port);
}

// One lmhead-server process on a free loopback port; SIGTERM (or Kill) ends it.
class ServerProcess {
 public:
  ServerProcess(const std::string& checkpoint, const std::vector<std::string>& flags) : port_(FreePort()) {
    std::vector<std::string> args = {LMHEAD_SERVER_PATH, "--checkpoint=" + checkpoint,
                                     "--listen=127.0.0.1:" + std::to_string(port_), "--metrics_listen=",
                                     "--threads=1", "--backend=cpu"};
    args.insert(args.end(), flags.begin(), flags.end());
    std::vector<char*> argv;
    for (std::string& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0);
    posix_spawn_file_actions_addopen(&actions, 2, "/dev/null", O_WRONLY, 0);
    EXPECT_EQ(posix_spawn(&pid_, argv[0], &actions, nullptr, argv.data(), environ), 0);
    posix_spawn_file_actions_destroy(&actions);
  }
  ~ServerProcess() {
    if (pid_ > 0) {
      kill(pid_, SIGTERM);
      waitpid(pid_, nullptr, 0);
    }
  }
  void Kill() {
    kill(pid_, SIGKILL);
    waitpid(pid_, nullptr, 0);
    pid_ = -1;
  }
  std::string address() const { return "127.0.0.1:" + std::to_string(port_); }
  bool WaitServing() const {
    for (int i = 0; i < 300; ++i) {
      // A fresh channel per try: one that failed before the server listened would back off.
      client::ClientOptions o;
      o.timeout = absl::Milliseconds(500);
      auto s = LmHeadClient::Connect(address(), o)->IsServing();
      if (s.ok() && *s) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    return false;
  }

 private:
  int port_;
  pid_t pid_ = -1;
};

class ShardingTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new testing::TempDir();
    testing::WriteBf16Checkpoint(dir_->path(), testing::RandomWeights(kVocab, kHidden, 21), kVocab, kHidden);
    whole_ = new ServerProcess(dir_->path(), {});
    ASSERT_TRUE(whole_->WaitServing());
    whole_client_ = LmHeadClient::Connect(whole_->address()).release();
  }
  static void TearDownTestSuite() {
    delete whole_client_;
    delete whole_;
    delete dir_;
  }

  // Starts one server per flag set (replicas of a shard share the flags) and connects.
  std::unique_ptr<ShardedClient> StartShards(const std::vector<std::vector<std::string>>& flags, int replicas = 1) {
    std::vector<std::vector<std::string>> addresses;
    for (const auto& f : flags) {
      addresses.emplace_back();
      for (int r = 0; r < replicas; ++r) {
        servers_.push_back(std::make_unique<ServerProcess>(dir_->path(), f));
        addresses.back().push_back(servers_.back()->address());
      }
    }
    for (auto& s : servers_) EXPECT_TRUE(s->WaitServing());
    auto c = ShardedClient::Connect(addresses);
    EXPECT_TRUE(c.ok()) << c.status();
    return c.ok() ? std::move(*c) : nullptr;
  }

  static HiddenStates Hidden(int rows, uint64_t seed, float scale = 20.0f) {
    std::mt19937_64 rng(seed);
    std::normal_distribution<float> n(0, scale);
    std::vector<float> x(rows * kHidden);
    for (float& v : x) v = n(rng);
    return HiddenStates::FromFloats(x, rows, DType::kFp32);
  }

  // Within 1e-5, or the same infinity (masked tokens in processed logprobs).
  static void ExpectNear(float g, float w) {
    if (std::isinf(w)) {
      EXPECT_EQ(g, w);
    } else {
      EXPECT_NEAR(g, w, 1e-5);
    }
  }

  static void ExpectSame(const LogitsResult& got, const LogitsResult& want) {
    ASSERT_EQ(got.rows.size(), want.rows.size());
    for (size_t r = 0; r < got.rows.size(); ++r) {
      const auto& g = got.rows[r];
      const auto& w = want.rows[r];
      EXPECT_EQ(g.argmax_id, w.argmax_id) << "row " << r;
      EXPECT_EQ(g.max_logit, w.max_logit);
      EXPECT_NEAR(g.logsumexp, w.logsumexp, 1e-5);
      EXPECT_EQ(g.top_ids, w.top_ids) << "row " << r;
      ASSERT_EQ(g.top_logprobs.size(), w.top_logprobs.size());
      for (size_t k = 0; k < g.top_logprobs.size(); ++k) ExpectNear(g.top_logprobs[k], w.top_logprobs[k]);
      ASSERT_EQ(g.token_logprobs.size(), w.token_logprobs.size());
      for (size_t k = 0; k < g.token_logprobs.size(); ++k) ExpectNear(g.token_logprobs[k], w.token_logprobs[k]);
      EXPECT_EQ(g.sampled_id, w.sampled_id) << "row " << r;
      if (g.sampled_id) {
        EXPECT_NEAR(g.sampled_logprob, w.sampled_logprob, 1e-5);
        EXPECT_EQ(g.seed, w.seed);
      }
    }
    EXPECT_EQ(got.logits, want.logits);  // the same CPU computation, column for column
  }

  static testing::TempDir* dir_;
  static ServerProcess* whole_;
  static LmHeadClient* whole_client_;
  std::vector<std::unique_ptr<ServerProcess>> servers_;
};

testing::TempDir* ShardingTest::dir_ = nullptr;
ServerProcess* ShardingTest::whole_ = nullptr;
LmHeadClient* ShardingTest::whole_client_ = nullptr;

OutputOptions RichOutput() {
  OutputOptions out;
  out.top_k = 10;
  out.logprob_token_ids = {0, 99, 100, 511, 512, 650, 999};
  out.return_logits = true;
  for (int r = 0; r < 5; ++r) {
    SamplingOptions s;
    s.temperature = r == 0 ? 0.0f : 0.5f + 0.3f * r;
    s.seed = 1000 + r;
    s.step = 3 * r;
    s.logit_bias = {{7, 3.0f}, {900, 2.0f}};
    s.banned_token_ids = {static_cast<uint32_t>(r)};
    s.previous_token_ids = {5, 5, 600};
    s.repetition_penalty = 1.2f;
    s.presence_penalty = 0.1f;
    if (r == 4) s.allowed_token_ids = {10, 20, 30};  // all in the first shard
    out.row_sampling.push_back(s);
  }
  return out;
}

TEST_F(ShardingTest, OneToFourShardsMergeExactlyIncludingUnevenSplits) {
  const std::vector<std::vector<std::vector<std::string>>> layouts = {
      {{"--shard=0/1"}},
      {{"--shard=0/2"}, {"--shard=1/2"}},
      {{"--vocab_range=0:100"}, {"--vocab_range=650:1000"}, {"--vocab_range=100:650"}},  // uneven, any order
      {{"--shard=0/4"}, {"--shard=1/4"}, {"--shard=2/4"}, {"--shard=3/4"}},
  };
  const HiddenStates x = Hidden(5, 1);
  for (OutputOptions out : {RichOutput(), [] {
         OutputOptions o = RichOutput();
         o.processed_logprobs = true;
         return o;
       }()}) {
    auto want = whole_client_->ComputeLogits(x, out);
    ASSERT_TRUE(want.ok()) << want.status();
    for (const auto& layout : layouts) {
      SCOPED_TRACE(::testing::Message() << layout.size() << " shards, processed " << out.processed_logprobs);
      servers_.clear();
      auto sharded = StartShards(layout);
      ASSERT_NE(sharded, nullptr);
      EXPECT_EQ(sharded->model_info().vocab_size, kVocab);
      auto got = sharded->ComputeLogits(x, out);
      ASSERT_TRUE(got.ok()) << got.status();
      ExpectSame(*got, *want);
    }
  }
}

TEST_F(ShardingTest, StreamsWorkSharded) {
  auto sharded = StartShards({{"--shard=0/3"}, {"--shard=1/3"}, {"--shard=2/3"}});
  ASSERT_NE(sharded, nullptr);
  auto stream = sharded->OpenStream();
  for (int step = 0; step < 20; ++step) {
    const HiddenStates x = Hidden(1 + step % 3, 100 + step);
    OutputOptions out;
    out.top_k = 4;
    SamplingOptions s;
    s.seed = 77;
    s.step = step;
    out.sampling = s;
    ASSERT_TRUE(stream->Send(x, out, std::to_string(step)).ok());
    auto got = stream->Receive();
    ASSERT_TRUE(got.ok()) << got.status();
    ASSERT_TRUE(got->error.ok()) << got->error;
    EXPECT_EQ(got->request_id, std::to_string(step));
    auto want = whole_client_->ComputeLogits(x, out);
    ASSERT_TRUE(want.ok());
    ExpectSame(*got, *want);
  }
  // A bad message gets its error; the sharded stream goes on.
  ASSERT_TRUE(stream->Send(HiddenStates::FromFloats(std::vector<float>(3, 1.0f), 1, DType::kFp32), {}, "bad").ok());
  auto bad = stream->Receive();
  ASSERT_TRUE(bad.ok());
  EXPECT_EQ(bad->error.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(stream->Close().ok());
}

// top_k / top_p / min_p need the whole distribution: two rounds, then the same tokens as one server.
TEST_F(ShardingTest, GlobalFiltersTakeTwoRoundsAndMatchOneServer) {
  for (const auto& layout : std::vector<std::vector<std::vector<std::string>>>{
           {{"--shard=0/2"}, {"--shard=1/2"}},
           {{"--vocab_range=0:333"}, {"--vocab_range=333:400"}, {"--vocab_range=400:1000"}}}) {
    servers_.clear();
    auto sharded = StartShards(layout);
    ASSERT_NE(sharded, nullptr);
    const HiddenStates x = Hidden(24, 11, 12.0f);
    OutputOptions out;
    out.top_k = 5;
    for (int r = 0; r < 24; ++r) {
      SamplingOptions s;
      s.seed = 500 + r;
      s.temperature = 0.6f + 0.1f * (r % 5);
      switch (r % 6) {
        case 0: s.top_k = 1 + r; break;
        case 1: s.top_p = 0.5f + 0.02f * r; break;
        case 2: s.min_p = 0.05f * (1 + r % 4); break;
        case 3: s.top_k = 40, s.top_p = 0.8f; break;
        case 4: s.top_k = 100, s.min_p = 0.1f, s.top_p = 0.9f; break;
        case 5: s.top_p = 0.7f, s.logit_bias = {{3, 4.0f}, {990, 4.0f}}, s.banned_token_ids = {7}; break;
      }
      out.row_sampling.push_back(s);
    }
    for (bool processed : {false, true}) {
      out.processed_logprobs = processed;
      auto want = whole_client_->ComputeLogits(x, out);
      auto got = sharded->ComputeLogits(x, out);
      ASSERT_TRUE(want.ok() && got.ok()) << want.status() << got.status();
      ExpectSame(*got, *want);
    }
    auto stream = sharded->OpenStream();
    ASSERT_TRUE(stream->Send(x, out, "s").ok());
    auto streamed = stream->Receive();
    ASSERT_TRUE(streamed.ok()) << streamed.status();
    ExpectSame(*streamed, *whole_client_->ComputeLogits(x, out));
    EXPECT_TRUE(stream->Close().ok());
    // A nucleus wider than the candidates the shards may return is refused, not approximated.
    OutputOptions flat;
    flat.sampling = SamplingOptions{};
    flat.sampling->top_p = 0.99f;
    flat.sampling->temperature = 5.0f;
    auto refused = sharded->ComputeLogits(Hidden(1, 12, 1.0f), flat);
    EXPECT_EQ(refused.status().code(), absl::StatusCode::kOutOfRange) << refused.status();
  }
}

// Wilson-Hilferty upper 0.1% point of chi-squared with df degrees of freedom.
double ChiSquaredCritical(int df) {
  const double z = 3.0902, k = df;
  return k * std::pow(1 - 2 / (9 * k) + z * std::sqrt(2 / (9 * k)), 3);
}

TEST_F(ShardingTest, ShardedSamplerFollowsTheSoftmax) {
  auto sharded = StartShards({{"--shard=0/2"}, {"--shard=1/2"}});
  ASSERT_NE(sharded, nullptr);
  const HiddenStates one = Hidden(1, 5, 6.0f);
  OutputOptions full;
  full.return_logits = true;
  auto ref = whole_client_->ComputeLogits(one, full);
  ASSERT_TRUE(ref.ok());
  const float t = 0.8f;
  std::vector<double> p(kVocab);
  double m = -1e30, sum = 0;
  for (int64_t v = 0; v < kVocab; ++v) m = std::max(m, static_cast<double>(ref->logits[v]) / t);
  for (int64_t v = 0; v < kVocab; ++v) sum += p[v] = std::exp(ref->logits[v] / t - m);
  for (double& q : p) q /= sum;
  // 64 identical rows per request, each with its own seed: 48 requests = 3072 draws.
  std::vector<float> x(64 * kHidden);
  for (int r = 0; r < 64; ++r) std::memcpy(x.data() + r * kHidden, one.data.data(), kHidden * 4);
  const HiddenStates batch = HiddenStates::FromFloats(x, 64, DType::kFp32);
  std::vector<int> counts(kVocab, 0);
  int draws = 0;
  for (int q = 0; q < 48; ++q) {
    OutputOptions out;
    for (int r = 0; r < 64; ++r) {
      SamplingOptions s;
      s.temperature = t;
      s.seed = 1 + q * 64 + r;
      out.row_sampling.push_back(s);
    }
    auto got = sharded->ComputeLogits(batch, out);
    ASSERT_TRUE(got.ok()) << got.status();
    for (const auto& row : got->rows) ++counts[*row.sampled_id], ++draws;
  }
  // Tokens expected at least 5 times each get a bin; the rest share one.
  double chi2 = 0, rest_expected = 0, rest_seen = 0;
  int bins = 0;
  for (int64_t v = 0; v < kVocab; ++v) {
    const double e = p[v] * draws;
    if (e >= 5) {
      chi2 += (counts[v] - e) * (counts[v] - e) / e;
      ++bins;
    } else {
      rest_expected += e;
      rest_seen += counts[v];
    }
  }
  if (rest_expected >= 5) {
    chi2 += (rest_seen - rest_expected) * (rest_seen - rest_expected) / rest_expected;
    ++bins;
  }
  ASSERT_GE(bins, 5) << "the test distribution is too peaked to test";
  EXPECT_LT(chi2, ChiSquaredCritical(bins - 1)) << bins << " bins";
}

TEST_F(ShardingTest, KillingAReplicaMidLoadLosesNoRequest) {
  auto sharded = StartShards({{"--shard=0/2"}, {"--shard=1/2"}}, /*replicas=*/2);
  ASSERT_NE(sharded, nullptr);
  OutputOptions out;
  out.top_k = 5;
  std::atomic<int> done{0}, failed{0}, mismatched{0};
  std::vector<std::thread> workers;
  for (int w = 0; w < 4; ++w) {
    workers.emplace_back([&, w] {
      for (int i = 0; i < 50; ++i) {
        const HiddenStates x = Hidden(2, 1000 * w + i);
        auto got = sharded->ComputeLogits(x, out);
        auto want = whole_client_->ComputeLogits(x, out);
        if (!got.ok() || !want.ok()) {
          ++failed;
          ADD_FAILURE() << got.status();
        } else if (got->rows[0].top_ids != want->rows[0].top_ids || got->rows[1].top_ids != want->rows[1].top_ids) {
          ++mismatched;
        }
        ++done;
      }
    });
  }
  while (done.load() < 40) std::this_thread::sleep_for(std::chrono::milliseconds(2));
  servers_[0]->Kill();  // one replica of shard 0, mid-load
  for (auto& t : workers) t.join();
  EXPECT_EQ(done.load(), 200);
  EXPECT_EQ(failed.load(), 0);
  EXPECT_EQ(mismatched.load(), 0);
  // With every replica of a range gone, requests fail naming the range.
  servers_[2]->Kill();
  servers_[3]->Kill();
  auto lost = sharded->ComputeLogits(Hidden(1, 9), out);
  EXPECT_EQ(lost.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_NE(lost.status().message().find("vocab range [512, 1000) has no live replica"), std::string::npos)
      << lost.status();
}

}  // namespace
}  // namespace lmhead
