#include "service/weights/safetensors.h"

#include <filesystem>

#include "gtest/gtest.h"
#include "service/weights/safetensors_writer.h"
#include "tests/test_util.h"

namespace lmhead {
namespace {

using testing::SafetensorsBytes;

struct Malformed {
  const char* name;
  std::string bytes;
  const char* message;  // expected in the error
};

std::vector<Malformed> MalformedFiles() {
  const std::string eight(8, 'x');
  std::string huge_len(8, '\0');
  huge_len[4] = 1;  // 2^32-byte header
  std::string past_end(8, '\0');
  past_end[0] = 100;
  return {
      {"empty", "", "shorter than the 8-byte header length"},
      {"five_bytes", "abcde", "shorter than the 8-byte header length"},
      {"header_past_end", past_end + "{}", "runs past the end"},
      {"header_over_limit", huge_len + "{}", "exceeds the 100 MB limit"},
      {"not_json", SafetensorsBytes("{not json", ""), "not valid JSON"},
      {"json_array", SafetensorsBytes("[1,2]", ""), "not a JSON object"},
      {"entry_not_object", SafetensorsBytes(R"({"w": 5})", ""), "entry is not an object"},
      {"missing_dtype", SafetensorsBytes(R"({"w": {"shape": [2], "data_offsets": [0, 8]}})", eight),
       "missing dtype"},
      {"unknown_dtype",
       SafetensorsBytes(R"({"w": {"dtype": "F12", "shape": [2], "data_offsets": [0, 8]}})", eight),
       "unknown dtype 'F12'"},
      {"missing_shape", SafetensorsBytes(R"({"w": {"dtype": "F32", "data_offsets": [0, 8]}})", eight),
       "missing shape"},
      {"negative_dim",
       SafetensorsBytes(R"({"w": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}})", eight),
       "negative or non-integer"},
      {"offsets_arity", SafetensorsBytes(R"({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0]}})", eight),
       "data_offsets must be two"},
      {"offsets_reversed",
       SafetensorsBytes(R"({"w": {"dtype": "F32", "shape": [2], "data_offsets": [8, 0]}})", eight),
       "begin after they end"},
      {"offsets_out_of_range",
       SafetensorsBytes(R"({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}})", eight),
       "run past the 8-byte data section"},
      {"truncated_data",
       SafetensorsBytes(R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, "b": {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]}})",
                        eight + "abc"),
       "run past the 11-byte data section"},
      {"dtype_shape_mismatch",
       SafetensorsBytes(R"({"w": {"dtype": "BF16", "shape": [2], "data_offsets": [0, 8]}})", eight),
       "holds 8 bytes but dtype BF16 and its shape need 4"},
      {"overlap",
       SafetensorsBytes(R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, "b": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}})",
                        eight),
       "overlap"},
      {"metadata_not_string",
       SafetensorsBytes(R"({"__metadata__": {"format": 1}})", ""), "__metadata__ value for 'format'"},
      {"metadata_not_object", SafetensorsBytes(R"({"__metadata__": []})", ""), "__metadata__ is not an object"},
  };
}

TEST(SafetensorsTest, MalformedFilesGiveClearErrors) {
  testing::TempDir dir;
  const auto cases = MalformedFiles();
  ASSERT_GE(cases.size(), 15u);
  for (const Malformed& m : cases) {
    const std::string path = dir.File(std::string(m.name) + ".safetensors");
    testing::WriteFile(path, m.bytes);
    auto file = SafetensorsFile::Open(path);
    ASSERT_FALSE(file.ok()) << m.name;
    EXPECT_EQ(file.status().code(), absl::StatusCode::kInvalidArgument) << m.name;
    EXPECT_NE(file.status().message().find(m.message), std::string::npos)
        << m.name << ": " << file.status();
    EXPECT_NE(file.status().message().find(path), std::string::npos) << m.name << " names the file";
  }
}

TEST(SafetensorsTest, MissingFileAndDirectory) {
  testing::TempDir dir;
  auto missing = SafetensorsFile::Open(dir.File("nope.safetensors"));
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  auto directory = SafetensorsFile::Open(dir.path());
  EXPECT_EQ(directory.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(directory.status().message().find("not a regular file"), std::string::npos);
}

TEST(SafetensorsTest, WriterOutputReadsBack) {
  testing::TempDir dir;
  const std::string path = dir.File("ok.safetensors");
  SafetensorsWriter w;
  ASSERT_TRUE(w.Open(path, {{"a", StDType::kF32, {2, 3}}, {"b", StDType::kU8, {5}}}, {{"format", "pt"}}).ok());
  const float a[6] = {1, 2, 3, 4, 5, 6};
  const uint8_t b[5] = {9, 8, 7, 6, 5};
  ASSERT_TRUE(w.Append(a, 12).ok());
  ASSERT_TRUE(w.Append(a + 3, 12).ok());
  EXPECT_FALSE(w.Append(b, 6).ok()) << "more bytes than declared";
  ASSERT_TRUE(w.Append(b, 5).ok());
  ASSERT_TRUE(w.Close().ok());
  EXPECT_EQ((std::filesystem::file_size(path) - 29) % 8, 0u) << "header padded to 8 bytes";

  auto f = SafetensorsFile::Open(path);
  ASSERT_TRUE(f.ok()) << f.status();
  const StTensorInfo* ta = (*f)->Find("a");
  const StTensorInfo* tb = (*f)->Find("b");
  ASSERT_TRUE(ta && tb);
  EXPECT_EQ(ta->shape, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(ta->dtype, StDType::kF32);
  EXPECT_EQ(reinterpret_cast<const float*>((*f)->Data(*ta))[5], 6.0f);
  EXPECT_EQ((*f)->Data(*tb)[4], 5);
  EXPECT_EQ((*f)->metadata().at("format"), "pt");
  EXPECT_EQ((*f)->Find("c"), nullptr);
}

TEST(SafetensorsTest, WriterRefusesShortContent) {
  testing::TempDir dir;
  SafetensorsWriter w;
  ASSERT_TRUE(w.Open(dir.File("short.safetensors"), {{"a", StDType::kF32, {4}}}).ok());
  ASSERT_TRUE(w.Append("abcd", 4).ok());
  absl::Status s = w.Close();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("wrote 4 of 16"), std::string::npos) << s;
}

}  // namespace
}  // namespace lmhead
