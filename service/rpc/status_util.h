// The one conversion from absl::Status to grpc::Status (the codes share their numbering).
#ifndef LMHEAD_SERVICE_RPC_STATUS_UTIL_H_
#define LMHEAD_SERVICE_RPC_STATUS_UTIL_H_

#include <string>

#include "absl/status/status.h"
#include "grpcpp/support/status.h"

namespace lmhead {

inline grpc::Status ToGrpcStatus(const absl::Status& status) {
  if (status.ok()) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(status.code()), std::string(status.message()));
}

}  // namespace lmhead

#endif  // LMHEAD_SERVICE_RPC_STATUS_UTIL_H_
