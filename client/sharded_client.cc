#include "client/sharded_client.h"

#include <algorithm>
#include <deque>
#include <future>
#include <mutex>
#include <random>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "client/shard_filters.h"

namespace lmhead::client {
namespace {

// Errors after which another replica may succeed.
bool Retryable(const absl::Status& s) {
  return absl::IsUnavailable(s) || absl::IsDeadlineExceeded(s) || absl::IsResourceExhausted(s) ||
         absl::IsCancelled(s) || absl::IsFailedPrecondition(s) || absl::IsUnknown(s) || absl::IsInternal(s);
}

std::string RangeText(const ShardRange& r) { return absl::StrCat("[", r.begin, ", ", r.end, ")"); }

}  // namespace

std::vector<std::vector<std::string>> ParseShardList(const std::string& text) {
  std::vector<std::vector<std::string>> shards;
  for (absl::string_view shard : absl::StrSplit(text, ';', absl::SkipEmpty())) {
    shards.emplace_back();
    for (absl::string_view replica : absl::StrSplit(shard, ',', absl::SkipEmpty())) shards.back().emplace_back(replica);
  }
  return shards;
}

absl::StatusOr<std::unique_ptr<ShardedClient>> ShardedClient::Connect(const std::vector<std::vector<std::string>>& shards,
                                                                      const ClientOptions& options) {
  if (shards.empty()) return absl::InvalidArgumentError("no shards given");
  std::unique_ptr<ShardedClient> c(new ShardedClient());
  int64_t weight_bytes = 0, reference_bytes = 0;  // summed over shards
  for (const std::vector<std::string>& addresses : shards) {
    if (addresses.empty()) return absl::InvalidArgumentError("a shard has no replica addresses");
    auto shard = std::make_unique<Shard>();
    shard->addresses = addresses;
    std::vector<std::string> failures;
    bool known = false;
    for (const std::string& address : addresses) {
      shard->replicas.push_back(LmHeadClient::Connect(address, options));
      if (known) continue;
      auto info = shard->replicas.back()->GetModelInfo();
      if (!info.ok()) {
        failures.push_back(absl::StrCat(address, ": ", info.status().message()));
        continue;
      }
      known = true;
      shard->range = {info->vocab_begin, info->vocab_end > 0 ? info->vocab_end : info->vocab_size};
      weight_bytes += info->weight_bytes;
      reference_bytes += info->reference_bytes;
      if (c->info_.vocab_size == 0) {
        c->info_ = *info;
      } else if (info->vocab_size != c->info_.vocab_size || info->hidden_size != c->info_.hidden_size) {
        return absl::InvalidArgumentError(absl::StrCat(address, " serves a [", info->vocab_size, ", ",
                                                       info->hidden_size, "] head; another shard a [",
                                                       c->info_.vocab_size, ", ", c->info_.hidden_size, "] one"));
      }
    }
    if (!known) {
      return absl::UnavailableError(absl::StrCat("no replica of a shard answers: ", absl::StrJoin(failures, "; ")));
    }
    c->shards_.push_back(std::move(shard));
  }
  std::sort(c->shards_.begin(), c->shards_.end(),
            [](const auto& a, const auto& b) { return a->range.begin < b->range.begin; });
  int64_t expected = 0;
  for (const auto& shard : c->shards_) {
    if (shard->range.begin != expected) {
      return absl::InvalidArgumentError(absl::StrCat("the shards do not tile the vocabulary: ",
                                                     RangeText(shard->range), " follows rows up to ", expected));
    }
    expected = shard->range.end;
    c->ranges_.push_back(shard->range);
  }
  if (expected != c->info_.vocab_size) {
    return absl::InvalidArgumentError(absl::StrCat("the shards cover rows [0, ", expected, ") of a ",
                                                   c->info_.vocab_size, "-row head"));
  }
  c->info_.vocab_begin = 0;
  c->info_.vocab_end = c->info_.vocab_size;
  c->info_.weight_bytes = weight_bytes;
  c->info_.reference_bytes = reference_bytes;
  return c;
}

absl::StatusOr<OutputOptions> ShardedClient::Prepare(const OutputOptions& output) const {
  OutputOptions prepared = output;
  std::vector<SamplingOptions*> all;
  if (prepared.sampling) all.push_back(&*prepared.sampling);
  for (SamplingOptions& s : prepared.row_sampling) all.push_back(&s);
  std::random_device random;
  for (SamplingOptions* s : all) {
    if (!s->seed) s->seed = (uint64_t{random()} << 32) | random();
  }
  return prepared;
}

absl::StatusOr<OutputOptions> ShardedClient::ResolveFilters(const HiddenStates& hidden, OutputOptions output,
                                                            const std::string& request_id) {
  const int64_t rows = hidden.rows;
  auto spec_of = [&](int64_t r) -> const SamplingOptions* {
    if (output.sampling) return &*output.sampling;
    return r < static_cast<int64_t>(output.row_sampling.size()) ? &output.row_sampling[r] : nullptr;
  };
  bool needed = false;
  uint32_t k = 0;
  for (int64_t r = 0; r < rows; ++r) {
    const SamplingOptions* s = spec_of(r);
    if (s == nullptr || !NeedsGlobalFilter(*s)) continue;
    needed = true;
    k = std::max<uint32_t>(k, s->top_k > 0 ? s->top_k : static_cast<uint32_t>(info_.max_top_k));
  }
  if (!needed || shards_.size() == 1) return output;
  if (k > info_.max_top_k) {
    return absl::InvalidArgumentError(absl::StrCat("sampling top_k ", k, " over vocab shards needs the servers' "
                                                   "--max_top_k to be at least that (it is ", info_.max_top_k, ")"));
  }
  // Round 1: every shard's best k processed candidates, with the rows' processing but no filters.
  OutputOptions first;
  first.top_k = k;
  first.processed_logprobs = true;
  for (int64_t r = 0; r < rows; ++r) {
    SamplingOptions s = spec_of(r) != nullptr ? *spec_of(r) : SamplingOptions{};
    s.top_k = 0;
    s.top_p.reset();
    s.min_p = 0.0f;
    first.row_sampling.push_back(s);
  }
  absl::StatusOr<std::vector<LogitsResult>> answers = FanOut(hidden, first, request_id);
  if (!answers.ok()) return answers.status();
  const std::vector<LogitsResult>& parts = *answers;
  absl::StatusOr<LogitsResult> merged = MergeShardResults(ranges_, parts, first, info_.vocab_size);
  if (!merged.ok()) return merged.status();
  // Round 2 carries each row's kept set explicitly.
  std::vector<SamplingOptions> second;
  for (int64_t r = 0; r < rows; ++r) {
    SamplingOptions s = spec_of(r) != nullptr ? *spec_of(r) : SamplingOptions{};
    if (spec_of(r) != nullptr && NeedsGlobalFilter(s)) {
      auto complete_above = [&](float t) {
        for (const LogitsResult& p : parts) {
          const RowResult& row = p.rows[r];
          if (row.top_logits.size() >= k && row.top_logits.back() >= t) return false;
        }
        return true;
      };
      absl::StatusOr<KeepRule> keep = KeptSetFromCandidates(s, merged->rows[r], info_.vocab_size, complete_above);
      if (!keep.ok()) return absl::Status(keep.status().code(), absl::StrCat("row ", r, ": ", keep.status().message()));
      s.top_k = 0;
      s.top_p.reset();
      s.min_p = 0.0f;
      s.keep_above = keep->above;
      s.keep_tie_max_id = keep->tie_max_id;
    }
    second.push_back(s);
  }
  if (output.sampling || !output.row_sampling.empty()) {
    output.sampling.reset();
    output.row_sampling = std::move(second);
  }
  return output;
}

absl::StatusOr<LogitsResult> ShardedClient::CallShard(Shard& shard, const HiddenStates& hidden,
                                                      const OutputOptions& output, const std::string& request_id) {
  const size_t n = shard.replicas.size();
  const size_t start = shard.next.fetch_add(1) % n;
  std::vector<std::string> failures;
  for (size_t i = 0; i < n; ++i) {
    const size_t k = (start + i) % n;
    absl::StatusOr<LogitsResult> r = shard.replicas[k]->ComputeLogits(hidden, output, request_id);
    if (r.ok() || !Retryable(r.status())) return r;
    failures.push_back(absl::StrCat(shard.addresses[k], ": ", r.status().message()));
  }
  return absl::UnavailableError(absl::StrCat("vocab range ", RangeText(shard.range), " has no live replica (",
                                             absl::StrJoin(failures, "; "), ")"));
}

absl::StatusOr<LogitsResult> ShardedClient::ComputeLogits(const HiddenStates& hidden, const OutputOptions& output,
                                                          const std::string& request_id) {
  absl::StatusOr<OutputOptions> prepared = Prepare(output);
  if (prepared.ok()) prepared = ResolveFilters(hidden, *std::move(prepared), request_id);
  if (!prepared.ok()) return prepared.status();
  absl::StatusOr<std::vector<LogitsResult>> parts = FanOut(hidden, *prepared, request_id);
  if (!parts.ok()) return parts.status();
  return MergeShardResults(ranges_, *parts, *prepared, info_.vocab_size);
}

absl::StatusOr<std::vector<LogitsResult>> ShardedClient::FanOut(const HiddenStates& hidden, const OutputOptions& output,
                                                                const std::string& request_id) {
  std::vector<std::future<absl::StatusOr<LogitsResult>>> calls;
  for (size_t s = 1; s < shards_.size(); ++s) {
    calls.push_back(std::async(std::launch::async, [this, s, &hidden, &output, &request_id] {
      return CallShard(*shards_[s], hidden, output, request_id);
    }));
  }
  std::vector<absl::StatusOr<LogitsResult>> answers;
  answers.push_back(CallShard(*shards_[0], hidden, output, request_id));  // this thread takes shard 0
  for (auto& call : calls) answers.push_back(call.get());
  std::vector<LogitsResult> parts;
  for (auto& a : answers) {
    if (!a.ok()) return a.status();
    parts.push_back(std::move(*a));
  }
  return parts;
}

// One stream per shard; a message is sent to every shard and the answers merged in order.
class ShardedStreamSession final : public StreamSession {
 public:
  explicit ShardedStreamSession(ShardedClient* client) : client_(client) {
    for (auto& shard : client->shards_) {
      const size_t k = shard->next.fetch_add(1) % shard->replicas.size();
      streams_.push_back(shard->replicas[k]->OpenStream());
    }
  }

  absl::Status Send(const HiddenStates& hidden, const OutputOptions& output, const std::string& request_id) override {
    absl::StatusOr<OutputOptions> prepared = client_->Prepare(output);
    if (prepared.ok()) prepared = client_->ResolveFilters(hidden, *std::move(prepared), request_id);
    if (!prepared.ok()) return prepared.status();
    for (size_t s = 0; s < streams_.size(); ++s) {
      if (absl::Status st = streams_[s]->Send(hidden, *prepared, request_id); !st.ok()) return Failed(s, st);
    }
    std::lock_guard<std::mutex> lock(mu_);
    sent_.push_back(*std::move(prepared));
    return absl::OkStatus();
  }

  absl::StatusOr<LogitsResult> Receive() override {
    std::vector<LogitsResult> parts;
    for (size_t s = 0; s < streams_.size(); ++s) {
      absl::StatusOr<LogitsResult> r = streams_[s]->Receive();
      if (!r.ok()) return Failed(s, r.status());
      parts.push_back(*std::move(r));
    }
    OutputOptions output;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (sent_.empty()) return absl::InternalError("a response arrived for no request");
      output = std::move(sent_.front());
      sent_.pop_front();
    }
    for (const LogitsResult& p : parts) {
      if (!p.error.ok()) {  // a bad message: every shard refuses it alike; report the first
        LogitsResult failed;
        failed.request_id = p.request_id;
        failed.error = p.error;
        return failed;
      }
    }
    return MergeShardResults(client_->ranges_, parts, output, client_->info_.vocab_size);
  }

  absl::Status CloseSend() override {
    absl::Status first;
    for (auto& s : streams_) first.Update(s->CloseSend());
    return first;
  }

  absl::Status Close() override {
    absl::Status first;
    for (auto& s : streams_) first.Update(s->Close());
    return first;
  }

 private:
  absl::Status Failed(size_t s, const absl::Status& st) const {
    if (absl::IsOutOfRange(st)) return st;
    return absl::Status(st.code(), absl::StrCat("vocab range ", RangeText(client_->ranges_[s]), ": ", st.message()));
  }

  ShardedClient* client_;
  std::vector<std::unique_ptr<StreamSession>> streams_;
  std::mutex mu_;
  std::deque<OutputOptions> sent_;  // guarded by mu_: per sent message, for its merge
};

std::unique_ptr<StreamSession> ShardedClient::OpenStream() { return std::make_unique<ShardedStreamSession>(this); }

}  // namespace lmhead::client
