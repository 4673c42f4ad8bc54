#include "service/rpc/request_codec.h"

#include <cmath>
#include <cstring>
#include <functional>
#include <limits>

#include "gtest/gtest.h"
#include "kernels/half.h"

namespace lmhead {
namespace {

RequestLimits Limits() {
  RequestLimits l;
  l.vocab = 100;
  l.hidden = 4;
  l.max_rows = 8;
  l.max_top_k = 10;
  l.max_logprob_token_ids = 3;
  l.max_message_bytes = 8 * 100 * 2;  // 8 rows of bf16 logits
  return l;
}

v1::LogitsRequest Fp32Request(int rows, std::vector<float> values = {}) {
  if (values.empty()) values.assign(rows * 4, 0.25f);
  v1::LogitsRequest r;
  r.set_request_id("id");
  r.mutable_hidden()->set_rows(rows);
  r.mutable_hidden()->set_dtype(v1::DTYPE_FP32);
  r.mutable_hidden()->set_data(std::string(reinterpret_cast<const char*>(values.data()), values.size() * 4));
  return r;
}

std::string DecodeError(const v1::LogitsRequest& r) {
  Task task;
  ResponseMapping dtype;
  absl::Status s = DecodeLogitsRequest(r, Limits(), &task, &dtype);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  return std::string(s.message());
}

TEST(RequestCodecTest, DecodesEveryDType) {
  const std::vector<float> values = {1.5f, -2.0f, 0.375f, 1e-3f};
  for (auto [proto, dtype] : {std::pair{v1::DTYPE_FP32, DType::kFp32}, std::pair{v1::DTYPE_BF16, DType::kBf16},
                              std::pair{v1::DTYPE_FP16, DType::kFp16}}) {
    v1::LogitsRequest r;
    r.mutable_hidden()->set_rows(1);
    r.mutable_hidden()->set_dtype(proto);
    std::string data;
    for (float v : values) {
      if (dtype == DType::kFp32) {
        data.append(reinterpret_cast<const char*>(&v), 4);
      } else {
        const uint16_t h = dtype == DType::kBf16 ? FloatToBf16(v) : FloatToHalf(v);
        data.push_back(static_cast<char>(h & 0xff));
        data.push_back(static_cast<char>(h >> 8));
      }
    }
    r.mutable_hidden()->set_data(data);
    r.mutable_output()->set_top_k(3);
    r.mutable_output()->add_logprob_token_ids(99);
    Task task;
    ResponseMapping logits_dtype;
    ASSERT_TRUE(DecodeLogitsRequest(r, Limits(), &task, &logits_dtype).ok());
    EXPECT_EQ(task.rows, 1);
    EXPECT_EQ(task.top_k, 3u);
    EXPECT_EQ(task.token_ids, std::vector<uint32_t>{99});
    for (int i = 0; i < 4; ++i) {
      const float expected = dtype == DType::kFp32 ? values[i]
                             : dtype == DType::kBf16 ? Bf16ToFloat(FloatToBf16(values[i]))
                                                     : HalfToFloat(FloatToHalf(values[i]));
      EXPECT_EQ(task.hidden[i], expected);
    }
    // BF16 rows are also kept as they came (a backend may read them as bf16: half the bytes).
    if (dtype == DType::kBf16) {
      ASSERT_EQ(task.hidden_bf16.size(), values.size());
      for (int i = 0; i < 4; ++i) EXPECT_EQ(task.hidden_bf16[i], FloatToBf16(values[i]));
    } else {
      EXPECT_TRUE(task.hidden_bf16.empty());
    }
  }
}

TEST(RequestCodecTest, EveryValidationErrorNamesTheProblem) {
  v1::LogitsRequest r = Fp32Request(1);
  r.clear_hidden();
  EXPECT_EQ(DecodeError(r), "hidden is missing");

  EXPECT_EQ(DecodeError(Fp32Request(0)), "hidden.rows must be at least 1");
  EXPECT_NE(DecodeError(Fp32Request(9)).find("hidden.rows is 9, over the server's limit of 8"), std::string::npos);

  r = Fp32Request(1);
  r.mutable_hidden()->set_dtype(v1::DTYPE_UNSPECIFIED);
  EXPECT_NE(DecodeError(r).find("hidden.dtype is unspecified"), std::string::npos);
  r.mutable_hidden()->set_dtype(static_cast<v1::DType>(9));
  EXPECT_NE(DecodeError(r).find("hidden.dtype 9 is not a known DType"), std::string::npos);

  r = Fp32Request(2, std::vector<float>(2 * 5, 0.1f));  // rows of 5 values, hidden_size is 4
  EXPECT_NE(DecodeError(r).find("rows of 5 elements but the model's hidden_size is 4"), std::string::npos);
  r = Fp32Request(1);
  r.mutable_hidden()->mutable_data()->append("xyz");
  EXPECT_NE(DecodeError(r).find("hidden.data has 19 bytes; expected rows (1) x hidden_size (4) x 4 bytes (fp32) = 16"),
            std::string::npos);

  r = Fp32Request(1);
  r.mutable_output()->set_top_k(101);
  EXPECT_NE(DecodeError(r).find("output.top_k 101 exceeds the vocab size 100"), std::string::npos);
  r.mutable_output()->set_top_k(11);
  EXPECT_NE(DecodeError(r).find("output.top_k 11 exceeds the server's limit of 10"), std::string::npos);

  r = Fp32Request(1);
  r.mutable_output()->add_logprob_token_ids(5);
  r.mutable_output()->add_logprob_token_ids(100);
  EXPECT_NE(DecodeError(r).find("output.logprob_token_ids[1] = 100 is out of range for vocab size 100"),
            std::string::npos);
  for (int i = 0; i < 3; ++i) r.mutable_output()->add_logprob_token_ids(1);
  EXPECT_NE(DecodeError(r).find("has 5 ids, over the server's limit of 3"), std::string::npos);

  r = Fp32Request(8);
  r.mutable_output()->set_return_logits(true);  // fp32: 8 x 100 x 4 > 1600
  EXPECT_NE(DecodeError(r).find("over the server's max message size"), std::string::npos);
  r.mutable_output()->set_logits_dtype(v1::DTYPE_BF16);
  Task task;
  ResponseMapping dtype;
  EXPECT_TRUE(DecodeLogitsRequest(r, Limits(), &task, &dtype).ok());
  EXPECT_EQ(dtype.logits_dtype, DType::kBf16);
  r.mutable_output()->set_logits_dtype(static_cast<v1::DType>(7));
  EXPECT_NE(DecodeError(r).find("output.logits_dtype 7"), std::string::npos);

  std::vector<float> values(3 * 4, 0.5f);
  values[2 * 4 + 3] = std::numeric_limits<float>::quiet_NaN();
  EXPECT_EQ(DecodeError(Fp32Request(3, values)), "hidden state row 2 has a non-finite value (NaN) at column 3");
  values[2 * 4 + 3] = 0;
  values[1 * 4 + 0] = -std::numeric_limits<float>::infinity();
  EXPECT_EQ(DecodeError(Fp32Request(3, values)), "hidden state row 1 has a non-finite value (Inf) at column 0");
}

TEST(RequestCodecTest, EncodesRowsLogprobsAndLogits) {
  TaskResult result;
  RowOutput row;
  row.argmax_id = 4;
  row.max_logit = 2.0f;
  row.logsumexp = 3.0f;
  row.logprob_lse = 3.0f;
  row.top_ids = {4, 1};
  row.top_logits = {2.0f, 1.0f};
  row.token_logits = {0.5f};
  row.logits = {1.0f, 1.0f, 0.0f, -1.0f, 2.0f};
  result.rows.push_back(row);
  result.queue_time = absl::Microseconds(12);
  result.compute_time = absl::Microseconds(34);
  result.batch_rows = 7;
  v1::LogitsResponse resp;
  ResponseMapping mapping;
  mapping.request_id = "abc";
  mapping.return_logits = true;
  mapping.logits_dtype = DType::kBf16;
  mapping.token_slots = {0};
  EncodeLogitsResponse(mapping, result, &resp);
  EXPECT_EQ(resp.request_id(), "abc");
  ASSERT_EQ(resp.rows_size(), 1);
  EXPECT_EQ(resp.rows(0).argmax_id(), 4u);
  EXPECT_EQ(resp.rows(0).top_logprobs(0), -1.0f);
  EXPECT_EQ(resp.rows(0).top_logprobs(1), -2.0f);
  EXPECT_EQ(resp.rows(0).token_logprobs(0), -2.5f);
  EXPECT_EQ(resp.logits_dtype(), v1::DTYPE_BF16);
  ASSERT_EQ(resp.logits().size(), 10u);
  EXPECT_EQ(static_cast<uint8_t>(resp.logits()[9]), 0x40);  // bf16 2.0 = 0x4000, little-endian
  EXPECT_EQ(resp.timing().queue_us(), 12u);
  EXPECT_EQ(resp.timing().compute_us(), 34u);
  EXPECT_EQ(resp.timing().batch_rows(), 7u);
}

}  // namespace
}  // namespace lmhead

namespace lmhead {
namespace {

// Every invalid sampling parameter is refused with INVALID_ARGUMENT naming its field.
TEST(RequestCodecTest, RefusesInvalidSamplingNamingTheField) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  struct Case {
    std::function<void(v1::SamplingParams*)> set;
    std::string expected;
  };
  const std::vector<Case> cases = {
      {[](auto* p) { p->set_temperature(-0.5f); }, "sampling.temperature = -0.5 must be in [0, 100]"},
      {[&](auto* p) { p->set_temperature(nan); }, "sampling.temperature = nan"},
      {[](auto* p) { p->set_top_p(0.0f); }, "sampling.top_p = 0 must be in (0, 1]"},
      {[](auto* p) { p->set_top_p(1.5f); }, "sampling.top_p = 1.5 must be in (0, 1]"},
      {[&](auto* p) { p->set_top_p(nan); }, "sampling.top_p = nan"},
      {[](auto* p) { p->set_min_p(-0.1f); }, "sampling.min_p = -0.1 must be in [0, 1]"},
      {[](auto* p) { p->set_min_p(1.01f); }, "sampling.min_p = 1.01 must be in [0, 1]"},
      {[](auto* p) { p->set_top_k(101); }, "sampling.top_k = 101 exceeds 100"},
      {[](auto* p) { (*p->mutable_logit_bias())[100] = 1.0f; }, "sampling.logit_bias key 100 is out of range"},
      {[](auto* p) { (*p->mutable_logit_bias())[3] = 101.0f; }, "sampling.logit_bias[3] = 101 must be in [-100, 100]"},
      {[&](auto* p) { (*p->mutable_logit_bias())[3] = nan; }, "sampling.logit_bias[3] = nan"},
      {[](auto* p) { p->add_allowed_token_ids(5), p->add_allowed_token_ids(100); },
       "sampling.allowed_token_ids[1] = 100 is out of range for vocab size 100"},
      {[](auto* p) { p->add_banned_token_ids(250); }, "sampling.banned_token_ids[0] = 250 is out of range"},
      {[](auto* p) { p->add_allowed_token_ids(5), p->add_banned_token_ids(5); },
       "sampling.banned_token_ids exclude every allowed token"},
      {[](auto* p) { p->set_repetition_penalty(0.0f); }, "sampling.repetition_penalty = 0 must be in (0, 10]"},
      {[](auto* p) { p->set_presence_penalty(2.5f); }, "sampling.presence_penalty = 2.5 must be in [-2, 2]"},
      {[&](auto* p) { p->set_frequency_penalty(nan); }, "sampling.frequency_penalty = nan"},
      {[](auto* p) { p->add_previous_token_ids(1), p->add_previous_token_ids(1000); },
       "sampling.previous_token_ids[1] = 1000 is out of range"},
  };
  for (const Case& c : cases) {
    v1::LogitsRequest r = Fp32Request(1);
    c.set(r.mutable_sampling());
    EXPECT_EQ(DecodeError(r).rfind(c.expected, 0), 0u) << DecodeError(r) << "\n  expected: " << c.expected;
  }
  // Per-row settings name their row; their count must match the rows.
  v1::LogitsRequest r = Fp32Request(2);
  r.add_row_sampling();
  EXPECT_EQ(DecodeError(r), "row_sampling has 1 entries for 2 rows; it needs one per row");
  r.add_row_sampling()->set_min_p(2.0f);
  EXPECT_EQ(DecodeError(r).rfind("row_sampling[1].min_p = 2", 0), 0u) << DecodeError(r);
  r.mutable_sampling();
  EXPECT_EQ(DecodeError(r), "set either sampling (every row) or row_sampling (one per row), not both");
  v1::LogitsRequest mode = Fp32Request(1);
  mode.mutable_output()->set_logprobs_mode(static_cast<v1::LogprobsMode>(7));
  EXPECT_EQ(DecodeError(mode), "output.logprobs_mode 7 is not a known LogprobsMode");
}

TEST(RequestCodecTest, DecodesSamplingIntoSortedSpecs) {
  v1::LogitsRequest r = Fp32Request(2);
  v1::SamplingParams* p = r.mutable_sampling();
  p->set_temperature(5e-6f);  // below 1e-5: greedy, as vLLM
  p->set_seed(17);
  p->set_step(4);
  p->add_banned_token_ids(9), p->add_banned_token_ids(2), p->add_banned_token_ids(9);
  for (uint32_t id : {7u, 3u, 7u, 7u}) p->add_previous_token_ids(id);
  (*p->mutable_logit_bias())[50] = -2.0f;
  (*p->mutable_logit_bias())[4] = 1.0f;
  r.mutable_output()->set_logprobs_mode(v1::LOGPROBS_MODE_PROCESSED);
  Task task;
  ResponseMapping dtype;
  ASSERT_TRUE(DecodeLogitsRequest(r, Limits(), &task, &dtype).ok());
  ASSERT_EQ(task.sampling.size(), 1u);
  const SamplingSpec& s = task.sampling[0];
  EXPECT_TRUE(s.greedy());
  EXPECT_EQ(s.seed, 17u);
  EXPECT_EQ(s.step, 4u);
  EXPECT_EQ(s.banned_token_ids, (std::vector<uint32_t>{2, 9}));
  EXPECT_EQ(s.previous_counts, (std::vector<std::pair<uint32_t, uint32_t>>{{3, 1}, {7, 3}}));
  EXPECT_EQ(s.logit_bias, (std::vector<std::pair<uint32_t, float>>{{4, 1.0f}, {50, -2.0f}}));
  EXPECT_TRUE(task.processed_logprobs);
  EXPECT_EQ(task.SamplingOf(1), &task.sampling[0]);
  // No seed: the server draws one per request.
  v1::LogitsRequest unseeded = Fp32Request(1);
  unseeded.mutable_sampling();
  Task a, b;
  ASSERT_TRUE(DecodeLogitsRequest(unseeded, Limits(), &a, &dtype).ok());
  ASSERT_TRUE(DecodeLogitsRequest(unseeded, Limits(), &b, &dtype).ok());
  EXPECT_NE(a.sampling[0].seed, b.sampling[0].seed);
  EXPECT_EQ(a.sampling[0].temperature, 1.0f);
  EXPECT_EQ(a.sampling[0].top_p, 1.0f);
}

}  // namespace
}  // namespace lmhead
