// Assembles the whole server: gRPC (LmHead, health, reflection), the Prometheus exposer, the
// loaded head, its backend and the batcher. Used by main.cc and the end-to-end tests.
//
//   ASSIGN_OR_RETURN(auto server, LmHeadServer::Start(options));  // listening, NOT_SERVING
//   RETURN_IF_ERROR(server->LoadAndServe());                        // head loaded, SERVING
//   ...
//   server->Shutdown();                                             // drains accepted work
#ifndef LMHEAD_SERVICE_SERVER_H_
#define LMHEAD_SERVICE_SERVER_H_

#include <condition_variable>
#include <memory>
#include <mutex>
#include <thread>

#include "absl/status/statusor.h"
#include "grpcpp/grpcpp.h"
#include "prometheus/exposer.h"
#include "prometheus/registry.h"
#include "service/options.h"
#include "service/rpc/lmhead_service.h"

namespace lmhead {

class LmHeadServer {
 public:
  // Binds the gRPC and metrics addresses and starts serving health (NOT_SERVING) and
  // GetModelInfo/ComputeLogits (FAILED_PRECONDITION until loaded).
  static absl::StatusOr<std::unique_ptr<LmHeadServer>> Start(const ServerOptions& options);
  ~LmHeadServer();

  // Loads the head, builds the backend and batcher, then reports SERVING. Call once.
  absl::Status LoadAndServe();

  // Health NOT_SERVING, stop accepting calls, finish accepted ones (up to shutdown_grace), stop
  // the batcher. Idempotent.
  void Shutdown();

  int port() const { return port_; }
  // Port of the metrics endpoint, or 0 when disabled.
  int metrics_port() const;
  prometheus::Registry& registry() { return *registry_; }

 private:
  explicit LmHeadServer(const ServerOptions& options);

  const ServerOptions options_;
  std::shared_ptr<prometheus::Registry> registry_;
  std::unique_ptr<ServiceMetrics> metrics_;
  std::unique_ptr<prometheus::Exposer> exposer_;
  std::unique_ptr<LmHeadService> service_;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<Backend> backend_;
  std::unique_ptr<Batcher> batcher_;
  int port_ = 0;
  bool shut_down_ = false;

  // Refreshes the device-memory gauges every few seconds while serving.
  void MemoryGaugeLoop();
  std::thread memory_thread_;
  std::mutex memory_mu_;
  std::condition_variable memory_cv_;
  bool memory_stop_ = false;  // guarded by memory_mu_
};

}  // namespace lmhead

#endif  // LMHEAD_SERVICE_SERVER_H_
