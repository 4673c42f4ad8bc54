// lmhead::DType <-> lmhead.v1.DType, shared by the service's request codec and the client.
#ifndef LMHEAD_PROTO_DTYPE_CODEC_H_
#define LMHEAD_PROTO_DTYPE_CODEC_H_

#include "kernels/tensor.h"
#include "lmhead/v1/lmhead.pb.h"

namespace lmhead {

inline v1::DType ToProto(DType d) {
  switch (d) {
    case DType::kFp32: return v1::DTYPE_FP32;
    case DType::kBf16: return v1::DTYPE_BF16;
    case DType::kFp16: return v1::DTYPE_FP16;
  }
  return v1::DTYPE_UNSPECIFIED;
}

// False for DTYPE_UNSPECIFIED and values this build does not know.
inline bool FromProto(v1::DType proto, DType* out) {
  switch (proto) {
    case v1::DTYPE_FP32: *out = DType::kFp32; return true;
    case v1::DTYPE_BF16: *out = DType::kBf16; return true;
    case v1::DTYPE_FP16: *out = DType::kFp16; return true;
    default: return false;
  }
}

}  // namespace lmhead

#endif  // LMHEAD_PROTO_DTYPE_CODEC_H_
