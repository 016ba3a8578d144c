"""The one place where fasttx's ``torch.library`` op schemas are declared.

Each public op is a pair of custom ops, ``fasttx::<op>_forward`` and
``fasttx::<op>_backward``, whose last argument names the backend that runs them
(resolved by the functional API before the call, so the ops themselves never choose).
The op modules (``fasttx/ops/<op>.py``) implement them by forwarding to
``fasttx.<backend>.<op>``, register fake (meta) implementations so that
``torch.compile(fullgraph=True)`` traces through them, and register the forward's
autograd formula, which calls the backward op.

Every output is contiguous: the fakes say so, and the implementations enforce it
(:func:`contiguous`), so a backend handed strided views can't disagree with the fakes.

Optional outputs can't be ``None`` in a custom op's schema: a backward op returns an
empty tensor of shape (0,) (a new one each time: outputs may not alias) for a gradient
nobody asked for, and the autograd formula maps it to None.
"""

from __future__ import annotations

import functools

import torch

LIBRARY = "fasttx"

#: The feed-forward activations every backend implements (the ``activation`` argument).
ACTIVATIONS = ("relu", "gelu", "gelu_tanh")

SCHEMAS = {
    # q (B, H, Lq, E), k (B, Hk, Lk, E), v (B, Hk, Lk, Ev), attn_mask (B, H, Lq, Lk)
    # (bool: True = may attend; float: added to the scores; may be expanded with
    # stride 0). Returns out (B, H, Lq, Ev) and the row log-sum-exp (B, H, Lq), fp32, which
    # only the same backend's backward reads: natural log in the reference, base 2 of the
    # base-2 scores in the Triton kernels (their exp2 arithmetic).
    "attention_forward": (
        "(Tensor q, Tensor k, Tensor v, Tensor? attn_mask, Tensor? dropout_seed, "
        "float dropout_p, bool is_causal, float scale, str backend) -> (Tensor, Tensor)"
    ),
    # Returns dq, dk, dv and d(attn_mask) (empty unless mask_needs_grad).
    "attention_backward": (
        "(Tensor grad_out, Tensor q, Tensor k, Tensor v, Tensor? attn_mask, Tensor out, "
        "Tensor lse, Tensor? dropout_seed, float dropout_p, bool is_causal, float scale, "
        "bool mask_needs_grad, str backend) -> (Tensor, Tensor, Tensor, Tensor)"
    ),
    # q (total_q, H, E), k (total_k, Hk, E), v (total_k, Hk, Ev), cu_seqlens int32 (B+1,).
    # Returns out (total_q, H, Ev) and lse (H, total_q), fp32, as for attention_forward.
    "varlen_attention_forward": (
        "(Tensor q, Tensor k, Tensor v, Tensor cu_seqlens_q, Tensor cu_seqlens_k, "
        "int max_seqlen_q, int max_seqlen_k, Tensor? dropout_seed, float dropout_p, "
        "bool is_causal, float scale, str backend) -> (Tensor, Tensor)"
    ),
    "varlen_attention_backward": (
        "(Tensor grad_out, Tensor q, Tensor k, Tensor v, Tensor cu_seqlens_q, "
        "Tensor cu_seqlens_k, int max_seqlen_q, int max_seqlen_k, Tensor out, Tensor lse, "
        "Tensor? dropout_seed, float dropout_p, bool is_causal, float scale, str backend) "
        "-> (Tensor, Tensor, Tensor)"
    ),
    # x, residual (N, D); weight, bias (D,). Returns y (N, D), the residual stream
    # s = residual + dropout(x) (N, D), and the fp32 row statistics mean, rstd (N,).
    "add_layer_norm_forward": (
        "(Tensor x, Tensor? residual, Tensor? weight, Tensor? bias, float eps, "
        "Tensor? dropout_seed, float dropout_p, str backend) -> (Tensor, Tensor, Tensor, Tensor)"
    ),
    # grad_residual_out is the gradient flowing into s when it was returned.
    # Returns dx, dresidual, dweight, dbias (empty where the input was None).
    "add_layer_norm_backward": (
        "(Tensor grad_y, Tensor? grad_residual_out, Tensor residual_out, Tensor? weight, "
        "Tensor? bias, Tensor mean, Tensor rstd, Tensor? dropout_seed, float dropout_p, "
        "bool has_residual, str backend) -> (Tensor, Tensor, Tensor, Tensor)"
    ),
    # x (N, D), w1 (F, D), b1 (F,), w2 (D', F), b2 (D',). Returns y (N, D') and the (N, F)
    # activation the backward needs, which only the same backend's backward reads: the
    # pre-activation x @ w1.T + b1 in the reference; in the Triton kernels the hidden
    # h = dropout(relu(a)) for relu (its sign is both masks) and the pre-activation else.
    "feed_forward_forward": (
        "(Tensor x, Tensor w1, Tensor? b1, Tensor w2, Tensor? b2, str activation, "
        "Tensor? dropout_seed, float dropout_p, str backend) -> (Tensor, Tensor)"
    ),
    # Returns dx, dw1, db1, dw2, db2 (empty where the bias was None).
    "feed_forward_backward": (
        "(Tensor grad_y, Tensor x, Tensor w1, Tensor? b1, Tensor w2, Tensor? b2, "
        "Tensor preactivation, str activation, Tensor? dropout_seed, float dropout_p, "
        "str backend) -> (Tensor, Tensor, Tensor, Tensor, Tensor)"
    ),
}


def define(name: str):
    """Decorator: makes the function the implementation of ``fasttx::<name>``.

    A backward op (``<op>_backward``) also gets an autograd formula that refuses to run:
    fasttx's ops have no double backward, and that formula says so, naming the op (torch's
    own error for a custom op without one points at ``register_autograd``).
    """
    make_op = torch.library.custom_op(f"{LIBRARY}::{name}", mutates_args=(),
                                      schema=SCHEMAS[name])
    if not name.endswith("_backward"):
        return make_op

    def make_backward_op(function):
        backward_op = make_op(function)
        backward_op.register_autograd(
            functools.partial(_refuse_double_backward, name.removesuffix("_backward")))
        return backward_op

    return make_backward_op


def _refuse_double_backward(op: str, ctx, *grads):
    raise RuntimeError(
        f"fasttx's {op} op (torch.ops.fasttx.{op}_forward) does not support double backward: "
        f"its gradient, fasttx::{op}_backward, is not differentiable. A second derivative "
        f"(backward through a gradient taken with create_graph=True, e.g. a gradient "
        f"penalty) needs the plain PyTorch ops (fasttx.use_backend cannot help: every fasttx "
        f"backend runs the same custom ops)")


def none_if_empty(tensor: torch.Tensor) -> torch.Tensor | None:
    return None if tensor.numel() == 0 and tensor.dim() == 1 else tensor


def contiguous(outputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    """The backend's outputs, each made contiguous (a no-op for the usual case)."""
    return tuple(t.contiguous() for t in outputs)


def dense_like(tensor: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """A fake output: contiguous, with ``tensor``'s shape (not its strides)."""
    return tensor.new_empty(tensor.shape, dtype=tensor.dtype if dtype is None else dtype)
