// Seeded Gaussian hidden states for tools (CLI, load generator, decoder simulator).
#ifndef LMHEAD_CLIENT_RANDOM_HIDDEN_H_
#define LMHEAD_CLIENT_RANDOM_HIDDEN_H_

#include <cstdint>

#include "client/lmhead_client.h"

namespace lmhead::client {

// [rows, hidden] values ~ N(0, stddev^2) from `seed`, encoded as `dtype`.
HiddenStates RandomHidden(int64_t rows, int64_t hidden, uint64_t seed, float stddev, DType dtype);

}  // namespace lmhead::client

#endif  // LMHEAD_CLIENT_RANDOM_HIDDEN_H_
