#include "kernels/backend_factory.h"

#include <dlfcn.h>
#include <unistd.h>

#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "kernels/cpu/cpu_backend.h"
#include "kernels/head_quantizer.h"
#include "kernels/status_macros.h"
#include "kernels/cuda/cuda_module_api.h"

namespace lmhead {
namespace {

std::string ExecutableDir() {
  std::vector<char> buf(4096);
  const ssize_t n = ::readlink("/proc/self/exe", buf.data(), buf.size() - 1);
  if (n <= 0) return "";
  std::string path(buf.data(), n);
  return path.substr(0, path.find_last_of('/'));
}

// dlopen's the CUDA module (never closed: backends it made may live until exit).
absl::StatusOr<void*> OpenCudaModule(const std::string& explicit_path) {
  std::vector<std::string> candidates;
  if (!explicit_path.empty()) {
    candidates.push_back(explicit_path);
  } else {
    const std::string dir = ExecutableDir();
    if (!dir.empty()) {
      candidates.push_back(dir + "/" + kCudaModuleFile);
      candidates.push_back(dir + "/../lib/" + kCudaModuleFile);
    }
    candidates.push_back(kCudaModuleFile);  // LD_LIBRARY_PATH and the system paths
  }
  std::string errors;
  for (const std::string& path : candidates) {
    if (void* handle = ::dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL)) return handle;
    const char* err = ::dlerror();
    absl::StrAppend(&errors, "\n  ", err != nullptr ? err : path);
  }
  return absl::UnavailableError(absl::StrCat("cannot load the CUDA backend module:", errors));
}

absl::StatusOr<std::unique_ptr<Backend>> NewCudaBackend(const BackendOptions& options, const HeadSource& source,
                                                        const QuantizeOptions& quantize) {
  void* module;
  {
    auto opened = OpenCudaModule(options.cuda_module_path);
    if (!opened.ok()) return opened.status();
    module = *opened;
  }
  auto count = reinterpret_cast<CudaDeviceCountFn>(::dlsym(module, kCudaDeviceCountSymbol));
  auto create = reinterpret_cast<CreateCudaBackendFn>(::dlsym(module, kCreateCudaBackendSymbol));
  if (count == nullptr || create == nullptr) {
    return absl::UnavailableError("the CUDA backend module lacks its entry points; rebuild it");
  }
  if (count() <= 0) return absl::UnavailableError("no CUDA device is visible");
  CudaModuleArgs args;
  args.device = options.device;
  args.transform = options.transform;
  args.fp8_activations = options.activation_precision == ActivationPrecision::kFp8;
  args.output_workspace_bytes = options.gpu_output_workspace_bytes;
  args.fp8_gemm = options.gpu_fp8_gemm;
  args.gemv_blocks_per_sm = options.gpu_gemv_blocks_per_sm;
  args.host_threads = options.cpu_threads;
  args.source = &source;
  args.quantize = quantize;
  Backend* backend = nullptr;
  char error[1024] = {0};
  const int code = create(&args, &backend, error, sizeof(error));
  if (code != 0) return absl::Status(static_cast<absl::StatusCode>(code), absl::StrCat("CUDA backend: ", error));
  return std::unique_ptr<Backend>(backend);
}

// Whether `cuda` (the CUDA attempt's result) lets the CPU backend take over: only under kAuto,
// and only when CUDA is not available here; a real CUDA failure is reported.
bool FallsBackToCpu(const BackendOptions& options, const absl::StatusOr<std::unique_ptr<Backend>>& cuda) {
  return !cuda.ok() && options.kind == BackendKind::kAuto && cuda.status().code() == absl::StatusCode::kUnavailable;
}

}  // namespace

bool ParseBackendKind(absl::string_view text, BackendKind* out) {
  if (text == "auto") { *out = BackendKind::kAuto; return true; }
  if (text == "cpu") { *out = BackendKind::kCpu; return true; }
  if (text == "cuda") { *out = BackendKind::kCuda; return true; }
  return false;
}

bool ParseActivationPrecision(absl::string_view text, ActivationPrecision* out) {
  if (text == "bf16") { *out = ActivationPrecision::kBf16; return true; }
  if (text == "fp8") { *out = ActivationPrecision::kFp8; return true; }
  return false;
}

absl::StatusOr<std::unique_ptr<Backend>> NewBackend(const BackendOptions& options, const HeadSource& source,
                                                    const QuantizeOptions& quantize) {
  if (options.kind != BackendKind::kCpu) {
    auto cuda = NewCudaBackend(options, source, quantize);
    if (!FallsBackToCpu(options, cuda)) return cuda;
  }
  ASSIGN_OR_RETURN(HeadWeights weights, QuantizeHead(source, quantize));
  return NewCpuBackend(std::move(weights), options.transform, options.cpu_threads);
}

absl::StatusOr<std::unique_ptr<Backend>> NewBackend(const BackendOptions& options, HeadWeights weights) {
  if (options.kind != BackendKind::kCpu) {
    QuantizeOptions as_is;
    as_is.format = weights.format;
    as_is.scale_mode = weights.scale_mode;
    auto cuda = NewCudaBackend(options, SourceOf(weights), as_is);
    if (!FallsBackToCpu(options, cuda)) return cuda;
  }
  return NewCpuBackend(std::move(weights), options.transform, options.cpu_threads);
}

}  // namespace lmhead
