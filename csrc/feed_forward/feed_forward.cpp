// Binding of the feed-forward op, fasttx_cuda::feed_forward_forward / _backward (schemas in
// csrc/ops.cpp): y = dropout(act(x w1^T + b1)) w2^T + b2 on cuBLASLt GEMMs (torch's handle,
// workspace and stream) whose epilogues do the bias, activation and bias-gradient work,
// plus the elementwise kernels of feed_forward_elementwise.cu for what they can't do.
//
// Forward (the op's second output, `saved`, is h for relu and a for gelu/gelu_tanh):
//   relu, no dropout       x w1^T   RELU_BIAS epilogue        -> h = saved
//   gelu_tanh, no dropout, x w1^T   GELU_AUX_BIAS epilogue    -> h (temporary), aux a = saved
//     fp16/bf16 (see activation_in_epilogue for why not fp32)
//   otherwise              x w1^T   BIAS epilogue             -> a = saved, then
//                          activation_forward_kernel          -> h (relu: in place in saved)
//                          y = h w2^T  BIAS epilogue
// relu saves h because its sign is both the relu mask and the dropout mask: the backward
// needs neither a nor the Philox stream, and dW2 = dy^T h reads h anyway.
//
// Backward:
//   gelu_tanh, no dropout, da = dy w2 * gelu_tanh'(a)  DGELU_BGRAD epilogue (aux a), which
//     fp16/bf16            also gives db1; then activation_forward_kernel regenerates h
//   otherwise              dh = dy w2 (plain), then activation_backward_kernel: da in place,
//                          and h for gelu/gelu_tanh
//   dW2 = dy^T h   BGRADB epilogue -> db2        dx = da w1
//   dW1 = da^T x   BGRADB epilogue -> db1 (unless DGELU_BGRAD gave it)
// relu never uses DRELU_BGRAD: that epilogue reads the 1-bit mask RELU_AUX writes, which the
// (N, F) saved tensor of the schema cannot carry beside h, and the bit order inside the
// mask is not documented, so building it from h here would rest on a guess.
//
// Fallbacks, each correct on its own: a fused epilogue cuBLASLt's heuristic refuses (a
// shape, an alignment, the gelu aux's leading dimension F not a multiple of 8) becomes the
// plain / bias GEMM followed by the elementwise kernel; a bias-gradient epilogue it refuses
// becomes the plain GEMM and a torch column sum; a plain or bias GEMM it refuses becomes
// at::mm / at::addmm. Exact gelu and every case with dropout always take the elementwise
// path (no epilogue computes erf-gelu or Philox).
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContextLight.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>
#include <torch/version.h>

#include <algorithm>
#include <cstdint>
#include <optional>
#include <string>
#include <tuple>

#include "common/binding.h"
#include "feed_forward/feed_forward.h"

namespace {

namespace ff = fasttx::feed_forward;
using fasttx::DType;
using namespace fasttx::binding;

// torch >= 2.9 hands out the cuBLASLt workspace of the current stream (ATen/cuda/
// CUDAContextLight.h; present in the pinned torch 2.13). Older versions: a workspace from
// the caching allocator per call, of cuBLAS's recommended size for Hopper.
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 9)
#define FASTTX_TORCH_BLASLT_WORKSPACE 1
#else
#define FASTTX_TORCH_BLASLT_WORKSPACE 0
constexpr int64_t kOwnWorkspaceBytes = 32 << 20;
#endif

ff::Activation parse_activation(c10::string_view name) {
  if (name == "relu") return ff::Activation::kRelu;
  if (name == "gelu") return ff::Activation::kGelu;
  if (name == "gelu_tanh") return ff::Activation::kGeluTanh;
  TORCH_CHECK(false, "activation: expected \"relu\", \"gelu\" or \"gelu_tanh\", got \"",
              std::string(name), "\"");
  return ff::Activation::kRelu;
}

// Whether cuBLASLt's epilogue may apply the activation: relu always; gelu_tanh for fp16
// and bf16 only, because cuBLASLt's GELU evaluates its tanh approximately (about 1e-4
// relative error in fp32, as measured on a card and published), which is above fp32's error
// budget though below one fp16/bf16 rounding; exact gelu never (cuBLASLt's GELU is the tanh
// form); nothing with dropout (no epilogue draws the Philox mask).
bool activation_in_epilogue(ff::Activation activation, DType dtype, bool dropout) {
  if (dropout || activation == ff::Activation::kGelu) return false;
  return activation == ff::Activation::kRelu || dtype != DType::kFloat32;
}

struct Sizes {
  int64_t tokens, dim, hidden, dim_out;  // N, D, F, D'
  DType dtype;
};

// x (N, D), w1 (F, D), b1 (F,), w2 (D', F), b2 (D',): CUDA, one device, one float dtype.
Sizes check_inputs(const at::Tensor& x, const at::Tensor& w1, const std::optional<at::Tensor>& b1,
                   const at::Tensor& w2, const std::optional<at::Tensor>& b2) {
  check_cuda(x, "x");
  check_dim(x, "x", 2, "(N, D)");
  const DType dtype = float_dtype(x, "x");
  check_cuda(w1, "w1");
  check_same_device(w1, "w1", x, "x");
  check_same_dtype(w1, "w1", x, "x");
  check_dim(w1, "w1", 2, "(F, D)");
  check_cuda(w2, "w2");
  check_same_device(w2, "w2", x, "x");
  check_same_dtype(w2, "w2", x, "x");
  check_dim(w2, "w2", 2, "(D_out, F)");
  const Sizes sizes{x.size(0), x.size(1), w1.size(0), w2.size(0), dtype};
  check_shape(w1, "w1", {sizes.hidden, sizes.dim}, "(F, D) with D = x.size(1)");
  check_shape(w2, "w2", {sizes.dim_out, sizes.hidden}, "(D_out, F) with F = w1.size(0)");
  if (b1.has_value()) {
    check_cuda(*b1, "b1");
    check_same_device(*b1, "b1", x, "x");
    check_same_dtype(*b1, "b1", x, "x");
    check_shape(*b1, "b1", {sizes.hidden}, "(F,) with F = w1.size(0)");
  }
  if (b2.has_value()) {
    check_cuda(*b2, "b2");
    check_same_device(*b2, "b2", x, "x");
    check_same_dtype(*b2, "b2", x, "x");
    check_shape(*b2, "b2", {sizes.dim_out}, "(D_out,) with D_out = w2.size(0)");
  }
  TORCH_CHECK(sizes.dim > 0, "x: expected at least one feature (D > 0), got shape ", x.sizes());
  TORCH_CHECK(sizes.hidden > 0, "w1: expected at least one row (F > 0), got shape ",
              w1.sizes());
  TORCH_CHECK(sizes.dim_out > 0, "w2: expected at least one row (D_out > 0), got shape ",
              w2.sizes());
  return sizes;
}

// A 2-D tensor cuBLASLt can read as a column-major (cols x rows) matrix: unit stride along
// dim 1 and rows at least a row apart. Anything else (transposed, broadcast) is copied.
at::Tensor gemm_operand(const at::Tensor& tensor) {
  const bool unit_columns = tensor.size(1) <= 1 || tensor.stride(1) == 1;
  const bool spaced_rows = tensor.size(0) <= 1 || tensor.stride(0) >= tensor.size(1);
  return unit_columns && spaced_rows ? tensor : tensor.clone(at::MemoryFormat::Contiguous);
}

// The leading dimension of gemm_operand(tensor) as a column-major matrix.
int64_t leading_dimension(const at::Tensor& tensor) {
  return tensor.size(0) > 1 ? tensor.stride(0) : std::max<int64_t>(tensor.size(1), 1);
}

// Dense and 16-byte aligned, as the elementwise kernels' vector accesses and the epilogue
// vectors want it; copied otherwise (a view into a larger buffer).
at::Tensor dense_aligned(const at::Tensor& tensor) {
  const bool aligned = reinterpret_cast<uintptr_t>(tensor.data_ptr()) % 16 == 0;
  return tensor.is_contiguous() && aligned ? tensor : tensor.clone(at::MemoryFormat::Contiguous);
}

// out = op(left) @ op(right), op transposing where asked (row-major tensors). cuBLASLt is
// column-major: a row-major (r, c) tensor is its (c x r) transpose there, so it computes
// out^T = op(right)^T * op(left)^T with A = right (op T iff transpose_right) and B = left
// (op T iff transpose_left).
ff::GemmProblem product(at::Tensor& out, const at::Tensor& left, bool transpose_left,
                        const at::Tensor& right, bool transpose_right, DType dtype) {
  ff::GemmProblem problem{};
  problem.dtype = dtype;
  problem.transpose_a = transpose_right;
  problem.transpose_b = transpose_left;
  problem.m = right.size(transpose_right ? 0 : 1);
  problem.n = left.size(transpose_left ? 1 : 0);
  problem.k = left.size(transpose_left ? 0 : 1);
  problem.a = right.data_ptr();
  problem.lda = leading_dimension(right);
  problem.b = left.data_ptr();
  problem.ldb = leading_dimension(left);
  problem.d = out.data_ptr();
  problem.ldd = leading_dimension(out);
  return problem;
}

// out (P, Q) = left (P, K) @ right^T, right (Q, K): nn.Linear's product.
ff::GemmProblem linear_product(at::Tensor& out, const at::Tensor& left, const at::Tensor& right,
                               DType dtype) {
  return product(out, left, false, right, true, dtype);
}

// out (P, Q) = left (P, K) @ right (K, Q).
ff::GemmProblem plain_product(at::Tensor& out, const at::Tensor& left, const at::Tensor& right,
                              DType dtype) {
  return product(out, left, false, right, false, dtype);
}

// out (P, Q) = left^T @ right with left (K, P), right (K, Q): a weight gradient over the K
// tokens; BGRADB then sums left over the tokens.
ff::GemmProblem transposed_product(at::Tensor& out, const at::Tensor& left,
                                   const at::Tensor& right, DType dtype) {
  return product(out, left, true, right, false, dtype);
}

// cuBLASLt's context on x's device and current stream (the caller holds a device guard).
struct BlasLt {
  ff::BlasLtContext context;
  at::Tensor own_workspace;  // keeps the workspace alive where torch lends none
};

BlasLt blaslt_for(const at::Tensor& like) {
  BlasLt blaslt;
  blaslt.context.handle = at::cuda::getCurrentCUDABlasLtHandle();
#if FASTTX_TORCH_BLASLT_WORKSPACE
  blaslt.context.workspace = at::cuda::getCUDABlasLtWorkspace();
  blaslt.context.workspace_size = at::cuda::getCUDABlasLtWorkspaceSize();
#else
  blaslt.own_workspace = at::empty({kOwnWorkspaceBytes}, like.options().dtype(at::kByte));
  blaslt.context.workspace = blaslt.own_workspace.data_ptr();
  blaslt.context.workspace_size = kOwnWorkspaceBytes;
#endif
  blaslt.context.stream = current_stream(like);
  blaslt.context.allow_tf32 = at::globalContext().allowTF32CuBLAS();
  return blaslt;
}

// Runs one GEMM. False when cuBLASLt has no algorithm for it (nothing ran: the caller falls
// back); raises on any other failure, naming the GEMM.
bool try_gemm(const ff::GemmProblem& problem, const BlasLt& blaslt, const char* name) {
  const ff::GemmStatus status = ff::run_gemm(problem, blaslt.context);
  if (status.outcome == ff::GemmOutcome::kNoAlgorithm) return false;
  TORCH_CHECK(status.outcome == ff::GemmOutcome::kDone, "fasttx feed_forward: the GEMM ", name,
              " failed in ", status.call, ": ", ff::gemm_status_name(status.status));
  return true;
}

// out = input @ weight^T (+ bias): the bias GEMM, or torch's addmm where cuBLASLt refuses.
void linear(at::Tensor& out, const at::Tensor& input, const at::Tensor& weight,
            const std::optional<at::Tensor>& bias, DType dtype, const BlasLt& blaslt,
            const char* name) {
  ff::GemmProblem problem = linear_product(out, input, weight, dtype);
  problem.epilogue = ff::Epilogue::kBias;
  problem.bias = optional_pointer(bias);
  if (try_gemm(problem, blaslt, name)) return;
  if (bias.has_value()) {
    at::addmm_out(out, *bias, input, weight.t());
  } else {
    at::mm_out(out, input, weight.t());
  }
}

// out = left @ right: the plain GEMM, or torch's mm where cuBLASLt refuses.
void product(at::Tensor& out, const at::Tensor& left, const at::Tensor& right, DType dtype,
             const BlasLt& blaslt, const char* name) {
  if (!try_gemm(plain_product(out, left, right, dtype), blaslt, name)) {
    at::mm_out(out, left, right);
  }
}

// out = left^T @ right and, when bias_grad is given, bias_grad = left's sums over the
// tokens: the BGRADB epilogue, else the plain GEMM and a torch sum (fp32, rounded once),
// else torch for both.
void weight_gradient(at::Tensor& out, at::Tensor* bias_grad, const at::Tensor& left,
                     const at::Tensor& right, DType dtype, const BlasLt& blaslt,
                     const char* name) {
  ff::GemmProblem problem = transposed_product(out, left, right, dtype);
  if (bias_grad != nullptr) {
    problem.epilogue = ff::Epilogue::kBGradB;
    problem.bias_grad = bias_grad->data_ptr();
    if (try_gemm(problem, blaslt, name)) return;
    problem.epilogue = ff::Epilogue::kNone;
    problem.bias_grad = nullptr;
  }
  if (!try_gemm(problem, blaslt, name)) at::mm_out(out, left.t(), right);
  if (bias_grad != nullptr) bias_grad->copy_(left.sum({0}, false, at::kFloat));
}

std::tuple<at::Tensor, at::Tensor> feed_forward_forward(
    const at::Tensor& x, const at::Tensor& w1, const std::optional<at::Tensor>& b1,
    const at::Tensor& w2, const std::optional<at::Tensor>& b2, c10::string_view activation_name,
    const std::optional<at::Tensor>& dropout_seed, double dropout_p) {
  const ff::Activation activation = parse_activation(activation_name);
  const Sizes sizes = check_inputs(x, w1, b1, w2, b2);
  const c10::cuda::CUDAGuard device_guard(x.device());
  const int64_t* seed = seed_pointer(dropout_seed, dropout_p, x);  // null: no dropout
  at::Tensor y = at::empty({sizes.tokens, sizes.dim_out}, x.options());
  at::Tensor saved = at::empty({sizes.tokens, sizes.hidden}, x.options());  // h or a
  if (sizes.tokens == 0) return {y, saved};

  const at::Tensor input = gemm_operand(x), weight1 = gemm_operand(w1), weight2 = gemm_operand(w2);
  std::optional<at::Tensor> bias1, bias2;
  if (b1.has_value()) bias1 = dense_aligned(*b1);
  if (b2.has_value()) bias2 = dense_aligned(*b2);
  const BlasLt blaslt = blaslt_for(x);
  const bool relu = activation == ff::Activation::kRelu;
  at::Tensor hidden = relu ? saved : at::empty_like(saved);  // h

  // The first layer with the activation in its epilogue, where one exists.
  bool activated = false;
  if (activation_in_epilogue(activation, sizes.dtype, seed != nullptr)) {
    ff::GemmProblem up = linear_product(saved, input, weight1, sizes.dtype);
    up.bias = optional_pointer(bias1);
    if (relu) {
      up.epilogue = ff::Epilogue::kReluBias;  // h into saved
    } else {
      up.epilogue = ff::Epilogue::kGeluAuxBias;  // h into hidden, the pre-activation into saved
      up.d = hidden.data_ptr();
      up.aux = saved.data_ptr();
      up.ldaux = sizes.hidden;
    }
    activated = try_gemm(up, blaslt, relu ? "x @ w1^T (relu epilogue)"
                                          : "x @ w1^T (gelu epilogue)");
  }
  if (!activated) {  // a = x w1^T + b1 into saved, then h = dropout(act(a))
    linear(saved, input, weight1, bias1, sizes.dtype, blaslt, "x @ w1^T");
    check_launch(ff::launch_activation_forward(sizes.dtype, activation, saved.data_ptr(),
                                               hidden.data_ptr(), saved.numel(), seed,
                                               static_cast<float>(dropout_p),
                                               blaslt.context.stream),
                 "feed_forward activation_forward_kernel");
  }
  linear(y, hidden, weight2, bias2, sizes.dtype, blaslt, "h @ w2^T");
  return {y, saved};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> feed_forward_backward(
    const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& w1,
    const std::optional<at::Tensor>& b1, const at::Tensor& w2,
    const std::optional<at::Tensor>& b2, const at::Tensor& saved,
    c10::string_view activation_name, const std::optional<at::Tensor>& dropout_seed,
    double dropout_p) {
  const ff::Activation activation = parse_activation(activation_name);
  const Sizes sizes = check_inputs(x, w1, b1, w2, b2);
  check_cuda(grad_y, "grad_y");
  check_same_device(grad_y, "grad_y", x, "x");
  check_same_dtype(grad_y, "grad_y", x, "x");
  check_shape(grad_y, "grad_y", {sizes.tokens, sizes.dim_out}, "(N, D_out), like y");
  check_cuda(saved, "saved");
  check_same_device(saved, "saved", x, "x");
  check_same_dtype(saved, "saved", x, "x");
  check_shape(saved, "saved", {sizes.tokens, sizes.hidden},
              "(N, F): the forward's second output");
  const c10::cuda::CUDAGuard device_guard(x.device());
  const int64_t* seed = seed_pointer(dropout_seed, dropout_p, x);  // null: no dropout

  at::Tensor grad_x = at::empty({sizes.tokens, sizes.dim}, x.options());
  at::Tensor grad_w1 = at::empty({sizes.hidden, sizes.dim}, x.options());
  at::Tensor grad_w2 = at::empty({sizes.dim_out, sizes.hidden}, x.options());
  at::Tensor grad_b1 = at::empty({b1.has_value() ? sizes.hidden : 0}, x.options());
  at::Tensor grad_b2 = at::empty({b2.has_value() ? sizes.dim_out : 0}, x.options());
  if (sizes.tokens == 0) {  // no rows: zero weight and bias gradients
    grad_w1.zero_();
    grad_w2.zero_();
    grad_b1.zero_();
    grad_b2.zero_();
    return {grad_x, grad_w1, grad_b1, grad_w2, grad_b2};
  }

  const at::Tensor dy = gemm_operand(grad_y), input = gemm_operand(x);
  const at::Tensor weight1 = gemm_operand(w1), weight2 = gemm_operand(w2);
  const at::Tensor saved_dense = dense_aligned(saved);  // h (relu) or a
  const BlasLt blaslt = blaslt_for(x);
  const bool relu = activation == ff::Activation::kRelu;
  at::Tensor grad_pre = at::empty({sizes.tokens, sizes.hidden}, x.options());  // dh, then da
  at::Tensor hidden = relu ? saved_dense : at::empty_like(grad_pre);             // h
  const int64_t count = grad_pre.numel();

  // da = dy w2 * act'(a) (with dropout's mask and scale), and h for dW2.
  bool grad_b1_done = false, through_activation = false;
  if (activation == ff::Activation::kGeluTanh &&
      activation_in_epilogue(activation, sizes.dtype, seed != nullptr)) {
    ff::GemmProblem down = plain_product(grad_pre, dy, weight2, sizes.dtype);
    down.epilogue = ff::Epilogue::kDGeluBGrad;  // da and db1 = its sums over the tokens
    down.aux = const_cast<void*>(saved_dense.data_ptr());  // read only
    down.ldaux = sizes.hidden;
    down.bias_grad = b1.has_value() ? grad_b1.data_ptr() : nullptr;
    through_activation = try_gemm(down, blaslt, "dy @ w2 (dgelu epilogue)");
    if (through_activation) {
      grad_b1_done = b1.has_value();
      check_launch(ff::launch_activation_forward(sizes.dtype, activation, saved_dense.data_ptr(),
                                                 hidden.data_ptr(), count, nullptr, 0.0f,
                                                 blaslt.context.stream),
                   "feed_forward activation_forward_kernel");
    }
  }
  if (!through_activation) {
    product(grad_pre, dy, weight2, sizes.dtype, blaslt, "dy @ w2");
    check_launch(ff::launch_activation_backward(sizes.dtype, activation, grad_pre.data_ptr(),
                                                saved_dense.data_ptr(),
                                                relu ? nullptr : hidden.data_ptr(), count, seed,
                                                static_cast<float>(dropout_p),
                                                blaslt.context.stream),
                 "feed_forward activation_backward_kernel");
  }

  weight_gradient(grad_w2, b2.has_value() ? &grad_b2 : nullptr, dy, hidden, sizes.dtype, blaslt,
                  "dy^T @ h");
  product(grad_x, grad_pre, weight1, sizes.dtype, blaslt, "da @ w1");
  weight_gradient(grad_w1, b1.has_value() && !grad_b1_done ? &grad_b1 : nullptr, grad_pre, input,
                  sizes.dtype, blaslt, "da^T @ x");
  return {grad_x, grad_w1, grad_b1, grad_w2, grad_b2};
}

}  // namespace

TORCH_LIBRARY_IMPL(fasttx_cuda, CUDA, m) {
  m.impl("feed_forward_forward", &feed_forward_forward);
  m.impl("feed_forward_backward", &feed_forward_backward);
}
