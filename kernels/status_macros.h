// Status propagation helpers (Debian's Abseil 20220623 ships none).
//
//   RETURN_IF_ERROR(expr);              // expr yields absl::Status
//   ASSIGN_OR_RETURN(auto x, expr);     // expr yields absl::StatusOr<T>
#ifndef LMHEAD_KERNELS_STATUS_MACROS_H_
#define LMHEAD_KERNELS_STATUS_MACROS_H_

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define LMHEAD_CONCAT_INNER(a, b) a##b
#define LMHEAD_CONCAT(a, b) LMHEAD_CONCAT_INNER(a, b)

#define RETURN_IF_ERROR(expr)                              \
  do {                                                     \
    if (absl::Status lmhead_status = (expr); !lmhead_status.ok()) \
      return lmhead_status;                                \
  } while (0)

#define ASSIGN_OR_RETURN(lhs, expr) \
  LMHEAD_ASSIGN_OR_RETURN_IMPL(LMHEAD_CONCAT(lmhead_statusor_, __LINE__), lhs, expr)
#define LMHEAD_ASSIGN_OR_RETURN_IMPL(tmp, lhs, expr) \
  auto tmp = (expr);                                 \
  if (!tmp.ok()) return std::move(tmp).status();     \
  lhs = std::move(tmp).value()

#endif  // LMHEAD_KERNELS_STATUS_MACROS_H_
