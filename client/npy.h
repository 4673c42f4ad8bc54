// Reads NumPy .npy files holding hidden states: little-endian float32 / float16 / float64,
// C order, 1-D [hidden] or 2-D [rows, hidden].
#ifndef LMHEAD_CLIENT_NPY_H_
#define LMHEAD_CLIENT_NPY_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace lmhead::client {

struct NpyMatrix {
  int64_t rows = 0;
  int64_t cols = 0;
  std::vector<float> values;  // [rows, cols]
};

// Errors: NOT_FOUND (cannot open), INVALID_ARGUMENT (anything else), naming the problem.
absl::StatusOr<NpyMatrix> ReadNpy(const std::string& path);

}  // namespace lmhead::client

#endif  // LMHEAD_CLIENT_NPY_H_
