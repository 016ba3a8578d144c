// Bindings of the add + dropout + LayerNorm kernels: the ops fasttx_cuda::add_layer_norm_forward
// and add_layer_norm_backward of csrc/ops.cpp. Checks the arguments, brings them to the
// layouts and dtypes the kernels read, allocates the outputs and scratch, and launches.
//
// Layouts: x and the residual may have strided rows (a copy only when their columns are
// strided); grad_y, grad_residual_out and residual_out are made contiguous; weight and bias
// are made contiguous and, unless in x's dtype or fp32, converted to fp32 (the reference
// converts them to fp32 too). Every output is contiguous.
// Dtypes: x fp16, bf16 or fp32; the residual stream in x's dtype or fp32. In the backward
// an fp32 grad_y beside a 16-bit stream (autograd's zero-filled grad_y when only s was used)
// runs in the stream dtype, and dx is returned in fp32.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <cstdint>
#include <limits>
#include <optional>
#include <tuple>

#include "add_layer_norm/add_layer_norm.h"
#include "common/binding.h"

namespace fasttx::add_layer_norm {
namespace {

using at::Tensor;
using std::optional;

constexpr int64_t kMaxDim = int64_t{1} << 24;  // fp32 represents D exactly; int indexing
constexpr int64_t kMaxRows = std::numeric_limits<int32_t>::max();  // one block per row at most

// Rows may be strided; elements within a row must be adjacent.
Tensor with_unit_column_stride(const Tensor& tensor) {
  return tensor.size(1) <= 1 || tensor.stride(1) == 1 ? tensor : tensor.contiguous();
}

void check_rows_and_dim(int64_t rows, int64_t dim, const char* name) {
  TORCH_CHECK(dim >= 1 && dim <= kMaxDim, name, ": expected a hidden size D between 1 and ",
              kMaxDim, ", got ", dim);
  TORCH_CHECK(rows <= kMaxRows, name, ": expected at most ", kMaxRows, " rows, got ", rows);
}

// The stream dtype must be x's (grad_y's) or fp32: the instantiated (T, T) and (T, fp32).
void check_stream_dtype(DType stream, DType like, const Tensor& tensor, const char* name,
                        const Tensor& like_tensor, const char* like_name) {
  TORCH_CHECK(stream == like || stream == DType::kFloat32, name, ": expected dtype ",
              like_tensor.scalar_type(), " (that of ", like_name, ") or float32, got ",
              tensor.scalar_type());
}

// A LayerNorm parameter (D,) as the kernels read it: contiguous, in `like`'s dtype or fp32.
optional<Tensor> kernel_parameter(const optional<Tensor>& parameter, const char* name,
                                  const Tensor& like, const char* like_name, int64_t dim) {
  if (!parameter.has_value()) return std::nullopt;
  binding::check_cuda(*parameter, name);
  binding::check_same_device(*parameter, name, like, like_name);
  binding::check_shape(*parameter, name, {dim}, "(D,)");
  TORCH_CHECK(parameter->is_floating_point(), name, ": expected a floating-point tensor, got ",
              parameter->scalar_type());
  const Tensor converted = parameter->scalar_type() == like.scalar_type() ||
                                   parameter->scalar_type() == at::kFloat
                               ? *parameter
                               : parameter->to(at::kFloat);
  return converted.contiguous();
}

bool is_float(const optional<Tensor>& tensor) {
  return tensor.has_value() && tensor->scalar_type() == at::kFloat;
}

// 1 / (1 - p) as the reference computes it: keep (fp32 1.0) divided by (1 - p) in fp32.
float dropout_scale(double dropout_p) {
  return dropout_p > 0.0 ? 1.0f / static_cast<float>(1.0 - dropout_p) : 1.0f;
}

std::tuple<Tensor, Tensor, Tensor, Tensor> add_layer_norm_forward_cuda(
    const Tensor& x_in, const optional<Tensor>& residual_in, const optional<Tensor>& weight_in,
    const optional<Tensor>& bias_in, double eps, const optional<Tensor>& dropout_seed,
    double dropout_p) {
  binding::check_cuda(x_in, "x");
  binding::check_dim(x_in, "x", 2, "(N, D)");
  const DType x_dtype = binding::float_dtype(x_in, "x");
  const int64_t rows = x_in.size(0), dim = x_in.size(1);
  check_rows_and_dim(rows, dim, "x");
  TORCH_CHECK(eps >= 0.0, "eps: expected a non-negative number, got ", eps);
  const c10::cuda::CUDAGuard device_guard(x_in.device());

  const Tensor x = with_unit_column_stride(x_in);
  optional<Tensor> residual;
  DType stream_dtype = x_dtype;
  if (residual_in.has_value()) {
    binding::check_cuda(*residual_in, "residual");
    binding::check_same_device(*residual_in, "residual", x, "x");
    binding::check_shape(*residual_in, "residual", {rows, dim}, "(N, D) like x");
    stream_dtype = binding::float_dtype(*residual_in, "residual");
    check_stream_dtype(stream_dtype, x_dtype, *residual_in, "residual", x, "x");
    residual = with_unit_column_stride(*residual_in);
  }
  const optional<Tensor> weight = kernel_parameter(weight_in, "weight", x, "x", dim);
  const optional<Tensor> bias = kernel_parameter(bias_in, "bias", x, "x", dim);
  const int64_t* seed = binding::seed_pointer(dropout_seed, dropout_p, x);

  const auto stream_type = residual.has_value() ? residual->scalar_type() : x.scalar_type();
  Tensor y = at::empty({rows, dim}, x.options());
  Tensor stream = at::empty({rows, dim}, x.options().dtype(stream_type));
  Tensor mean = at::empty({rows}, x.options().dtype(at::kFloat));
  Tensor rstd = at::empty({rows}, x.options().dtype(at::kFloat));

  ForwardParams params{};
  params.x_dtype = x_dtype;
  params.stream_dtype = stream_dtype;
  params.x = x.data_ptr();
  params.residual = residual.has_value() ? residual->data_ptr() : nullptr;
  params.weight = binding::optional_pointer(weight);
  params.bias = binding::optional_pointer(bias);
  params.weight_is_float = is_float(weight);
  params.bias_is_float = is_float(bias);
  params.y = y.data_ptr();
  params.stream = stream.data_ptr();
  params.mean = mean.data_ptr<float>();
  params.rstd = rstd.data_ptr<float>();
  params.rows = rows;
  params.dim = static_cast<int>(dim);
  params.x_row_stride = x.stride(0);
  params.residual_row_stride = residual.has_value() ? residual->stride(0) : 0;
  params.eps = static_cast<float>(eps);
  params.seed = seed;
  params.dropout_p = static_cast<float>(dropout_p);
  params.dropout_scale = dropout_scale(dropout_p);
  binding::check_launch(add_layer_norm_forward(params, binding::current_stream(x)),
                        "add_layer_norm_forward");
  return {y, stream, mean, rstd};
}

// dweight or dbias (D,) in the parameter's dtype; the kernels write fp16, bf16 or fp32,
// other dtypes (fp64) get an fp32 buffer converted afterwards.
Tensor parameter_gradient(const optional<Tensor>& parameter, const Tensor& like) {
  const auto type = parameter->scalar_type();
  const bool direct = type == at::kHalf || type == at::kBFloat16 || type == at::kFloat;
  return at::empty({parameter->size(0)}, like.options().dtype(direct ? type : at::kFloat));
}

std::tuple<Tensor, Tensor, Tensor, Tensor> add_layer_norm_backward_cuda(
    const Tensor& grad_y_in, const optional<Tensor>& grad_residual_out_in,
    const Tensor& residual_out_in, const optional<Tensor>& weight_in,
    const optional<Tensor>& bias_in, const Tensor& mean_in, const Tensor& rstd_in,
    const optional<Tensor>& dropout_seed, double dropout_p, bool has_residual) {
  binding::check_cuda(residual_out_in, "residual_out");
  binding::check_dim(residual_out_in, "residual_out", 2, "(N, D)");
  const DType stream_dtype = binding::float_dtype(residual_out_in, "residual_out");
  const int64_t rows = residual_out_in.size(0), dim = residual_out_in.size(1);
  check_rows_and_dim(rows, dim, "residual_out");
  const c10::cuda::CUDAGuard device_guard(residual_out_in.device());
  binding::check_cuda(grad_y_in, "grad_y");
  binding::check_same_device(grad_y_in, "grad_y", residual_out_in, "residual_out");
  binding::check_shape(grad_y_in, "grad_y", {rows, dim}, "(N, D) like residual_out");
  DType grad_dtype = binding::float_dtype(grad_y_in, "grad_y");
  for (const auto& [tensor, name] : {std::pair{&mean_in, "mean"}, std::pair{&rstd_in, "rstd"}}) {
    binding::check_cuda(*tensor, name);
    binding::check_same_device(*tensor, name, residual_out_in, "residual_out");
    binding::check_shape(*tensor, name, {rows}, "(N,)");
    TORCH_CHECK(tensor->scalar_type() == at::kFloat, name, ": expected float32, got ",
                tensor->scalar_type());
  }

  // an fp32 grad_y beside a 16-bit stream runs in the stream dtype; dx goes back to fp32
  Tensor grad_y = grad_y_in.contiguous();
  const bool grad_x_to_float = grad_dtype == DType::kFloat32 && stream_dtype != grad_dtype;
  if (grad_x_to_float) {
    grad_y = grad_y.to(residual_out_in.scalar_type());
    grad_dtype = stream_dtype;
  }
  check_stream_dtype(stream_dtype, grad_dtype, residual_out_in, "residual_out", grad_y, "grad_y");
  const Tensor stream = residual_out_in.contiguous();
  optional<Tensor> grad_stream;
  if (grad_residual_out_in.has_value()) {
    binding::check_cuda(*grad_residual_out_in, "grad_residual_out");
    binding::check_same_device(*grad_residual_out_in, "grad_residual_out", stream,
                               "residual_out");
    binding::check_shape(*grad_residual_out_in, "grad_residual_out", {rows, dim},
                         "(N, D) like residual_out");
    grad_stream = grad_residual_out_in->to(stream.scalar_type()).contiguous();
  }
  const optional<Tensor> weight = kernel_parameter(weight_in, "weight", grad_y, "grad_y", dim);
  if (bias_in.has_value()) {  // only its dtype and shape matter: dbias is sum(dy)
    binding::check_cuda(*bias_in, "bias");
    binding::check_same_device(*bias_in, "bias", stream, "residual_out");
    binding::check_shape(*bias_in, "bias", {dim}, "(D,)");
    TORCH_CHECK(bias_in->is_floating_point(), "bias: expected a floating-point tensor, got ",
                bias_in->scalar_type());
  }
  const int64_t* seed = binding::seed_pointer(dropout_seed, dropout_p, stream);
  const Tensor mean = mean_in.contiguous(), rstd = rstd_in.contiguous();

  Tensor grad_x = at::empty({rows, dim}, grad_y.options());
  Tensor grad_residual = has_residual ? at::empty({rows, dim}, stream.options())
                                      : at::empty({0}, grad_y_in.options());
  optional<Tensor> grad_weight, grad_bias;
  if (weight_in.has_value()) grad_weight = parameter_gradient(weight_in, stream);
  if (bias_in.has_value()) grad_bias = parameter_gradient(bias_in, stream);

  BackwardParams params{};
  params.grad_dtype = grad_dtype;
  params.stream_dtype = stream_dtype;
  params.grad_y = grad_y.data_ptr();
  params.grad_stream = grad_stream.has_value() ? grad_stream->data_ptr() : nullptr;
  params.stream = stream.data_ptr();
  params.weight = binding::optional_pointer(weight);
  params.weight_is_float = is_float(weight);
  params.mean = mean.data_ptr<float>();
  params.rstd = rstd.data_ptr<float>();
  params.seed = seed;
  params.dropout_p = static_cast<float>(dropout_p);
  params.dropout_scale = dropout_scale(dropout_p);
  params.grad_x = grad_x.data_ptr();
  params.grad_residual = has_residual ? grad_residual.data_ptr() : nullptr;
  params.grad_weight = grad_weight.has_value() ? grad_weight->data_ptr() : nullptr;
  params.grad_weight_dtype = grad_weight.has_value()
                                 ? binding::float_dtype(*grad_weight, "grad_weight")
                                 : DType::kFloat32;
  params.grad_bias = grad_bias.has_value() ? grad_bias->data_ptr() : nullptr;
  params.grad_bias_dtype =
      grad_bias.has_value() ? binding::float_dtype(*grad_bias, "grad_bias") : DType::kFloat32;
  params.rows = rows;
  params.dim = static_cast<int>(dim);

  BackwardPlan plan{};
  binding::check_launch(plan_add_layer_norm_backward(params, &plan), "add_layer_norm_backward");
  Tensor partials, row_dots;  // fp32 scratch, freed when this returns (stream-ordered)
  if (grad_weight.has_value() || grad_bias.has_value()) {
    partials = at::empty({2, plan.partial_rows, dim}, stream.options().dtype(at::kFloat));
    params.partials = partials.data_ptr<float>();
  }
  if (plan.row_dots) {
    row_dots = at::empty({2, rows}, stream.options().dtype(at::kFloat));
    params.row_dots = row_dots.data_ptr<float>();
  }
  binding::check_launch(add_layer_norm_backward(params, plan, binding::current_stream(stream)),
                        "add_layer_norm_backward");

  if (grad_x_to_float) grad_x = grad_x.to(at::kFloat);
  const auto in_dtype_of = [](const optional<Tensor>& gradient, const optional<Tensor>& like,
                              const Tensor& empty_like) {
    if (!gradient.has_value()) return at::empty({0}, empty_like.options());
    return gradient->scalar_type() == like->scalar_type() ? *gradient
                                                          : gradient->to(like->scalar_type());
  };
  return {grad_x, grad_residual, in_dtype_of(grad_weight, weight_in, grad_y_in),
          in_dtype_of(grad_bias, bias_in, grad_y_in)};
}

}  // namespace
}  // namespace fasttx::add_layer_norm

TORCH_LIBRARY_IMPL(fasttx_cuda, CUDA, m) {
  m.impl("add_layer_norm_forward", &fasttx::add_layer_norm::add_layer_norm_forward_cuda);
  m.impl("add_layer_norm_backward", &fasttx::add_layer_norm::add_layer_norm_backward_cuda);
}
