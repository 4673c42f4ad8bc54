// Parses the command-line form of SamplingOptions shared by the CLI and the load generator:
//   "temperature=0.8,top_k=40,top_p=0.95,min_p=0.05,seed=7,step=3,repetition_penalty=1.1,
//    presence_penalty=0.5,frequency_penalty=0.2,banned=1|2|3,allowed=4|5,bias=10:2.5|11:-100,
//    previous=7|7|9"
// Keys may appear in any order; list values are separated by '|'. The server validates ranges.
#ifndef LMHEAD_CLIENT_SAMPLING_TEXT_H_
#define LMHEAD_CLIENT_SAMPLING_TEXT_H_

#include <string>

#include "absl/status/statusor.h"
#include "client/lmhead_client.h"

namespace lmhead::client {

absl::StatusOr<SamplingOptions> ParseSamplingText(const std::string& text);

}  // namespace lmhead::client

#endif  // LMHEAD_CLIENT_SAMPLING_TEXT_H_
