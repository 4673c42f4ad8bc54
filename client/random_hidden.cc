#include "client/random_hidden.h"

#include <random>
#include <vector>

namespace lmhead::client {

HiddenStates RandomHidden(int64_t rows, int64_t hidden, uint64_t seed, float stddev, DType dtype) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.0f, stddev);
  std::vector<float> values(rows * hidden);
  for (float& v : values) v = normal(rng);
  return HiddenStates::FromFloats(values, rows, dtype);
}

}  // namespace lmhead::client
