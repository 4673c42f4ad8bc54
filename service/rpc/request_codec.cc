#include "service/rpc/request_codec.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <iterator>
#include <limits>

#include "absl/strings/str_cat.h"
#include "kernels/half.h"
#include "kernels/status_macros.h"
#include "proto/dtype_codec.h"
#include "service/rpc/sampling_codec.h"

namespace lmhead {
namespace {

absl::Status Invalid(const std::string& message) { return absl::InvalidArgumentError(message); }

float LoadElement(DType d, const uint8_t* p) {
  switch (d) {
    case DType::kFp32: { float f; std::memcpy(&f, p, 4); return f; }
    case DType::kBf16: return Bf16ToFloat(static_cast<uint16_t>(p[0] | (p[1] << 8)));
    case DType::kFp16: return HalfToFloat(static_cast<uint16_t>(p[0] | (p[1] << 8)));
  }
  return NAN;
}

void StoreLogits(DType d, const std::vector<float>& logits, std::string* out) {
  const size_t base = out->size();
  out->resize(base + logits.size() * DTypeSize(d));
  uint8_t* p = reinterpret_cast<uint8_t*>(out->data() + base);
  if (d == DType::kFp32) {
    std::memcpy(p, logits.data(), logits.size() * 4);
    return;
  }
  for (size_t i = 0; i < logits.size(); ++i) {
    const uint16_t h = d == DType::kBf16 ? FloatToBf16(logits[i]) : FloatToHalf(logits[i]);
    p[2 * i] = static_cast<uint8_t>(h);
    p[2 * i + 1] = static_cast<uint8_t>(h >> 8);
  }
}

// Keeps the ids of `ids` (sorted, global) that fall in [begin, end), as local ids.
std::vector<uint32_t> LocalIds(const std::vector<uint32_t>& ids, int64_t begin, int64_t end) {
  std::vector<uint32_t> out;
  for (uint32_t id : ids) {
    if (id >= begin && id < end) out.push_back(static_cast<uint32_t>(id - begin));
  }
  return out;
}

// Restricts a validated spec to the served rows [begin, end). Returns false when no token of
// those rows can be chosen (all outside the allowed list, or all banned): the row then samples
// nothing here and another shard's candidate wins.
bool LocalizeSampling(int64_t begin, int64_t end, SamplingSpec* s) {
  const bool had_allowed = !s->allowed_token_ids.empty();
  s->allowed_token_ids = LocalIds(s->allowed_token_ids, begin, end);
  s->banned_token_ids = LocalIds(s->banned_token_ids, begin, end);
  std::vector<std::pair<uint32_t, float>> bias;
  for (const auto& [id, b] : s->logit_bias) {
    if (id >= begin && id < end) bias.emplace_back(static_cast<uint32_t>(id - begin), b);
  }
  s->logit_bias = std::move(bias);
  std::vector<std::pair<uint32_t, uint32_t>> counts;
  for (const auto& [id, c] : s->previous_counts) {
    if (id >= begin && id < end) counts.emplace_back(static_cast<uint32_t>(id - begin), c);
  }
  s->previous_counts = std::move(counts);
  s->token_offset = static_cast<uint32_t>(begin);
  if (had_allowed) {
    std::vector<uint32_t> left;
    std::set_difference(s->allowed_token_ids.begin(), s->allowed_token_ids.end(), s->banned_token_ids.begin(),
                        s->banned_token_ids.end(), std::back_inserter(left));
    return !left.empty();
  }
  return static_cast<int64_t>(s->banned_token_ids.size()) < end - begin;
}

}  // namespace

absl::Status DecodeLogitsRequest(const v1::LogitsRequest& request, const RequestLimits& limits,
                                 Task* task, ResponseMapping* mapping) {
  const v1::HiddenStates& hs = request.hidden();
  const v1::OutputSpec& spec = request.output();
  if (!request.has_hidden()) return Invalid("hidden is missing");
  if (hs.rows() == 0) return Invalid("hidden.rows must be at least 1");
  if (hs.rows() > limits.max_rows) {
    return Invalid(absl::StrCat("hidden.rows is ", hs.rows(), ", over the server's limit of ",
                                limits.max_rows, " rows per request"));
  }
  DType dtype;
  if (hs.dtype() == v1::DTYPE_UNSPECIFIED) {
    return Invalid("hidden.dtype is unspecified; set DTYPE_FP32, DTYPE_BF16 or DTYPE_FP16");
  }
  if (!FromProto(hs.dtype(), &dtype)) {
    return Invalid(absl::StrCat("hidden.dtype ", static_cast<int>(hs.dtype()), " is not a known DType"));
  }
  const size_t elem = DTypeSize(dtype);
  const uint64_t expected = uint64_t{hs.rows()} * limits.hidden * elem;
  if (hs.data().size() != expected) {
    const uint64_t per_row = uint64_t{hs.rows()} * elem;
    if (hs.data().size() % per_row == 0) {
      return Invalid(absl::StrCat("hidden.data holds rows of ", hs.data().size() / per_row,
                                  " elements but the model's hidden_size is ", limits.hidden));
    }
    return Invalid(absl::StrCat("hidden.data has ", hs.data().size(), " bytes; expected rows (",
                                hs.rows(), ") x hidden_size (", limits.hidden, ") x ", elem,
                                " bytes (", DTypeName(dtype), ") = ", expected));
  }

  if (spec.top_k() > limits.vocab) {
    return Invalid(absl::StrCat("output.top_k ", spec.top_k(), " exceeds the vocab size ", limits.vocab));
  }
  if (spec.top_k() > limits.max_top_k) {
    return Invalid(absl::StrCat("output.top_k ", spec.top_k(), " exceeds the server's limit of ",
                                limits.max_top_k));
  }
  if (static_cast<uint32_t>(spec.logprob_token_ids_size()) > limits.max_logprob_token_ids) {
    return Invalid(absl::StrCat("output.logprob_token_ids has ", spec.logprob_token_ids_size(),
                                " ids, over the server's limit of ", limits.max_logprob_token_ids));
  }
  for (int i = 0; i < spec.logprob_token_ids_size(); ++i) {
    if (spec.logprob_token_ids(i) >= limits.vocab) {
      return Invalid(absl::StrCat("output.logprob_token_ids[", i, "] = ", spec.logprob_token_ids(i),
                                  " is out of range for vocab size ", limits.vocab));
    }
  }
  const int64_t vocab_end = limits.vocab_end > 0 ? limits.vocab_end : limits.vocab;
  const int64_t served = vocab_end - limits.vocab_begin;
  mapping->request_id = request.request_id();
  mapping->return_logits = spec.return_logits();
  mapping->logits_dtype = DType::kFp32;
  mapping->id_offset = static_cast<uint32_t>(limits.vocab_begin);
  DType* logits_dtype = &mapping->logits_dtype;
  if (spec.return_logits()) {
    if (spec.logits_dtype() != v1::DTYPE_UNSPECIFIED && !FromProto(spec.logits_dtype(), logits_dtype)) {
      return Invalid(absl::StrCat("output.logits_dtype ", static_cast<int>(spec.logits_dtype()),
                                  " is not a known DType"));
    }
    const int64_t bytes = int64_t{hs.rows()} * served * DTypeSize(*logits_dtype);
    if (bytes > limits.max_message_bytes) {
      return Invalid(absl::StrCat("the requested logits are ", bytes,
                                  " bytes, over the server's max message size of ",
                                  limits.max_message_bytes,
                                  "; request fewer rows per call or bf16 logits"));
    }
  }

  if (spec.logprobs_mode() != v1::LOGPROBS_MODE_RAW && spec.logprobs_mode() != v1::LOGPROBS_MODE_PROCESSED) {
    return Invalid(absl::StrCat("output.logprobs_mode ", static_cast<int>(spec.logprobs_mode()),
                                " is not a known LogprobsMode"));
  }
  const SamplingLimits sampling_limits{limits.vocab, static_cast<uint32_t>(std::min<int64_t>(
                                                         limits.max_sampling_top_k, served))};
  task->sampling.clear();
  if (request.has_sampling() && request.row_sampling_size() > 0) {
    return Invalid("set either sampling (every row) or row_sampling (one per row), not both");
  }
  if (request.has_sampling()) {
    task->sampling.resize(1);
    RETURN_IF_ERROR(DecodeSamplingParams(request.sampling(), "sampling", sampling_limits, &task->sampling[0]));
  } else if (request.row_sampling_size() > 0) {
    if (static_cast<uint32_t>(request.row_sampling_size()) != hs.rows()) {
      return Invalid(absl::StrCat("row_sampling has ", request.row_sampling_size(), " entries for ", hs.rows(),
                                  " rows; it needs one per row"));
    }
    task->sampling.resize(hs.rows());
    for (int r = 0; r < request.row_sampling_size(); ++r) {
      RETURN_IF_ERROR(DecodeSamplingParams(request.row_sampling(r), absl::StrCat("row_sampling[", r, "]"),
                                           sampling_limits, &task->sampling[r]));
    }
  }
  task->processed_logprobs = spec.logprobs_mode() == v1::LOGPROBS_MODE_PROCESSED;
  mapping->seeds.clear();
  for (const SamplingSpec& s : task->sampling) mapping->seeds.push_back(s.seed);
  task->sampling_skipped.assign(task->sampling.size(), 0);
  mapping->processed_empty.clear();
  if (served != limits.vocab) {
    for (size_t i = 0; i < task->sampling.size(); ++i) {
      task->sampling_skipped[i] = LocalizeSampling(limits.vocab_begin, vocab_end, &task->sampling[i]) ? 0 : 1;
    }
    if (task->processed_logprobs && !task->sampling.empty()) {
      for (uint32_t r = 0; r < hs.rows(); ++r) {
        mapping->processed_empty.push_back(task->sampling_skipped[task->sampling.size() == 1 ? 0 : r]);
      }
    }
  }

  task->rows = hs.rows();
  task->hidden.resize(task->rows * limits.hidden);
  const uint8_t* data = reinterpret_cast<const uint8_t*>(hs.data().data());
  task->hidden_bf16.clear();
  if (dtype == DType::kBf16) {
    task->hidden_bf16.resize(task->hidden.size());
    std::memcpy(task->hidden_bf16.data(), data, task->hidden_bf16.size() * sizeof(uint16_t));  // little-endian
  }
  for (int64_t r = 0; r < task->rows; ++r) {
    for (int64_t c = 0; c < limits.hidden; ++c) {
      const int64_t i = r * limits.hidden + c;
      const float v = LoadElement(dtype, data + i * elem);
      if (!std::isfinite(v)) {
        return Invalid(absl::StrCat("hidden state row ", r, " has a non-finite value (",
                                    std::isnan(v) ? "NaN" : "Inf", ") at column ", c));
      }
      task->hidden[i] = v;
    }
  }
  task->top_k = static_cast<uint32_t>(std::min<int64_t>(spec.top_k(), served));
  task->token_ids.clear();
  mapping->token_slots.clear();
  for (uint32_t id : spec.logprob_token_ids()) {
    const bool here = id >= limits.vocab_begin && id < vocab_end;
    mapping->token_slots.push_back(here ? static_cast<int32_t>(task->token_ids.size()) : -1);
    if (here) task->token_ids.push_back(static_cast<uint32_t>(id - limits.vocab_begin));
  }
  task->want_logits = spec.return_logits();
  return absl::OkStatus();
}

void EncodeLogitsResponse(const ResponseMapping& mapping, TaskResult& result, v1::LogitsResponse* response) {
  const bool return_logits = mapping.return_logits;
  const DType logits_dtype = mapping.logits_dtype;
  const std::vector<uint64_t>& seeds = mapping.seeds;
  const uint32_t offset = mapping.id_offset;
  response->set_request_id(mapping.request_id);
  if (return_logits) {
    response->set_logits_dtype(ToProto(logits_dtype));
    response->mutable_logits()->reserve(result.rows.size() * (result.rows.empty() ? 0 : result.rows[0].logits.size()) *
                                        DTypeSize(logits_dtype));
  }
  for (size_t r = 0; r < result.rows.size(); ++r) {
    RowOutput& row = result.rows[r];
    v1::RowResult* out = response->add_rows();
    // No processed mass here (a shard without admissible tokens): every processed logit is -inf.
    const bool empty = r < mapping.processed_empty.size() && mapping.processed_empty[r];
    constexpr float kNegInf = -std::numeric_limits<float>::infinity();
    if (empty) {
      row.top_ids.clear();
      row.top_logits.clear();
    }
    out->set_argmax_id(row.argmax_id + offset);
    out->set_max_logit(row.max_logit);
    out->set_logsumexp(row.logsumexp);
    for (size_t i = 0; i < row.top_ids.size(); ++i) {
      out->add_top_ids(row.top_ids[i] + offset);
      out->add_top_logits(row.top_logits[i]);
      out->add_top_logprobs(row.top_logits[i] - row.logprob_lse);
    }
    for (int32_t slot : mapping.token_slots) {
      out->add_token_logprobs(slot < 0 ? std::numeric_limits<float>::quiet_NaN()
                              : empty  ? kNegInf
                                       : row.token_logits[slot] - row.logprob_lse);
    }
    out->set_logprob_logsumexp(empty ? kNegInf : row.logprob_lse);
    if (row.sampled) {
      out->set_sampled_id(row.sampled_id + offset);
      out->set_sampled_logprob(row.sampled_logprob);
      out->set_sampled_score(row.sampled_score);
      if (!seeds.empty()) out->set_seed(seeds.size() == 1 ? seeds[0] : seeds[r]);
    }
    if (return_logits) {
      StoreLogits(logits_dtype, row.logits, response->mutable_logits());
      std::vector<float>().swap(row.logits);
    }
  }
  v1::Timing* timing = response->mutable_timing();
  timing->set_queue_us(static_cast<uint64_t>(absl::ToInt64Microseconds(result.queue_time)));
  timing->set_compute_us(static_cast<uint64_t>(absl::ToInt64Microseconds(result.compute_time)));
  timing->set_batch_rows(static_cast<uint32_t>(result.batch_rows));
}

void EncodeErrorResponse(const std::string& request_id, const absl::Status& status,
                         v1::LogitsResponse* response) {
  response->Clear();
  response->set_request_id(request_id);
  response->mutable_error()->set_code(static_cast<int32_t>(status.code()));
  response->mutable_error()->set_message(std::string(status.message()));
}

}  // namespace lmhead
