// Streaming .safetensors writer: the header is written first from the declared tensors, then
// each tensor's bytes are appended in declaration order, in as many pieces as the caller likes.
#ifndef LMHEAD_SERVICE_WEIGHTS_SAFETENSORS_WRITER_H_
#define LMHEAD_SERVICE_WEIGHTS_SAFETENSORS_WRITER_H_

#include <cstdint>
#include <cstdio>
#include <map>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "service/weights/safetensors.h"

namespace lmhead {

struct StTensorDecl {
  std::string name;
  StDType dtype;
  std::vector<int64_t> shape;
};

class SafetensorsWriter {
 public:
  SafetensorsWriter() = default;
  ~SafetensorsWriter();
  SafetensorsWriter(const SafetensorsWriter&) = delete;
  SafetensorsWriter& operator=(const SafetensorsWriter&) = delete;

  // Creates `path` and writes the header (padded with spaces to a multiple of 8 bytes).
  absl::Status Open(const std::string& path, const std::vector<StTensorDecl>& tensors,
                    const std::map<std::string, std::string>& metadata = {});
  // Appends the next bytes of the tensor data, in declaration order.
  absl::Status Append(const void* bytes, size_t len);
  // Checks that every declared byte was written, then closes the file.
  absl::Status Close();

 private:
  std::string path_;
  std::FILE* file_ = nullptr;
  uint64_t expected_ = 0;
  uint64_t written_ = 0;
};

}  // namespace lmhead

#endif  // LMHEAD_SERVICE_WEIGHTS_SAFETENSORS_WRITER_H_
