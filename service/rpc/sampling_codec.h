// SamplingParams (proto) -> SamplingSpec (kernels/sampling.h), with every field validated.
#ifndef LMHEAD_SERVICE_RPC_SAMPLING_CODEC_H_
#define LMHEAD_SERVICE_RPC_SAMPLING_CODEC_H_

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "kernels/sampling.h"
#include "lmhead/v1/lmhead.pb.h"

namespace lmhead {

struct SamplingLimits {
  int64_t vocab = 0;
  uint32_t max_top_k = 0;  // the backend's selection limit (already capped by vocab)
};

// Fills *spec from `params`; errors are INVALID_ARGUMENT naming `field` (e.g. "sampling" or
// "row_sampling[3]") and the offending member. An absent seed becomes a fresh random one.
// Thread-safe.
absl::Status DecodeSamplingParams(const v1::SamplingParams& params, const std::string& field,
                                  const SamplingLimits& limits, SamplingSpec* spec);

}  // namespace lmhead

#endif  // LMHEAD_SERVICE_RPC_SAMPLING_CODEC_H_
