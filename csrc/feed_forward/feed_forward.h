// The feed-forward op's device pieces, without torch types (csrc/feed_forward/feed_forward.cpp
// fills them from tensors):
//   - run_gemm: one cuBLASLt matmul with an optional fused epilogue (bias, relu, tanh-gelu
//     with its auxiliary pre-activation, their gradients, the bias gradient of B), on the
//     caller's handle, workspace and stream (feed_forward_gemm.cpp);
//   - the elementwise kernels for what no epilogue does: exact gelu, Philox dropout and the
//     backward through them (feed_forward_elementwise.cu).
//
// Layout convention: cuBLASLt is column-major, so a row-major (R, C) tensor is handed over
// as a column-major (C x R) matrix with leading dimension = its row stride. Every (N, F)
// hidden-size buffer is row-major and dense, so element (n, f) is flat index n * F + f,
// which is also its Philox counter.
#pragma once

#include <cublasLt.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "common/dtype.h"

namespace fasttx::feed_forward {

enum class Activation { kRelu, kGelu, kGeluTanh };  // gelu: exact (erf); gelu_tanh: tanh form

// ---------------------------------------------------------------------------------------
// GEMMs (feed_forward_gemm.cpp)

// What the matmul's epilogue does besides D = op(A) op(B). A null bias / bias_grad pointer
// drops that part (kBias without bias is the plain product, kReluBias becomes relu, ...).
enum class Epilogue {
  kNone,         // D = op(A) op(B)
  kBias,         // D = op(A) op(B) + bias          (bias: (m,), broadcast over the n columns)
  kReluBias,     // D = relu(op(A) op(B) + bias)
  kGeluAuxBias,  // aux = op(A) op(B) + bias, D = gelu_tanh(aux)    (cuBLASLt's GELU is tanh)
  kDGeluBGrad,   // D = op(A) op(B) * gelu_tanh'(aux), bias_grad = D's row sums  (m,)
  kBGradB,       // D = op(A) op(B), bias_grad[j] = sum_k op(B)[k, j]  (n,); needs transpose_b
};

struct GemmProblem {
  DType dtype;  // of A, B, D, bias, bias_grad and aux; accumulation is always fp32
  bool transpose_a, transpose_b;
  int64_t m, n, k;  // D is (m x n), the product runs over k; all >= 1

  const void* a;  // column-major (m x k), or (k x m) stored when transpose_a
  int64_t lda;
  const void* b;  // column-major (k x n), or (n x k) stored when transpose_b
  int64_t ldb;
  void* d;        // column-major (m x n), written
  int64_t ldd;

  Epilogue epilogue = Epilogue::kNone;
  const void* bias = nullptr;  // (m,) dense, read by kBias / kReluBias / kGeluAuxBias
  void* bias_grad = nullptr;   // dense, written by kDGeluBGrad ((m,)) and kBGradB ((n,))
  void* aux = nullptr;         // column-major (m x n) pre-activation: written by
  int64_t ldaux = 0;           // kGeluAuxBias, read by kDGeluBGrad; ldaux % 8 == 0, >= m
};

// Torch's cuBLASLt handle, its workspace and the stream every call runs on.
struct BlasLtContext {
  cublasLtHandle_t handle;
  void* workspace;
  size_t workspace_size;
  cudaStream_t stream;
  bool allow_tf32;  // fp32 operands: TF32 tensor cores (torch.backends.cuda.matmul.allow_tf32)
};

enum class GemmOutcome {
  kDone,         // the product is enqueued on the stream
  kNoAlgorithm,  // cuBLASLt's heuristic offered no algorithm: nothing ran, fall back
  kFailed,       // a cuBLASLt call failed: `call` names it, `status` says why
};

struct GemmStatus {
  GemmOutcome outcome;
  cublasStatus_t status;
  const char* call;  // the cuBLASLt function that answered `status`
};

GemmStatus run_gemm(const GemmProblem& problem, const BlasLtContext& context);

// cuBLASLt's name for a status, for error messages.
const char* gemm_status_name(cublasStatus_t status);

// ---------------------------------------------------------------------------------------
// Elementwise kernels (feed_forward_elementwise.cu). `count` = N * F elements, dense and
// row-major; every pointer 16-byte aligned (the launchers return cudaErrorMisalignedAddress
// otherwise). `seed`: the int64 Philox seed on the device, or null without dropout; element
// i is kept when philox_uniform(seed, i) >= dropout_p and then scaled by 1 / (1 - dropout_p).

// hidden = dropout(act(preactivation)). hidden may be preactivation itself (in place).
cudaError_t launch_activation_forward(DType dtype, Activation activation,
                                      const void* preactivation, void* hidden, int64_t count,
                                      const int64_t* seed, float dropout_p,
                                      cudaStream_t stream);

// The backward through dropout and the activation, in place on grad:
//   relu:       saved = h,  grad = grad * [h > 0] / (1 - p)      (h's sign is both masks)
//   gelu(_tanh): saved = a, grad = grad * keep / (1 - p) * act'(a), and when hidden is not
//               null it receives h = dropout(act(a)) (for dW2 = dy^T h).
cudaError_t launch_activation_backward(DType dtype, Activation activation, void* grad,
                                       const void* saved, void* hidden, int64_t count,
                                       const int64_t* seed, float dropout_p,
                                       cudaStream_t stream);

}  // namespace fasttx::feed_forward
