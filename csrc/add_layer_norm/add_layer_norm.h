// The add + dropout + LayerNorm kernels' launch parameters and launchers: raw pointers,
// sizes and strides, no torch types (csrc/add_layer_norm/add_layer_norm.cpp fills them from
// tensors).
//
// Storage types: x, y, dy and dx share one dtype ("x's dtype"); the residual stream s (the
// residual input, s, ds and dresidual) is in x's dtype or in fp32 (an fp32 stream beside
// 16-bit activations); weight and bias are each in x's dtype or fp32 (the binding converts
// any other dtype to fp32, which is what the fp32 arithmetic reads anyway). Every
// computation is fp32. Strides are in elements; every (N, D) tensor has unit column stride.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "common/dtype.h"

namespace fasttx::add_layer_norm {

struct ForwardParams {
  DType x_dtype;       // x and y
  DType stream_dtype;  // residual and s: x_dtype, or fp32
  const void* x;         // (N, D), row stride x_row_stride
  const void* residual;  // (N, D), row stride residual_row_stride, or null (s = dropout(x))
  const void* weight;    // (D,) contiguous, or null (ones)
  const void* bias;      // (D,) contiguous, or null (zeros)
  bool weight_is_float;  // weight is fp32 rather than in x's dtype
  bool bias_is_float;    // likewise for bias
  void* y;               // (N, D) contiguous out: y, x's dtype
  void* stream;          // (N, D) contiguous out: s = residual + dropout(x), stream dtype
  float* mean;           // (N,) out: fp32 mean of s as stored
  float* rstd;           // (N,) out: fp32 1 / sqrt(biased variance of s + eps)
  int64_t rows;          // N (up to 2^31 - 1)
  int dim;               // D >= 1
  int64_t x_row_stride, residual_row_stride;
  float eps;
  const int64_t* seed;  // int64 (1,) Philox seed on the device, or null without dropout.
                        // Counter of element (n, d): n * D + d
  float dropout_p;
  float dropout_scale;  // 1 / (1 - p), rounded to fp32 as the reference does
};

struct BackwardParams {
  DType grad_dtype;    // grad_y and grad_x
  DType stream_dtype;  // stream, grad_stream and grad_residual: grad_dtype, or fp32
  const void* grad_y;       // (N, D) contiguous: dL/dy
  const void* grad_stream;  // (N, D) contiguous: dL/ds of the returned s, or null
  const void* stream;       // (N, D) contiguous: the forward's s
  const void* weight;       // (D,) contiguous, or null (ones)
  bool weight_is_float;     // weight is fp32 rather than in grad_y's dtype
  const float* mean;        // (N,) the forward's statistics
  const float* rstd;        // (N,)
  const int64_t* seed;      // as ForwardParams::seed, or null without dropout
  float dropout_p, dropout_scale;
  void* grad_x;             // (N, D) contiguous out: dx = ds * keep / (1 - p), grad_dtype
  void* grad_residual;      // (N, D) contiguous out: dresidual = ds, stream dtype, or null
  void* grad_weight;        // (D,) out: sum over rows of dy * xhat, or null
  DType grad_weight_dtype;
  void* grad_bias;          // (D,) out: sum over rows of dy, or null
  DType grad_bias_dtype;
  float* partials;  // fp32 scratch (2, plan.partial_rows, D): per-block column sums of
                    // dy * xhat, then of dy; 256-byte aligned; null when neither grad_weight
                    // nor grad_bias is wanted
  float* row_dots;  // fp32 scratch (2, N): mean(g * xhat) and mean(g) per row, g = dy *
                    // weight; only when plan.row_dots (rows split into column windows)
  int64_t rows;     // N (up to 2^31 - 1)
  int dim;          // D >= 1
};

// How the backward covers the problem; the binding sizes the scratch buffers from it.
struct BackwardPlan {
  int vec;           // elements per vector access: 16 bytes of grad_y's dtype, or 1
  int row_threads;   // threads per row: a power of two up to 32, or the whole block
  int block_threads;
  int windows;       // column windows a row is split into (> 1 only for D > 8192)
  int partial_rows;  // persistent blocks per window: rows of the partial column sums
                     // (0 when N == 0)
  bool row_dots;     // windows > 1: the row dots are computed by a pre-pass into row_dots
};

// Launchers: return cudaSuccess or the launch error; the bindings raise it as a torch error.
// Both launch nothing for N == 0 (except the backward's dweight/dbias, which are zeros).
cudaError_t add_layer_norm_forward(const ForwardParams& params, cudaStream_t stream);

// Fills `plan` for `params` (pointers of the scratch buffers not needed yet) on the current
// device; a fixed function of the sizes, dtypes, alignments and the device, so that the
// reduction order, and hence dweight and dbias, are the same run after run.
cudaError_t plan_add_layer_norm_backward(const BackwardParams& params, BackwardPlan* plan);
cudaError_t add_layer_norm_backward(const BackwardParams& params, const BackwardPlan& plan,
                                    cudaStream_t stream);

}  // namespace fasttx::add_layer_norm
