// Helpers shared by the C++ tests: temp directories, raw files, and small generated checkpoints.
#ifndef LMHEAD_TESTS_TEST_UTIL_H_
#define LMHEAD_TESTS_TEST_UTIL_H_

#include <cstdint>
#include <string>
#include <vector>

#include "kernels/head_source.h"
#include "kernels/tensor.h"

namespace lmhead::testing {

// A fresh directory under $TMPDIR, removed with its contents on destruction.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  const std::string& path() const { return path_; }
  std::string File(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

void WriteFile(const std::string& path, const std::string& bytes);

// Seeded weights for a [vocab, hidden] head: Gaussian rows with per-row std around 0.02.
std::vector<float> RandomWeights(int64_t vocab, int64_t hidden, uint64_t seed);

// A view of `weights` ([vocab, hidden] fp32; must outlive the view) as a head source.
HeadSource F32HeadSource(const std::vector<float>& weights, int64_t vocab, int64_t hidden);

// Writes config.json + model.safetensors holding `weights` as BF16 under `name`.
void WriteBf16Checkpoint(const std::string& dir, const std::vector<float>& weights, int64_t vocab,
                         int64_t hidden, const std::string& name = "lm_head.weight",
                         const std::string& extra_config = "");

// Bytes of a safetensors file whose header is exactly `header` (no padding), followed by `data`.
std::string SafetensorsBytes(const std::string& header, const std::string& data);

}  // namespace lmhead::testing

#endif  // LMHEAD_TESTS_TEST_UTIL_H_
