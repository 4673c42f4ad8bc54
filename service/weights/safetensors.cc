#include "service/weights/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <limits>

#include "absl/strings/str_cat.h"
#include "kernels/status_macros.h"
#include "nlohmann/json.hpp"

namespace lmhead {
namespace {

struct DTypeEntry {
  const char* name;
  StDType dtype;
  size_t size;
};
constexpr DTypeEntry kDTypes[] = {
    {"BOOL", StDType::kBool, 1},   {"U8", StDType::kU8, 1},       {"I8", StDType::kI8, 1},
    {"I16", StDType::kI16, 2},     {"U16", StDType::kU16, 2},     {"F16", StDType::kF16, 2},
    {"BF16", StDType::kBF16, 2},   {"I32", StDType::kI32, 4},     {"U32", StDType::kU32, 4},
    {"F32", StDType::kF32, 4},     {"F64", StDType::kF64, 8},     {"I64", StDType::kI64, 8},
    {"U64", StDType::kU64, 8},     {"F8_E4M3", StDType::kF8E4M3, 1},
    {"F8_E5M2", StDType::kF8E5M2, 1},
};

// The header may not exceed this (the reference implementation's limit is 100 MB).
constexpr uint64_t kMaxHeaderBytes = 100'000'000;

absl::Status Bad(const std::string& path, absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat("safetensors file ", path, ": ", what));
}

// Reads a non-negative integer that fits int64 from a JSON value.
bool ReadUint(const nlohmann::json& v, uint64_t* out) {
  if (v.is_number_unsigned()) { *out = v.get<uint64_t>(); return *out <= (1ull << 62); }
  if (v.is_number_integer()) {
    const int64_t i = v.get<int64_t>();
    if (i < 0) return false;
    *out = static_cast<uint64_t>(i);
    return true;
  }
  return false;
}

}  // namespace

bool ParseStDType(absl::string_view text, StDType* out) {
  for (const auto& e : kDTypes) {
    if (text == e.name) { *out = e.dtype; return true; }
  }
  return false;
}

const char* StDTypeName(StDType t) {
  for (const auto& e : kDTypes) if (e.dtype == t) return e.name;
  return "?";
}

size_t StDTypeSize(StDType t) {
  for (const auto& e : kDTypes) if (e.dtype == t) return e.size;
  return 0;
}

int64_t StTensorInfo::NumElements() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

absl::StatusOr<std::unique_ptr<SafetensorsFile>> SafetensorsFile::Open(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    const int err = errno;
    const std::string msg = absl::StrCat("cannot open ", path, ": ", std::strerror(err));
    return err == ENOENT ? absl::NotFoundError(msg)
           : err == EACCES ? absl::PermissionDeniedError(msg)
                           : absl::InvalidArgumentError(msg);
  }
  struct stat st;
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    return Bad(path, "not a regular file");
  }
  std::unique_ptr<SafetensorsFile> file(new SafetensorsFile());
  file->path_ = path;
  const uint64_t size = static_cast<uint64_t>(st.st_size);
  if (size < 8) {
    ::close(fd);
    return Bad(path, absl::StrCat("file is ", size, " bytes, shorter than the 8-byte header length"));
  }
  void* map = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
  ::close(fd);
  if (map == MAP_FAILED) return Bad(path, absl::StrCat("mmap failed: ", std::strerror(errno)));
  file->map_ = map;
  file->map_size_ = size;
  const uint8_t* bytes = static_cast<const uint8_t*>(map);
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | bytes[i];
  if (header_len > kMaxHeaderBytes) {
    return Bad(path, absl::StrCat("header length ", header_len, " exceeds the 100 MB limit"));
  }
  if (header_len > size - 8) {
    return Bad(path, absl::StrCat("header length ", header_len, " runs past the end of the ",
                                  size, "-byte file"));
  }
  file->data_ = bytes + 8 + header_len;
  RETURN_IF_ERROR(file->ParseHeader(
      absl::string_view(reinterpret_cast<const char*>(bytes + 8), header_len),
      size - 8 - header_len));
  return file;
}

SafetensorsFile::~SafetensorsFile() {
  if (map_ != nullptr) ::munmap(map_, map_size_);
}

absl::Status SafetensorsFile::ParseHeader(absl::string_view header, uint64_t data_size) {
  nlohmann::json j = nlohmann::json::parse(header.begin(), header.end(), nullptr,
                                           /*allow_exceptions=*/false);
  if (j.is_discarded()) return Bad(path_, "header is not valid JSON");
  if (!j.is_object()) return Bad(path_, "header is not a JSON object");
  std::vector<const StTensorInfo*> by_offset;
  for (auto it = j.begin(); it != j.end(); ++it) {
    const std::string& name = it.key();
    const nlohmann::json& v = it.value();
    if (name == "__metadata__") {
      if (!v.is_object()) return Bad(path_, "__metadata__ is not an object");
      for (auto m = v.begin(); m != v.end(); ++m) {
        if (!m.value().is_string()) {
          return Bad(path_, absl::StrCat("__metadata__ value for '", m.key(), "' is not a string"));
        }
        metadata_[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    const std::string where = absl::StrCat("tensor '", name, "': ");
    if (!v.is_object()) return Bad(path_, where + "entry is not an object");
    StTensorInfo t;
    t.name = name;
    auto dtype = v.find("dtype");
    if (dtype == v.end() || !dtype->is_string()) return Bad(path_, where + "missing dtype");
    if (!ParseStDType(dtype->get<std::string>(), &t.dtype)) {
      return Bad(path_, where + "unknown dtype '" + dtype->get<std::string>() + "'");
    }
    auto shape = v.find("shape");
    if (shape == v.end() || !shape->is_array()) return Bad(path_, where + "missing shape");
    uint64_t elements = 1;
    for (const auto& d : *shape) {
      uint64_t dim;
      if (!ReadUint(d, &dim)) return Bad(path_, where + "shape has a negative or non-integer dimension");
      if (dim != 0 && elements > (1ull << 62) / dim) return Bad(path_, where + "shape is too large");
      elements *= dim;
      t.shape.push_back(static_cast<int64_t>(dim));
    }
    auto offsets = v.find("data_offsets");
    if (offsets == v.end() || !offsets->is_array() || offsets->size() != 2 ||
        !ReadUint((*offsets)[0], &t.begin) || !ReadUint((*offsets)[1], &t.end)) {
      return Bad(path_, where + "data_offsets must be two non-negative integers");
    }
    if (t.begin > t.end) return Bad(path_, where + "data_offsets begin after they end");
    if (t.end > data_size) {
      return Bad(path_, absl::StrCat(where, "data_offsets [", t.begin, ", ", t.end,
                                     ") run past the ", data_size, "-byte data section"));
    }
    const uint64_t expected = elements * StDTypeSize(t.dtype);
    if (t.end - t.begin != expected) {
      return Bad(path_, absl::StrCat(where, "holds ", t.end - t.begin, " bytes but dtype ",
                                     StDTypeName(t.dtype), " and its shape need ", expected));
    }
    auto [pos, inserted] = tensors_.emplace(name, std::move(t));
    if (!inserted) return Bad(path_, where + "appears twice");
    by_offset.push_back(&pos->second);
  }
  std::sort(by_offset.begin(), by_offset.end(),
            [](const StTensorInfo* a, const StTensorInfo* b) { return a->begin < b->begin; });
  for (size_t i = 1; i < by_offset.size(); ++i) {
    if (by_offset[i]->begin < by_offset[i - 1]->end) {
      return Bad(path_, absl::StrCat("tensors '", by_offset[i - 1]->name, "' and '",
                                     by_offset[i]->name, "' overlap"));
    }
  }
  return absl::OkStatus();
}

const StTensorInfo* SafetensorsFile::Find(absl::string_view name) const {
  auto it = tensors_.find(std::string(name));
  return it == tensors_.end() ? nullptr : &it->second;
}

void SafetensorsFile::Release(const StTensorInfo& t, uint64_t offset, uint64_t len) const {
  const uintptr_t page = static_cast<uintptr_t>(::sysconf(_SC_PAGESIZE));
  const uintptr_t start = reinterpret_cast<uintptr_t>(Data(t) + offset);
  const uintptr_t stop = start + len;
  const uintptr_t aligned_start = (start + page - 1) / page * page;
  const uintptr_t aligned_stop = stop / page * page;
  if (aligned_stop > aligned_start) {
    ::madvise(reinterpret_cast<void*>(aligned_start), aligned_stop - aligned_start, MADV_DONTNEED);
  }
}

}  // namespace lmhead
