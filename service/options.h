// Plain option structs for the server, filled from flags in main.cc (the only place with flags).
#ifndef LMHEAD_SERVICE_OPTIONS_H_
#define LMHEAD_SERVICE_OPTIONS_H_

#include <cstdint>
#include <string>

#include "absl/time/time.h"
#include "kernels/backend_factory.h"
#include "service/batching/batcher.h"
#include "service/security.h"
#include "service/weights/head_loader.h"

namespace lmhead {

struct ServerOptions {
  // gRPC listen address; port 0 picks a free port (see LmHeadServer::port()).
  std::string listen_address = "0.0.0.0:50051";
  // Prometheus exposer address ("" = no HTTP endpoint; the registry is still filled).
  std::string metrics_address = "0.0.0.0:9400";
  // TLS / mutual TLS / bearer token of the gRPC endpoint (all off by default).
  SecurityOptions security;

  HeadLoadOptions head;
  BackendOptions backend;
  BatcherOptions batcher;

  // Request limits. A request may have more rows than BatcherOptions::max_batch_rows: it is then
  // split across batches and reassembled.
  uint32_t max_rows_per_request = 64;
  uint32_t max_top_k = 256;
  uint32_t max_logprob_token_ids = 1024;
  // gRPC send/receive limit; the default fits 64 rows of fp32 logits of a 152K vocab
  // (64 x 152064 x 4 = 38.9 MB) with room to spare.
  int64_t max_message_bytes = 64 << 20;
  // Unanswered messages a stream may have before the server stops reading it.
  int max_stream_outstanding = 64;
  // How long a graceful shutdown waits for accepted work.
  absl::Duration shutdown_grace = absl::Seconds(30);
};

}  // namespace lmhead

#endif  // LMHEAD_SERVICE_OPTIONS_H_
