#include "client/npy.h"

#include <cstring>
#include <fstream>
#include <iterator>
#include <regex>

#include "absl/strings/str_cat.h"
#include "kernels/half.h"

namespace lmhead::client {

absl::StatusOr<NpyMatrix> ReadNpy(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open ", path));
  const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  auto bad = [&](const std::string& what) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": ", what));
  };
  if (bytes.size() < 10 || bytes.compare(0, 6, "\x93NUMPY") != 0) return bad("not a .npy file");
  const int major = static_cast<uint8_t>(bytes[6]);
  size_t header_len, offset;
  if (major == 1) {
    header_len = static_cast<uint8_t>(bytes[8]) | (static_cast<uint8_t>(bytes[9]) << 8);
    offset = 10;
  } else if (major == 2 || major == 3) {
    if (bytes.size() < 12) return bad("truncated header");
    header_len = 0;
    for (int i = 3; i >= 0; --i) header_len = (header_len << 8) | static_cast<uint8_t>(bytes[8 + i]);
    offset = 12;
  } else {
    return bad(absl::StrCat("unsupported .npy version ", major));
  }
  if (offset + header_len > bytes.size()) return bad("header runs past the end of the file");
  const std::string header = bytes.substr(offset, header_len);
  std::smatch m;
  if (!std::regex_search(header, m, std::regex("'descr':\\s*'([<|=]?)([fF])(\\d)'"))) {
    return bad("dtype must be float16, float32 or float64");
  }
  if (m[1] == ">") return bad("big-endian data is not supported");
  const int elem = std::stoi(m[3]);
  if (elem != 2 && elem != 4 && elem != 8) return bad("dtype must be float16, float32 or float64");
  if (header.find("'fortran_order': True") != std::string::npos) return bad("Fortran order is not supported");
  if (!std::regex_search(header, m, std::regex("'shape':\\s*\\(\\s*(\\d+)\\s*,?\\s*(\\d*)\\s*,?\\s*\\)"))) {
    return bad("shape must be (hidden,) or (rows, hidden)");
  }
  NpyMatrix out;
  out.rows = m[2].str().empty() ? 1 : std::stoll(m[1]);
  out.cols = m[2].str().empty() ? std::stoll(m[1]) : std::stoll(m[2]);
  const size_t data = offset + header_len;
  const size_t count = static_cast<size_t>(out.rows * out.cols);
  if (bytes.size() - data != count * elem) {
    return bad(absl::StrCat("holds ", bytes.size() - data, " data bytes; shape needs ", count * elem));
  }
  out.values.resize(count);
  const char* p = bytes.data() + data;
  for (size_t i = 0; i < count; ++i) {
    if (elem == 4) {
      std::memcpy(&out.values[i], p + 4 * i, 4);
    } else if (elem == 8) {
      double d;
      std::memcpy(&d, p + 8 * i, 8);
      out.values[i] = static_cast<float>(d);
    } else {
      uint16_t h;
      std::memcpy(&h, p + 2 * i, 2);
      out.values[i] = HalfToFloat(h);
    }
  }
  return out;
}

}  // namespace lmhead::client
