// One cuBLASLt matmul with a fused epilogue: the feed-forward op's six GEMMs all come here.
//
// Built this way because cuBLASLt already does what the op needs around its GEMMs: the
// bias, relu and tanh-gelu (writing the pre-activation beside the activation), the
// tanh-gelu derivative and the bias gradients, inside the GEMM's own epilogue, with
// tuned kernels for every architecture. What no epilogue covers (exact gelu, dropout) is
// feed_forward_elementwise.cu.
//
// Every call creates its descriptors, asks the heuristic for one algorithm and destroys
// the descriptors again (an RAII holder, so no path leaks them). That is host work of a
// few microseconds, the same per-call pattern as torch's own cuBLASLt addmm; no cache, so
// no state to invalidate when torch's settings change. Accumulation is fp32 for every
// dtype (CUBLAS_COMPUTE_32F; with TF32 tensor cores for fp32 operands only when torch
// allows them), and split-K algorithms that would sum partial products in fp16/bf16 are
// excluded through the reduction-scheme mask.
#include <cublasLt.h>

#include <cstdint>

#include "feed_forward/feed_forward.h"

namespace fasttx::feed_forward {
namespace {

// Returns a failed GemmStatus naming `call` when `expression` is not CUBLAS_STATUS_SUCCESS.
#define FASTTX_LT_CHECK(call, expression)                        \
  do {                                                           \
    const cublasStatus_t status_ = (expression);                 \
    if (status_ != CUBLAS_STATUS_SUCCESS) {                      \
      return GemmStatus{GemmOutcome::kFailed, status_, (call)};  \
    }                                                            \
  } while (0)

// The descriptors of one call, destroyed on every return path.
struct Descriptors {
  cublasLtMatmulDesc_t operation = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, d = nullptr;
  cublasLtMatmulPreference_t preference = nullptr;

  Descriptors() = default;
  Descriptors(const Descriptors&) = delete;
  Descriptors& operator=(const Descriptors&) = delete;
  ~Descriptors() {
    if (preference != nullptr) cublasLtMatmulPreferenceDestroy(preference);
    if (d != nullptr) cublasLtMatrixLayoutDestroy(d);
    if (b != nullptr) cublasLtMatrixLayoutDestroy(b);
    if (a != nullptr) cublasLtMatrixLayoutDestroy(a);
    if (operation != nullptr) cublasLtMatmulDescDestroy(operation);
  }
};

cudaDataType_t data_type(DType dtype) {
  switch (dtype) {
    case DType::kFloat16: return CUDA_R_16F;
    case DType::kBFloat16: return CUDA_R_16BF;
    case DType::kFloat32: return CUDA_R_32F;
  }
  return CUDA_R_32F;
}

// The cuBLASLt epilogue for the request; a missing bias (gradient) drops that part.
cublasLtEpilogue_t lt_epilogue(const GemmProblem& problem) {
  const bool bias = problem.bias != nullptr, bias_grad = problem.bias_grad != nullptr;
  switch (problem.epilogue) {
    case Epilogue::kNone: return CUBLASLT_EPILOGUE_DEFAULT;
    case Epilogue::kBias: return bias ? CUBLASLT_EPILOGUE_BIAS : CUBLASLT_EPILOGUE_DEFAULT;
    case Epilogue::kReluBias: return bias ? CUBLASLT_EPILOGUE_RELU_BIAS : CUBLASLT_EPILOGUE_RELU;
    case Epilogue::kGeluAuxBias:
      return bias ? CUBLASLT_EPILOGUE_GELU_AUX_BIAS : CUBLASLT_EPILOGUE_GELU_AUX;
    case Epilogue::kDGeluBGrad:
      return bias_grad ? CUBLASLT_EPILOGUE_DGELU_BGRAD : CUBLASLT_EPILOGUE_DGELU;
    case Epilogue::kBGradB:
      return bias_grad ? CUBLASLT_EPILOGUE_BGRADB : CUBLASLT_EPILOGUE_DEFAULT;
  }
  return CUBLASLT_EPILOGUE_DEFAULT;
}

bool uses_aux(Epilogue epilogue) {
  return epilogue == Epilogue::kGeluAuxBias || epilogue == Epilogue::kDGeluBGrad;
}

// The largest power of two (up to cuBLASLt's default assumption of 256) dividing the
// address: what the heuristic may assume of a buffer. Tensors that start inside their
// storage (slices) can be aligned to as little as their element size.
uint32_t alignment(const void* pointer) {
  const auto address = reinterpret_cast<uintptr_t>(pointer);
  uint32_t bytes = 1;
  while (bytes < 256 && address % (2u * bytes) == 0) bytes *= 2;
  return bytes;
}

template <typename Value>
cublasStatus_t set_attribute(cublasLtMatmulDesc_t operation,
                             cublasLtMatmulDescAttributes_t attribute, const Value& value) {
  return cublasLtMatmulDescSetAttribute(operation, attribute, &value, sizeof(value));
}

template <typename Value>
cublasStatus_t set_preference(cublasLtMatmulPreference_t preference,
                              cublasLtMatmulPreferenceAttributes_t attribute,
                              const Value& value) {
  return cublasLtMatmulPreferenceSetAttribute(preference, attribute, &value, sizeof(value));
}

// The operation descriptor: compute type, transposes, epilogue and its pointers. The
// epilogue pointers must be set before the heuristic runs: it reads their alignment.
GemmStatus describe_operation(const GemmProblem& problem, bool allow_tf32,
                              cublasLtMatmulDesc_t* operation) {
  const cublasComputeType_t compute =
      problem.dtype == DType::kFloat32 && allow_tf32 ? CUBLAS_COMPUTE_32F_FAST_TF32
                                                     : CUBLAS_COMPUTE_32F;
  // scale type fp32: alpha and beta are host floats
  FASTTX_LT_CHECK("cublasLtMatmulDescCreate",
                  cublasLtMatmulDescCreate(operation, compute, CUDA_R_32F));
  const char* set = "cublasLtMatmulDescSetAttribute";
  const int32_t transpose_a = problem.transpose_a ? CUBLAS_OP_T : CUBLAS_OP_N;
  const int32_t transpose_b = problem.transpose_b ? CUBLAS_OP_T : CUBLAS_OP_N;
  FASTTX_LT_CHECK(set, set_attribute(*operation, CUBLASLT_MATMUL_DESC_TRANSA, transpose_a));
  FASTTX_LT_CHECK(set, set_attribute(*operation, CUBLASLT_MATMUL_DESC_TRANSB, transpose_b));
  const uint32_t epilogue = lt_epilogue(problem);
  FASTTX_LT_CHECK(set, set_attribute(*operation, CUBLASLT_MATMUL_DESC_EPILOGUE, epilogue));

  // Bias and bias gradient share one pointer attribute; their type is D's (set explicitly:
  // the default, "D's type", is what we want, but saying so costs nothing).
  const void* bias = nullptr;
  if (problem.epilogue == Epilogue::kDGeluBGrad || problem.epilogue == Epilogue::kBGradB) {
    bias = problem.bias_grad;
  } else if (problem.epilogue != Epilogue::kNone) {
    bias = problem.bias;
  }
  if (bias != nullptr) {
    const int32_t bias_type = data_type(problem.dtype);
    FASTTX_LT_CHECK(set, set_attribute(*operation, CUBLASLT_MATMUL_DESC_BIAS_POINTER, bias));
    FASTTX_LT_CHECK(set,
                    set_attribute(*operation, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, bias_type));
  }
  // The gelu pre-activation: D's type (the default aux type), leading dimension in elements.
  if (uses_aux(problem.epilogue)) {
    FASTTX_LT_CHECK(set, set_attribute(*operation, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER,
                                       problem.aux));
    FASTTX_LT_CHECK(set, set_attribute(*operation, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD,
                                       problem.ldaux));
  }
  return {GemmOutcome::kDone, CUBLAS_STATUS_SUCCESS, nullptr};
}

// The preference: the workspace we have, the real alignment of each operand, and no
// split-K reduction through the output type (fp16/bf16 partial sums) or in place.
GemmStatus describe_preference(const GemmProblem& problem, size_t workspace_size,
                               cublasLtMatmulPreference_t* preference) {
  FASTTX_LT_CHECK("cublasLtMatmulPreferenceCreate", cublasLtMatmulPreferenceCreate(preference));
  const char* set = "cublasLtMatmulPreferenceSetAttribute";
  const uint64_t workspace_bytes = workspace_size;
  FASTTX_LT_CHECK(set, set_preference(*preference, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                      workspace_bytes));
  // NONE (no split) passes any mask; COMPUTE_TYPE keeps the partial sums in fp32.
  const uint32_t reductions = CUBLASLT_REDUCTION_SCHEME_COMPUTE_TYPE;
  FASTTX_LT_CHECK(set, set_preference(*preference, CUBLASLT_MATMUL_PREF_REDUCTION_SCHEME_MASK,
                                      reductions));
  FASTTX_LT_CHECK(set, set_preference(*preference, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES,
                                      alignment(problem.a)));
  FASTTX_LT_CHECK(set, set_preference(*preference, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
                                      alignment(problem.b)));
  FASTTX_LT_CHECK(set, set_preference(*preference, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES,
                                      alignment(problem.d)));
  FASTTX_LT_CHECK(set, set_preference(*preference, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES,
                                      alignment(problem.d)));
  return {GemmOutcome::kDone, CUBLAS_STATUS_SUCCESS, nullptr};
}

}  // namespace

GemmStatus run_gemm(const GemmProblem& problem, const BlasLtContext& context) {
  // Constraints the cuBLASLt documentation states (and a card confirms: it refuses them):
  // BGRADB sums op(B) over k only for op(B) = B^T; the gelu aux's leading dimension is a
  // multiple of 8 and at least m. Outside them there is no algorithm: the caller falls back.
  if (problem.epilogue == Epilogue::kBGradB && problem.bias_grad != nullptr &&
      !problem.transpose_b) {
    return {GemmOutcome::kNoAlgorithm, CUBLAS_STATUS_NOT_SUPPORTED, "run_gemm"};
  }
  if (uses_aux(problem.epilogue) &&
      (problem.aux == nullptr || problem.ldaux % 8 != 0 || problem.ldaux < problem.m)) {
    return {GemmOutcome::kNoAlgorithm, CUBLAS_STATUS_NOT_SUPPORTED, "run_gemm"};
  }

  Descriptors descriptors;
  GemmStatus status = describe_operation(problem, context.allow_tf32, &descriptors.operation);
  if (status.outcome != GemmOutcome::kDone) return status;
  status = describe_preference(problem, context.workspace_size, &descriptors.preference);
  if (status.outcome != GemmOutcome::kDone) return status;

  // Layouts of the stored matrices (before op()); C is D (beta = 0).
  const cudaDataType_t type = data_type(problem.dtype);
  const char* create = "cublasLtMatrixLayoutCreate";
  FASTTX_LT_CHECK(create, cublasLtMatrixLayoutCreate(
                              &descriptors.a, type, problem.transpose_a ? problem.k : problem.m,
                              problem.transpose_a ? problem.m : problem.k, problem.lda));
  FASTTX_LT_CHECK(create, cublasLtMatrixLayoutCreate(
                              &descriptors.b, type, problem.transpose_b ? problem.n : problem.k,
                              problem.transpose_b ? problem.k : problem.n, problem.ldb));
  FASTTX_LT_CHECK(create, cublasLtMatrixLayoutCreate(&descriptors.d, type, problem.m, problem.n,
                                                     problem.ldd));

  // One algorithm, the heuristic's best. A refusal (an error status or no result) means
  // this epilogue / shape / alignment has no kernel here: nothing ran, the caller falls back.
  cublasLtMatmulHeuristicResult_t heuristic = {};
  int found = 0;
  const cublasStatus_t search = cublasLtMatmulAlgoGetHeuristic(
      context.handle, descriptors.operation, descriptors.a, descriptors.b, descriptors.d,
      descriptors.d, descriptors.preference, 1, &heuristic, &found);
  if (search != CUBLAS_STATUS_SUCCESS || found < 1 ||
      heuristic.state != CUBLAS_STATUS_SUCCESS) {
    return {GemmOutcome::kNoAlgorithm,
            search != CUBLAS_STATUS_SUCCESS ? search : CUBLAS_STATUS_NOT_SUPPORTED,
            "cublasLtMatmulAlgoGetHeuristic"};
  }

  const float alpha = 1.0f, beta = 0.0f;  // host pointers, fp32 like the scale type
  FASTTX_LT_CHECK("cublasLtMatmul",
                  cublasLtMatmul(context.handle, descriptors.operation, &alpha, problem.a,
                                 descriptors.a, problem.b, descriptors.b, &beta, problem.d,
                                 descriptors.d, problem.d, descriptors.d, &heuristic.algo,
                                 context.workspace, context.workspace_size, context.stream));
  return {GemmOutcome::kDone, CUBLAS_STATUS_SUCCESS, nullptr};
}

const char* gemm_status_name(cublasStatus_t status) { return cublasLtGetStatusName(status); }

#undef FASTTX_LT_CHECK

}  // namespace fasttx::feed_forward
