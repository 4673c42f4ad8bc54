// Connection flags shared by the client tools (lmhead, lmhead-bench, lmhead-decoder-sim): TLS,
// mutual TLS and the bearer token. Compiled into those binaries only (flags stay out of the
// client library).
#ifndef LMHEAD_CLIENT_CLI_CLIENT_FLAGS_H_
#define LMHEAD_CLIENT_CLI_CLIENT_FLAGS_H_

#include "absl/status/statusor.h"
#include "client/lmhead_client.h"

namespace lmhead::client {

// ClientOptions with the security flags applied (files read now). INVALID_ARGUMENT or NOT_FOUND
// naming the flag when they do not fit together or a file cannot be read.
absl::StatusOr<ClientOptions> SecureClientOptionsFromFlags(ClientOptions base = {});

}  // namespace lmhead::client

#endif  // LMHEAD_CLIENT_CLI_CLIENT_FLAGS_H_
