#include "tests/test_util.h"

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "kernels/half.h"
#include "service/weights/safetensors_writer.h"

namespace lmhead::testing {

TempDir::TempDir() {
  std::string pattern = (std::filesystem::temp_directory_path() / "lmhead_test_XXXXXX").string();
  char* made = ::mkdtemp(pattern.data());
  EXPECT_NE(made, nullptr);
  path_ = pattern;
}

TempDir::~TempDir() {
  std::error_code ec;
  std::filesystem::remove_all(path_, ec);
}

void WriteFile(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  ASSERT_TRUE(out.good()) << path;
}

std::vector<float> RandomWeights(int64_t vocab, int64_t hidden, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> w(vocab * hidden);
  for (int64_t r = 0; r < vocab; ++r) {
    const float std = 0.02f * std::exp(0.25f * normal(rng));
    for (int64_t c = 0; c < hidden; ++c) w[r * hidden + c] = std * normal(rng);
  }
  return w;
}

void WriteBf16Checkpoint(const std::string& dir, const std::vector<float>& weights, int64_t vocab,
                         int64_t hidden, const std::string& name, const std::string& extra_config) {
  WriteFile(dir + "/config.json",
            absl::StrCat("{\"vocab_size\": ", vocab, ", \"hidden_size\": ", hidden,
                         ", \"model_type\": \"test\"", extra_config, "}"));
  SafetensorsWriter writer;
  ASSERT_TRUE(writer.Open(dir + "/model.safetensors", {{name, StDType::kBF16, {vocab, hidden}}}).ok());
  std::vector<uint16_t> bf16(weights.size());
  for (size_t i = 0; i < weights.size(); ++i) bf16[i] = FloatToBf16(weights[i]);
  ASSERT_TRUE(writer.Append(bf16.data(), bf16.size() * 2).ok());
  ASSERT_TRUE(writer.Close().ok());
}

HeadSource F32HeadSource(const std::vector<float>& weights, int64_t vocab, int64_t hidden) {
  HeadSource s;
  s.dtype = SourceDType::kF32;
  s.rows = vocab;
  s.cols = hidden;
  s.data = reinterpret_cast<const uint8_t*>(weights.data());
  return s;
}

std::string SafetensorsBytes(const std::string& header, const std::string& data) {
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((header.size() >> (8 * i)) & 0xff);
  return out + header + data;
}

}  // namespace lmhead::testing
