#include "service/weights/safetensors_writer.h"

#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"

namespace lmhead {

SafetensorsWriter::~SafetensorsWriter() {
  if (file_ != nullptr) std::fclose(file_);
}

absl::Status SafetensorsWriter::Open(const std::string& path,
                                     const std::vector<StTensorDecl>& tensors,
                                     const std::map<std::string, std::string>& metadata) {
  if (file_ != nullptr) return absl::FailedPreconditionError("writer already open");
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  uint64_t offset = 0;
  for (const StTensorDecl& t : tensors) {
    uint64_t bytes = StDTypeSize(t.dtype);
    for (int64_t d : t.shape) bytes *= static_cast<uint64_t>(d);
    header[t.name] = {{"dtype", StDTypeName(t.dtype)},
                      {"shape", t.shape},
                      {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');
  file_ = std::fopen(path.c_str(), "wb");
  if (file_ == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat("cannot create ", path, ": ", std::strerror(errno)));
  }
  path_ = path;
  expected_ = offset;
  written_ = 0;
  uint8_t len[8];
  for (int i = 0; i < 8; ++i) len[i] = static_cast<uint8_t>(static_cast<uint64_t>(text.size()) >> (8 * i));
  if (std::fwrite(len, 1, 8, file_) != 8 || std::fwrite(text.data(), 1, text.size(), file_) != text.size()) {
    return absl::InternalError(absl::StrCat("write to ", path, " failed"));
  }
  return absl::OkStatus();
}

absl::Status SafetensorsWriter::Append(const void* bytes, size_t len) {
  if (file_ == nullptr) return absl::FailedPreconditionError("writer is not open");
  if (written_ + len > expected_) {
    return absl::InvalidArgumentError(absl::StrCat(path_, ": more tensor bytes than declared"));
  }
  if (std::fwrite(bytes, 1, len, file_) != len) {
    return absl::InternalError(absl::StrCat("write to ", path_, " failed"));
  }
  written_ += len;
  return absl::OkStatus();
}

absl::Status SafetensorsWriter::Close() {
  if (file_ == nullptr) return absl::FailedPreconditionError("writer is not open");
  const bool flushed = std::fclose(file_) == 0;
  file_ = nullptr;
  if (written_ != expected_) {
    return absl::InvalidArgumentError(absl::StrCat(path_, ": wrote ", written_, " of ", expected_,
                                                   " declared tensor bytes"));
  }
  if (!flushed) return absl::InternalError(absl::StrCat("closing ", path_, " failed"));
  return absl::OkStatus();
}

}  // namespace lmhead
