// A client for a head split over vocab shards (servers started with --shard / --vocab_range),
// each shard possibly served by several replicas. Fans every request out to all shards at once,
// merges the compact per-shard results exactly (client/shard_merge.h), balances over each shard's
// replicas and retries a failed shard on another one. A request never gets a partial answer: when
// some vocab range has no live replica it fails with UNAVAILABLE naming that range.
// Thread-safe like LmHeadClient; a stream session is used by one sender and one receiver.
#ifndef LMHEAD_CLIENT_SHARDED_CLIENT_H_
#define LMHEAD_CLIENT_SHARDED_CLIENT_H_

#include <atomic>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "client/lmhead_client.h"
#include "client/shard_merge.h"

namespace lmhead::client {

// "a:1,b:1;c:1" -> {{"a:1", "b:1"}, {"c:1"}}: shards separated by ';', a shard's replicas by ','.
std::vector<std::vector<std::string>> ParseShardList(const std::string& text);

class ShardedClient {
 public:
  // `shards[i]` lists the addresses of one shard's replicas (in any shard order: each server's
  // ModelInfo says which rows it holds). The shards must tile [0, vocab) without gaps or overlaps.
  // UNAVAILABLE when a shard has no replica answering now; INVALID_ARGUMENT when the ranges or
  // shapes do not fit together.
  static absl::StatusOr<std::unique_ptr<ShardedClient>> Connect(const std::vector<std::vector<std::string>>& shards,
                                                                const ClientOptions& options = {});

  // As LmHeadClient::ComputeLogits, over the whole vocabulary. Temperature, bias, masks and
  // penalties merge exactly in one round. Rows with top_k / top_p / min_p take two: the first
  // gathers every shard's best processed candidates (client/shard_filters.h turns them into the
  // whole head's kept set), the second draws within it. A missing seed is drawn here, so that
  // every shard uses the same one.
  absl::StatusOr<LogitsResult> ComputeLogits(const HiddenStates& hidden, const OutputOptions& output,
                                             const std::string& request_id = "");

  // The whole head: vocab_size, and vocab_begin = 0 / vocab_end = vocab_size.
  const ModelInfo& model_info() const { return info_; }
  const std::vector<ShardRange>& ranges() const { return ranges_; }

  // One StreamLogits call per shard (on one replica each); Send goes to all, Receive merges.
  std::unique_ptr<StreamSession> OpenStream();

 private:
  struct Shard {
    ShardRange range;
    std::vector<std::string> addresses;
    std::vector<std::unique_ptr<LmHeadClient>> replicas;
    std::atomic<uint32_t> next{0};  // round-robin start
  };
  ShardedClient() = default;
  // The shard's answer from the first replica that gives one, starting at the round-robin
  // position; errors that another replica would repeat (INVALID_ARGUMENT, ...) return at once.
  absl::StatusOr<LogitsResult> CallShard(Shard& shard, const HiddenStates& hidden, const OutputOptions& output,
                                         const std::string& request_id);
  // Every shard's answer, asked concurrently; the first failure (after retries) fails the call.
  absl::StatusOr<std::vector<LogitsResult>> FanOut(const HiddenStates& hidden, const OutputOptions& output,
                                                   const std::string& request_id);
  // Fixes a seed where none was given.
  absl::StatusOr<OutputOptions> Prepare(const OutputOptions& output) const;
  // For rows with top_k / top_p / min_p: the first round, and `output` rewritten with the rows'
  // explicit kept sets (row_sampling). Unchanged when no row needs it or there is one shard.
  absl::StatusOr<OutputOptions> ResolveFilters(const HiddenStates& hidden, OutputOptions output,
                                               const std::string& request_id);

  std::vector<std::unique_ptr<Shard>> shards_;  // sorted by range
  std::vector<ShardRange> ranges_;
  ModelInfo info_;
  friend class ShardedStreamSession;
};

}  // namespace lmhead::client

#endif  // LMHEAD_CLIENT_SHARDED_CLIENT_H_
