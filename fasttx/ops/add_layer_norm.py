"""Residual add + dropout + LayerNorm: custom ops, autograd formula, functional API."""

from __future__ import annotations

import torch

from fasttx import _checks
from fasttx import random as philox
from fasttx.backends import op_module, select_backend
from fasttx.ops.library import contiguous, define, dense_like, none_if_empty


@define("add_layer_norm_forward")
def add_layer_norm_forward(x, residual, weight, bias, eps, dropout_seed, dropout_p, backend):
    return contiguous(op_module(backend, "add_layer_norm").add_layer_norm_forward(
        x, residual, weight, bias, eps, dropout_seed, dropout_p))


@add_layer_norm_forward.register_fake
def _(x, residual, weight, bias, eps, dropout_seed, dropout_p, backend):
    stats_dtype = torch.promote_types(x.dtype, torch.float32)
    stream_dtype = x.dtype if residual is None else residual.dtype
    rows = x.shape[0]
    return (dense_like(x), dense_like(x, stream_dtype),
            x.new_empty(rows, dtype=stats_dtype), x.new_empty(rows, dtype=stats_dtype))


@define("add_layer_norm_backward")
def add_layer_norm_backward(grad_y, grad_residual_out, residual_out, weight, bias, mean, rstd,
                            dropout_seed, dropout_p, has_residual, backend):
    return contiguous(op_module(backend, "add_layer_norm").add_layer_norm_backward(
        grad_y, grad_residual_out, residual_out, weight, bias, mean, rstd, dropout_seed,
        dropout_p, has_residual))


@add_layer_norm_backward.register_fake
def _(grad_y, grad_residual_out, residual_out, weight, bias, mean, rstd, dropout_seed,
      dropout_p, has_residual, backend):
    return (dense_like(grad_y),
            dense_like(residual_out) if has_residual else grad_y.new_empty((0,)),
            dense_like(weight) if weight is not None else grad_y.new_empty((0,)),
            dense_like(bias) if bias is not None else grad_y.new_empty((0,)))


def _setup_context(ctx, inputs, output):
    x, residual, weight, bias, eps, dropout_seed, dropout_p, backend = inputs
    _, residual_out, mean, rstd = output
    ctx.save_for_backward(residual_out, weight, bias, mean, rstd, dropout_seed)
    ctx.options = (dropout_p, residual is not None, backend)
    ctx.set_materialize_grads(False)  # an unused residual stream gets no zero gradient


def _backward(ctx, grad_y, grad_residual_out, _grad_mean, _grad_rstd):
    residual_out, weight, bias, mean, rstd, dropout_seed = ctx.saved_tensors
    dropout_p, has_residual, backend = ctx.options
    if grad_y is None:
        grad_y = torch.zeros_like(residual_out, dtype=mean.dtype)
    grad_x, grad_residual, grad_weight, grad_bias = add_layer_norm_backward(
        grad_y.contiguous(), grad_residual_out, residual_out, weight, bias, mean, rstd,
        dropout_seed, dropout_p, has_residual, backend)
    return (grad_x, none_if_empty(grad_residual), none_if_empty(grad_weight),
            none_if_empty(grad_bias), None, None, None, None)


add_layer_norm_forward.register_autograd(_backward, setup_context=_setup_context)


def add_layer_norm(x, residual, weight, bias, eps=1e-5, *, dropout_p=0.0, return_residual=False,
                   backend=None):
    """Fused ``layer_norm(residual + dropout(x)) * weight + bias``.

    Args:
        x: (..., D), the sub-layer output.
        residual: None or (..., D) like x (the residual stream; its dtype may differ,
            e.g. fp32). Without it, s = dropout(x).
        weight, bias: None or (D,).
        eps: added to the variance.
        dropout_p: dropout on x (applied whenever > 0; pass 0.0 in eval mode).
        return_residual: bool; also return s = residual + dropout(x), for pre-norm stacks.
        backend: "reference", "triton", "cuda", "auto", or None for the active default.

    Returns:
        y (..., D) in x's dtype, or (y, s) with s in the residual's dtype.

    Steps: s = residual + x * keep / (1 - p) (Philox mask, counter = flat index of x);
    mean and variance of s over the last dim in fp32; y = (s - mean) / sqrt(var + eps)
    * weight + bias.
    """
    _checks.tensor("x", x, min_dim=1)
    _checks.optional_tensor("residual", residual)
    _checks.optional_tensor("weight", weight, dim=1)
    _checks.optional_tensor("bias", bias, dim=1)
    _checks.same_device(x=x, residual=residual, weight=weight, bias=bias)
    dim = x.shape[-1]
    _checks.nonempty("x", x, (x.dim() - 1,))
    if residual is not None:
        _checks.shape("residual", residual, tuple(x.shape), "x's shape")
    for name, param in (("weight", weight), ("bias", bias)):
        if param is not None:
            _checks.shape(name, param, (dim,), "(D,) with D = x.shape[-1]")
    eps = _checks.positive("eps", eps)
    dropout_p = _checks.probability("dropout_p", dropout_p)
    return_residual = _checks.flag("return_residual", return_residual)

    rows = x.reshape(-1, dim)
    residual_rows = None if residual is None else residual.reshape(-1, dim)
    seed = philox.draw_seed(x.device) if dropout_p > 0.0 else None
    name = select_backend("add_layer_norm", x.device, backend, dtype=x.dtype, hidden_size=dim,
                          residual_dtype=None if residual is None else residual.dtype)
    y, residual_out, _, _ = add_layer_norm_forward(rows, residual_rows, weight, bias, eps, seed,
                                                   dropout_p, name)
    y = y.view(x.shape)
    return (y, residual_out.view(x.shape)) if return_residual else y
