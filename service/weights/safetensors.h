// Read-only access to a .safetensors file through mmap. The JSON header is parsed with
// nlohmann-json and every dtype, shape and offset is checked against the file before any tensor
// is handed out.
#ifndef LMHEAD_SERVICE_WEIGHTS_SAFETENSORS_H_
#define LMHEAD_SERVICE_WEIGHTS_SAFETENSORS_H_

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace lmhead {

// safetensors element types ("BF16", "F8_E4M3", ...).
enum class StDType { kBool, kU8, kI8, kI16, kU16, kF16, kBF16, kI32, kU32, kF32, kF64, kI64, kU64,
                     kF8E4M3, kF8E5M2 };

bool ParseStDType(absl::string_view text, StDType* out);
const char* StDTypeName(StDType t);
size_t StDTypeSize(StDType t);

struct StTensorInfo {
  std::string name;
  StDType dtype = StDType::kF32;
  std::vector<int64_t> shape;
  uint64_t begin = 0;  // byte offsets into the data section
  uint64_t end = 0;

  int64_t NumElements() const;
};

class SafetensorsFile {
 public:
  // Maps `path` and validates its header. Errors are INVALID_ARGUMENT (malformed file) or
  // NOT_FOUND / PERMISSION_DENIED (cannot open), each naming the file.
  static absl::StatusOr<std::unique_ptr<SafetensorsFile>> Open(const std::string& path);
  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::string& path() const { return path_; }
  // nullptr when absent.
  const StTensorInfo* Find(absl::string_view name) const;
  const std::map<std::string, StTensorInfo>& tensors() const { return tensors_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

  // The tensor's bytes (little-endian, row-major), valid while this object lives.
  const uint8_t* Data(const StTensorInfo& t) const { return data_ + t.begin; }
  // Hint that [offset, offset + len) of t's bytes will not be read again, so the page cache
  // may drop them (keeps a streaming load's resident set small).
  void Release(const StTensorInfo& t, uint64_t offset, uint64_t len) const;

 private:
  SafetensorsFile() = default;
  absl::Status ParseHeader(absl::string_view header, uint64_t data_size);

  std::string path_;
  void* map_ = nullptr;
  size_t map_size_ = 0;
  const uint8_t* data_ = nullptr;
  std::map<std::string, StTensorInfo> tensors_;
  std::map<std::string, std::string> metadata_;
};

}  // namespace lmhead

#endif  // LMHEAD_SERVICE_WEIGHTS_SAFETENSORS_H_
