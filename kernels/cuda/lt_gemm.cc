#include "kernels/cuda/lt_gemm.h"

#include <algorithm>
#include <vector>

#include "absl/strings/str_cat.h"

namespace lmhead::cuda {
namespace {

absl::Status LtStatus(cublasStatus_t s, const char* what) {
  if (s == CUBLAS_STATUS_SUCCESS) return absl::OkStatus();
  return absl::InternalError(absl::StrCat(what, ": cuBLASLt status ", static_cast<int>(s)));
}

#define LT_RETURN_IF_ERROR(expr)                                                  \
  do {                                                                            \
    if (absl::Status lt_status = LtStatus((expr), #expr); !lt_status.ok()) return lt_status; \
  } while (0)

}  // namespace

int64_t LtGemm::PadRows(int64_t n) {
  if (n <= 128) return (n + 15) / 16 * 16;
  return (n + 127) / 128 * 128;
}

std::vector<int64_t> LtGemm::PaddedSizes(int64_t max_rows) {
  std::vector<int64_t> sizes;
  for (int64_t n = 1; n <= max_rows; n = PadRows(n) + 1) sizes.push_back(PadRows(n));
  return sizes;
}

absl::StatusOr<std::unique_ptr<LtGemm>> LtGemm::Create(cudaDataType type, int64_t vocab, int64_t hidden,
                                                       size_t workspace_bytes) {
  if (vocab % 16 != 0 || hidden % 16 != 0) {
    return absl::InvalidArgumentError(absl::StrCat("cuBLASLt needs vocab and hidden to be multiples of 16; got ",
                                                   vocab, " x ", hidden));
  }
  std::unique_ptr<LtGemm> g(new LtGemm());
  g->type_ = type;
  g->vocab_ = vocab;
  g->hidden_ = hidden;
  LT_RETURN_IF_ERROR(cublasLtCreate(&g->handle_));
  LT_RETURN_IF_ERROR(cublasLtMatmulDescCreate(&g->desc_, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  const cublasOperation_t transa = CUBLAS_OP_T, transb = CUBLAS_OP_N;
  LT_RETURN_IF_ERROR(cublasLtMatmulDescSetAttribute(g->desc_, CUBLASLT_MATMUL_DESC_TRANSA, &transa, sizeof(transa)));
  LT_RETURN_IF_ERROR(cublasLtMatmulDescSetAttribute(g->desc_, CUBLASLT_MATMUL_DESC_TRANSB, &transb, sizeof(transb)));
  // Column-major view: A is [hidden, vocab] (ld = hidden), used transposed.
  LT_RETURN_IF_ERROR(cublasLtMatrixLayoutCreate(&g->a_, type, hidden, vocab, hidden));
  if (absl::Status s = g->workspace_.Allocate(workspace_bytes); !s.ok()) return s;
  return g;
}

LtGemm::~LtGemm() {
  for (auto& [n, plan] : plans_) {
    cublasLtMatrixLayoutDestroy(plan.b);
    cublasLtMatrixLayoutDestroy(plan.d);
  }
  if (a_ != nullptr) cublasLtMatrixLayoutDestroy(a_);
  if (desc_ != nullptr) cublasLtMatmulDescDestroy(desc_);
  if (handle_ != nullptr) cublasLtDestroy(handle_);
}

absl::StatusOr<LtGemm::Plan*> LtGemm::GetPlan(const void* w, const void* x, int64_t n, float* d,
                                              cudaStream_t stream) {
  auto it = plans_.find(n);
  if (it != plans_.end()) return &it->second;
  Plan plan;
  // B: [hidden, n] column-major = activations [n, hidden] row-major. D: [vocab, n] = [n, vocab].
  LT_RETURN_IF_ERROR(cublasLtMatrixLayoutCreate(&plan.b, type_, hidden_, n, hidden_));
  LT_RETURN_IF_ERROR(cublasLtMatrixLayoutCreate(&plan.d, CUDA_R_32F, vocab_, n, vocab_));
  cublasLtMatmulPreference_t pref;
  LT_RETURN_IF_ERROR(cublasLtMatmulPreferenceCreate(&pref));
  const size_t ws = workspace_.bytes();
  cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws));
  std::vector<cublasLtMatmulHeuristicResult_t> results(8);
  int found = 0;
  cublasStatus_t hs = cublasLtMatmulAlgoGetHeuristic(handle_, desc_, a_, plan.b, plan.d, plan.d, pref,
                                                     static_cast<int>(results.size()), results.data(), &found);
  cublasLtMatmulPreferenceDestroy(pref);
  if (hs != CUBLAS_STATUS_SUCCESS || found == 0) {
    cublasLtMatrixLayoutDestroy(plan.b);
    cublasLtMatrixLayoutDestroy(plan.d);
    return absl::InternalError(absl::StrCat("cuBLASLt has no algorithm for ", n, " x ", vocab_, " x ", hidden_,
                                            " (status ", static_cast<int>(hs), ")"));
  }
  // Time each candidate on the real operands; keep the fastest.
  cudaEvent_t start, stop;
  CUDA_RETURN_IF_ERROR(cudaEventCreate(&start));
  CUDA_RETURN_IF_ERROR(cudaEventCreate(&stop));
  const float alpha = 1.0f, beta = 0.0f;
  float best_ms = 1e30f;
  int best = -1;
  for (int i = 0; i < found; ++i) {
    auto run = [&] {
      return cublasLtMatmul(handle_, desc_, &alpha, w, a_, x, plan.b, &beta, d, plan.d, d, plan.d,
                            &results[i].algo, workspace_.get(), ws, stream);
    };
    if (run() != CUBLAS_STATUS_SUCCESS) continue;
    cudaEventRecord(start, stream);
    for (int rep = 0; rep < 5; ++rep) run();
    cudaEventRecord(stop, stream);
    cudaEventSynchronize(stop);
    float ms = 0;
    cudaEventElapsedTime(&ms, start, stop);
    if (ms < best_ms) best_ms = ms, best = i;
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  CUDA_RETURN_IF_ERROR(cudaGetLastError());
  if (best < 0) return absl::InternalError(absl::StrCat("no cuBLASLt candidate ran for ", n, " rows"));
  plan.algo = results[best].algo;
  return &plans_.emplace(n, plan).first->second;
}

absl::Status LtGemm::Run(const void* w, const void* x, int64_t n, float* d, cudaStream_t stream) {
  if (n % 16 != 0) return absl::InvalidArgumentError("GEMM rows must be padded to a multiple of 16");
  auto plan = GetPlan(w, x, n, d, stream);
  if (!plan.ok()) return plan.status();
  const float alpha = 1.0f, beta = 0.0f;
  LT_RETURN_IF_ERROR(cublasLtMatmul(handle_, desc_, &alpha, w, a_, x, (*plan)->b, &beta, d, (*plan)->d, d,
                                    (*plan)->d, &(*plan)->algo, workspace_.get(), workspace_.bytes(), stream));
  return absl::OkStatus();
}

}  // namespace lmhead::cuda
