// Binding of the attention kernels: the CUDA implementations of fasttx_cuda::attention_forward
// and fasttx_cuda::attention_backward (schemas in csrc/ops.cpp), for dense (B, H, L, E)
// batches with an optional mask and packed (total, H, E) batches with cu_seqlens.
//
// It checks the arguments (each error names the argument and what was expected), gives the
// kernels unit-stride rows (a tensor whose last dim is strided is copied; other strides are
// read as they are), views a bool mask as uint8, computes for a key-padding mask (constant
// over heads and queries) the allowed key range of each batch so that the kernels skip the
// key tiles outside it, allocates contiguous outputs and launches on the current stream.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <cmath>
#include <optional>
#include <tuple>
#include <utility>
#include <vector>

#include "attention/attention.h"
#include "common/binding.h"

namespace fasttx::attention {
namespace {

using namespace fasttx::binding;

constexpr int64_t kMaxHeadDim = 256;
constexpr int64_t kMaxLength = (int64_t{1} << 31) - 1024;  // positions are int32 in the kernels

// A copy with a unit-stride last dim when the last dim is strided (the kernels copy rows
// with 16-byte vector loads); the tensor itself otherwise.
at::Tensor unit_stride_rows(const at::Tensor& tensor) {
  return tensor.size(-1) > 1 && tensor.stride(-1) != 1 ? tensor.contiguous() : tensor;
}

// (batch, head, row, dim) strides: dense (B, H, L, E) as they are, packed (total, H, E) with
// batch stride 0 (each sequence's rows start at cu_seqlens[b]).
void fill_strides(int64_t (&strides)[4], const at::Tensor& tensor, bool packed) {
  if (packed) {
    strides[0] = 0;
    strides[1] = tensor.stride(1);
    strides[2] = tensor.stride(0);
    strides[3] = tensor.stride(2);
  } else {
    for (int i = 0; i < 4; ++i) strides[i] = tensor.stride(i);
  }
}

// int32 (B, 2): first allowed key and one past the last, per batch, of a key-padding mask
// (B, H, Lq, Lk) whose every (head, query) row equals row (0, 0). No allowed key: (Lk, 0).
at::Tensor allowed_key_range(const at::Tensor& mask) {
  const at::Tensor rows = mask.select(1, 0).select(1, 0);  // (B, Lk)
  const at::Tensor allowed =
      rows.scalar_type() == at::kBool ? rows : at::logical_not(at::isneginf(rows));
  const int64_t len_k = rows.size(1);
  const at::Tensor positions = at::arange(len_k, rows.options().dtype(at::kInt));
  const at::Tensor first = at::where(allowed, positions, len_k).amin(1);
  const at::Tensor last = at::where(allowed, positions + 1, 0).amax(1);
  return at::stack({first, last}, 1).to(at::kInt).contiguous();
}

// The checked inputs and what the kernels need to know of them.
struct Inputs {
  at::Tensor q, k, v;
  at::Tensor mask;       // uint8 view of a bool mask, the float mask, or undefined
  at::Tensor key_range;  // int32 (B, 2) for a key-padding mask, or undefined
  at::Tensor cu_seqlens_q, cu_seqlens_k;  // int32 (B + 1,), or undefined when dense
  bool packed = false;
  DType dtype = DType::kFloat16;
  MaskKind mask_kind = MaskKind::kNone;
  DType mask_dtype = DType::kFloat16;
  int64_t batch = 0, heads = 0, kv_heads = 0, len_q = 0, len_k = 0, total_q = 0;
  int64_t head_dim = 0, value_dim = 0;
};

at::Tensor checked_cu_seqlens(const at::Tensor& cu_seqlens, const char* name,
                              const at::Tensor& q) {
  check_cuda(cu_seqlens, name);
  check_same_device(cu_seqlens, name, q, "q");
  TORCH_CHECK(cu_seqlens.scalar_type() == at::kInt && cu_seqlens.dim() == 1 &&
                  cu_seqlens.size(0) >= 2,
              name, ": expected an int32 tensor of shape (B + 1,) with B >= 1, got ",
              cu_seqlens.scalar_type(), " of shape ", cu_seqlens.sizes());
  return cu_seqlens.contiguous();
}

Inputs check_inputs(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                    const std::optional<at::Tensor>& attn_mask,
                    const std::optional<at::Tensor>& cu_seqlens_q,
                    const std::optional<at::Tensor>& cu_seqlens_k, int64_t max_seqlen_q,
                    int64_t max_seqlen_k) {
  check_cuda(q, "q");
  check_cuda(k, "k");
  check_cuda(v, "v");
  check_same_device(k, "k", q, "q");
  check_same_device(v, "v", q, "q");
  Inputs in;
  in.dtype = float_dtype(q, "q");
  TORCH_CHECK(in.dtype != DType::kFloat32,
              "q: the CUDA attention kernels take float16 or bfloat16 (their tensor-core "
              "operands), got float32; use the triton or reference backend for float32");
  check_same_dtype(k, "k", q, "q");
  check_same_dtype(v, "v", q, "q");
  TORCH_CHECK(cu_seqlens_q.has_value() == cu_seqlens_k.has_value(),
              "cu_seqlens_q, cu_seqlens_k: expected both (packed sequences) or neither");
  in.packed = cu_seqlens_q.has_value();

  if (in.packed) {
    check_dim(q, "q", 3, "(total_q, H, E)");
    check_dim(k, "k", 3, "(total_k, Hk, E)");
    check_dim(v, "v", 3, "(total_k, Hk, Ev)");
    in.cu_seqlens_q = checked_cu_seqlens(*cu_seqlens_q, "cu_seqlens_q", q);
    in.cu_seqlens_k = checked_cu_seqlens(*cu_seqlens_k, "cu_seqlens_k", q);
    TORCH_CHECK(in.cu_seqlens_k.size(0) == in.cu_seqlens_q.size(0),
                "cu_seqlens_k: expected cu_seqlens_q's shape ", in.cu_seqlens_q.sizes(),
                ", got ", in.cu_seqlens_k.sizes());
    TORCH_CHECK(!attn_mask.has_value(),
                "attn_mask: packed (cu_seqlens) inputs take no mask, got a tensor");
    TORCH_CHECK(max_seqlen_q >= 0 && max_seqlen_q <= kMaxLength, "max_seqlen_q: expected a ",
                "length in [0, ", kMaxLength, "], got ", max_seqlen_q);
    TORCH_CHECK(max_seqlen_k >= 0 && max_seqlen_k <= kMaxLength, "max_seqlen_k: expected a ",
                "length in [0, ", kMaxLength, "], got ", max_seqlen_k);
    in.batch = in.cu_seqlens_q.size(0) - 1;
    in.total_q = q.size(0);
    in.heads = q.size(1);
    in.kv_heads = k.size(1);
    in.len_q = max_seqlen_q;
    in.len_k = max_seqlen_k;
    in.head_dim = q.size(2);
    in.value_dim = v.size(2);
    check_shape(k, "k", {k.size(0), in.kv_heads, in.head_dim}, "(total_k, Hk, E) with q's E");
    check_shape(v, "v", {k.size(0), in.kv_heads, in.value_dim},
                "(total_k, Hk, Ev) with k's total_k and Hk");
  } else {
    check_dim(q, "q", 4, "(B, H, Lq, E)");
    check_dim(k, "k", 4, "(B, Hk, Lk, E)");
    check_dim(v, "v", 4, "(B, Hk, Lk, Ev)");
    in.batch = q.size(0);
    in.heads = q.size(1);
    in.len_q = q.size(2);
    in.head_dim = q.size(3);
    in.kv_heads = k.size(1);
    in.len_k = k.size(2);
    in.value_dim = v.size(3);
    in.total_q = in.batch * in.len_q;
    check_shape(k, "k", {in.batch, in.kv_heads, in.len_k, in.head_dim},
                "(B, Hk, Lk, E) with q's B and E");
    check_shape(v, "v", {in.batch, in.kv_heads, in.len_k, in.value_dim},
                "(B, Hk, Lk, Ev) with k's B, Hk and Lk");
    TORCH_CHECK(in.len_q <= kMaxLength && in.len_k <= kMaxLength, "q, k: sequence lengths up ",
                "to ", kMaxLength, " are supported, got ", in.len_q, " and ", in.len_k);
  }
  TORCH_CHECK(in.kv_heads >= 1 && in.heads % in.kv_heads == 0, "k: expected a number of heads ",
              "dividing q's ", in.heads, " (grouped-query attention), got ", in.kv_heads);
  TORCH_CHECK(in.head_dim >= 1 && in.head_dim <= kMaxHeadDim, "q: expected a head dim in [1, ",
              kMaxHeadDim, "], got ", in.head_dim);
  TORCH_CHECK(in.value_dim >= 1 && in.value_dim <= kMaxHeadDim, "v: expected a head dim in [1, ",
              kMaxHeadDim, "], got ", in.value_dim);
  in.q = unit_stride_rows(q);
  in.k = unit_stride_rows(k);
  in.v = unit_stride_rows(v);

  if (attn_mask.has_value()) {
    const at::Tensor& mask = *attn_mask;
    check_cuda(mask, "attn_mask");
    check_same_device(mask, "attn_mask", q, "q");
    check_shape(mask, "attn_mask", {in.batch, in.heads, in.len_q, in.len_k},
                "(B, H, Lq, Lk), broadcast with stride 0 where needed");
    switch (mask.scalar_type()) {
      case at::kBool: in.mask_kind = MaskKind::kBool; break;
      case at::kHalf: in.mask_kind = MaskKind::kFloat; in.mask_dtype = DType::kFloat16; break;
      case at::kBFloat16:
        in.mask_kind = MaskKind::kFloat;
        in.mask_dtype = DType::kBFloat16;
        break;
      case at::kFloat: in.mask_kind = MaskKind::kFloat; in.mask_dtype = DType::kFloat32; break;
      default:
        TORCH_CHECK(false, "attn_mask: expected bool, float16, bfloat16 or float32, got ",
                    mask.scalar_type());
    }
    in.mask = in.mask_kind == MaskKind::kBool ? mask.view(at::kByte) : mask;
    const bool per_key = (in.heads == 1 || mask.stride(1) == 0) &&
                         (in.len_q == 1 || mask.stride(2) == 0);
    if (per_key && in.batch > 0 && in.len_k > 0) in.key_range = allowed_key_range(mask);
  }
  return in;
}

// The parameter fields shared by the forward and the backward.
void fill_params(AttentionParams& params, const Inputs& in,
                 const std::optional<at::Tensor>& dropout_seed, double dropout_p,
                 bool is_causal, double scale) {
  params.dtype = in.dtype;
  params.q = in.q.data_ptr();
  params.k = in.k.data_ptr();
  params.v = in.v.data_ptr();
  fill_strides(params.q_strides, in.q, in.packed);
  fill_strides(params.k_strides, in.k, in.packed);
  fill_strides(params.v_strides, in.v, in.packed);
  params.mask_kind = in.mask_kind;
  params.mask_dtype = in.mask_kind == MaskKind::kFloat ? in.mask_dtype : in.dtype;
  params.mask = in.mask.defined() ? in.mask.data_ptr() : nullptr;
  for (int i = 0; i < 4; ++i) params.mask_strides[i] = in.mask.defined() ? in.mask.stride(i) : 0;
  params.mask_per_key = in.key_range.defined();
  params.key_range = in.key_range.defined() ? in.key_range.data_ptr<int32_t>() : nullptr;
  params.cu_seqlens_q = in.packed ? in.cu_seqlens_q.data_ptr<int32_t>() : nullptr;
  params.cu_seqlens_k = in.packed ? in.cu_seqlens_k.data_ptr<int32_t>() : nullptr;
  params.batch = static_cast<int>(in.batch);
  params.heads = static_cast<int>(in.heads);
  params.kv_heads = static_cast<int>(in.kv_heads);
  params.len_q = static_cast<int>(in.len_q);
  params.len_k = static_cast<int>(in.len_k);
  params.head_dim = static_cast<int>(in.head_dim);
  params.value_dim = static_cast<int>(in.value_dim);
  params.scale = static_cast<float>(scale);
  params.is_causal = is_causal;
  params.seed = seed_pointer(dropout_seed, dropout_p, in.q);
  params.dropout_p = params.seed != nullptr ? static_cast<float>(dropout_p) : 0.0f;
}

// out-like (B, H, Lq, Ev) / (total_q, H, Ev) and lse-like (B, H, Lq) / (H, total_q) shapes.
std::vector<int64_t> out_shape(const Inputs& in) {
  if (in.packed) return {in.total_q, in.heads, in.value_dim};
  return {in.batch, in.heads, in.len_q, in.value_dim};
}

std::vector<int64_t> lse_shape(const Inputs& in) {
  if (in.packed) return {in.heads, in.total_q};
  return {in.batch, in.heads, in.len_q};
}

// (batch, head) strides of lse-like rows (rows contiguous).
void fill_lse_strides(int64_t (&strides)[2], const at::Tensor& lse, bool packed) {
  strides[0] = packed ? 0 : lse.stride(0);
  strides[1] = packed ? lse.stride(0) : lse.stride(1);
}

std::tuple<at::Tensor, at::Tensor> forward_op(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const std::optional<at::Tensor>& attn_mask, const std::optional<at::Tensor>& cu_seqlens_q,
    const std::optional<at::Tensor>& cu_seqlens_k, int64_t max_seqlen_q, int64_t max_seqlen_k,
    const std::optional<at::Tensor>& dropout_seed, double dropout_p, bool is_causal,
    double scale) {
  const Inputs in =
      check_inputs(q, k, v, attn_mask, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k);
  const c10::cuda::CUDAGuard guard(q.device());
  // packed: rows outside every sequence (cu_seqlens not reaching total_q) are never
  // written by the kernels; they read out = 0 and lse = -inf, as in the reference
  at::Tensor out = in.packed ? at::zeros(out_shape(in), q.options())
                             : at::empty(out_shape(in), q.options());
  at::Tensor lse = at::empty(lse_shape(in), q.options().dtype(at::kFloat));
  if (in.packed) lse.fill_(-INFINITY);
  if (out.numel() == 0) return {out, lse};

  AttentionParams params{};
  fill_params(params, in, dropout_seed, dropout_p, is_causal, scale);
  params.out = out.data_ptr();
  fill_strides(params.out_strides, out, in.packed);
  params.lse = lse.data_ptr<float>();
  fill_lse_strides(params.lse_strides, lse, in.packed);
  check_launch(attention_forward(params, current_stream(q)), "attention_forward");
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> backward_op(
    const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const std::optional<at::Tensor>& attn_mask, const std::optional<at::Tensor>& cu_seqlens_q,
    const std::optional<at::Tensor>& cu_seqlens_k, int64_t max_seqlen_q, int64_t max_seqlen_k,
    const at::Tensor& out, const at::Tensor& lse, const std::optional<at::Tensor>& dropout_seed,
    double dropout_p, bool is_causal, double scale, bool mask_needs_grad) {
  const Inputs in =
      check_inputs(q, k, v, attn_mask, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k);
  const char* out_layout = in.packed ? "(total_q, H, Ev)" : "(B, H, Lq, Ev)";
  for (const auto& [tensor, name] : {std::pair{&grad_out, "grad_out"}, std::pair{&out, "out"}}) {
    check_cuda(*tensor, name);
    check_same_device(*tensor, name, q, "q");
    check_same_dtype(*tensor, name, q, "q");
    check_shape(*tensor, name, out_shape(in), out_layout);
  }
  check_cuda(lse, "lse");
  check_same_device(lse, "lse", q, "q");
  TORCH_CHECK(lse.scalar_type() == at::kFloat, "lse: expected float32 (the forward's), got ",
              lse.scalar_type());
  check_shape(lse, "lse", lse_shape(in), in.packed ? "(H, total_q)" : "(B, H, Lq)");
  TORCH_CHECK(!mask_needs_grad || in.mask_kind == MaskKind::kFloat,
              "mask_needs_grad: only a float attn_mask has a gradient, got ",
              in.mask_kind == MaskKind::kBool ? "a bool mask" : "no mask");

  const c10::cuda::CUDAGuard guard(q.device());
  const auto contiguous = at::MemoryFormat::Contiguous;
  // packed: zero-filled, so that rows outside every sequence read 0 as in the reference
  at::Tensor grad_q = in.packed ? at::zeros_like(q, contiguous) : at::empty_like(q, contiguous);
  at::Tensor grad_k = in.packed ? at::zeros_like(k, contiguous) : at::empty_like(k, contiguous);
  at::Tensor grad_v = in.packed ? at::zeros_like(v, contiguous) : at::empty_like(v, contiguous);
  at::Tensor grad_mask = mask_needs_grad
                             ? at::zeros({in.batch, in.heads, in.len_q, in.len_k},
                                         attn_mask->options())
                             : q.new_empty({0});
  if (q.numel() == 0 || k.numel() == 0 || v.numel() == 0) {  // nothing flows: zero gradients
    grad_q.zero_();
    grad_k.zero_();
    grad_v.zero_();
    return {grad_q, grad_k, grad_v, grad_mask};
  }

  const at::Tensor grad_out_rows = unit_stride_rows(grad_out);
  const at::Tensor out_rows = unit_stride_rows(out);
  const at::Tensor lse_rows = lse.contiguous();
  at::Tensor delta = at::empty_like(lse_rows);  // fp32 rowsum(dO * O), laid out like lse

  AttentionBackwardParams params{};
  fill_params(params, in, dropout_seed, dropout_p, is_causal, scale);
  params.out = out_rows.data_ptr();  // read only in the backward
  fill_strides(params.out_strides, out_rows, in.packed);
  params.lse = lse_rows.data_ptr<float>();  // read only in the backward
  fill_lse_strides(params.lse_strides, lse_rows, in.packed);
  params.grad_out = grad_out_rows.data_ptr();
  fill_strides(params.grad_out_strides, grad_out_rows, in.packed);
  params.grad_q = grad_q.data_ptr();
  params.grad_k = grad_k.data_ptr();
  params.grad_v = grad_v.data_ptr();
  fill_strides(params.grad_q_strides, grad_q, in.packed);
  fill_strides(params.grad_k_strides, grad_k, in.packed);
  fill_strides(params.grad_v_strides, grad_v, in.packed);
  params.grad_mask = mask_needs_grad ? grad_mask.data_ptr() : nullptr;
  for (int i = 0; i < 4; ++i) {
    params.grad_mask_strides[i] = mask_needs_grad ? grad_mask.stride(i) : 0;
  }
  params.delta = delta.data_ptr<float>();
  params.dq_accum = nullptr;  // dQ has its own kernel: no atomics
  check_launch(attention_backward(params, current_stream(q)), "attention_backward");
  return {grad_q, grad_k, grad_v, grad_mask};
}

}  // namespace
}  // namespace fasttx::attention

TORCH_LIBRARY_IMPL(fasttx_cuda, CUDA, m) {
  m.impl("attention_forward", &fasttx::attention::forward_op);
  m.impl("attention_backward", &fasttx::attention::backward_op);
}
