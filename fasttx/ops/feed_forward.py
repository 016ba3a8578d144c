"""Position-wise feed-forward network: custom ops, autograd formula, functional API."""

from __future__ import annotations

from fasttx import _checks
from fasttx import random as philox
from fasttx.backends import op_module, select_backend
from fasttx.ops.library import ACTIVATIONS, contiguous, define, dense_like, none_if_empty


@define("feed_forward_forward")
def feed_forward_forward(x, w1, b1, w2, b2, activation, dropout_seed, dropout_p, backend):
    return contiguous(op_module(backend, "feed_forward").feed_forward_forward(
        x, w1, b1, w2, b2, activation, dropout_seed, dropout_p))


@feed_forward_forward.register_fake
def _(x, w1, b1, w2, b2, activation, dropout_seed, dropout_p, backend):
    return x.new_empty(x.shape[0], w2.shape[0]), x.new_empty(x.shape[0], w1.shape[0])


@define("feed_forward_backward")
def feed_forward_backward(grad_y, x, w1, b1, w2, b2, preactivation, activation, dropout_seed,
                          dropout_p, backend):
    return contiguous(op_module(backend, "feed_forward").feed_forward_backward(
        grad_y, x, w1, b1, w2, b2, preactivation, activation, dropout_seed, dropout_p))


@feed_forward_backward.register_fake
def _(grad_y, x, w1, b1, w2, b2, preactivation, activation, dropout_seed, dropout_p, backend):
    return (dense_like(x), dense_like(w1),
            dense_like(b1) if b1 is not None else x.new_empty((0,)), dense_like(w2),
            dense_like(b2) if b2 is not None else x.new_empty((0,)))


def _setup_context(ctx, inputs, output):
    x, w1, b1, w2, b2, activation, dropout_seed, dropout_p, backend = inputs
    _, preactivation = output
    ctx.save_for_backward(x, w1, b1, w2, b2, preactivation, dropout_seed)
    ctx.options = (activation, dropout_p, backend)


def _backward(ctx, grad_y, _grad_preactivation):
    x, w1, b1, w2, b2, preactivation, dropout_seed = ctx.saved_tensors
    activation, dropout_p, backend = ctx.options
    grad_x, grad_w1, grad_b1, grad_w2, grad_b2 = feed_forward_backward(
        grad_y.contiguous(), x, w1, b1, w2, b2, preactivation, activation, dropout_seed,
        dropout_p, backend)
    return (grad_x, grad_w1, none_if_empty(grad_b1), grad_w2, none_if_empty(grad_b2),
            None, None, None, None)


feed_forward_forward.register_autograd(_backward, setup_context=_setup_context)


def feed_forward(x, w1, b1, w2, b2, *, activation="relu", dropout_p=0.0, backend=None):
    """Fused ``dropout(act(x @ w1.T + b1)) @ w2.T + b2`` (weights in nn.Linear layout).

    Args:
        x: (..., D).
        w1: (F, D), b1: (F,) or None — the first nn.Linear(D, F).
        w2: (D_out, F), b2: (D_out,) or None — the second nn.Linear(F, D_out).
        activation: "relu", "gelu" (exact erf form) or "gelu_tanh".
        dropout_p: dropout on the hidden activation (applied whenever > 0).
        backend: "reference", "triton", "cuda", "auto", or None for the active default.

    Returns:
        (..., D_out) in x's dtype (the autocast dtype under torch.autocast).

    Steps: a = x w1^T + b1; h = act(a) * keep / (1 - p) (Philox mask, counter = flat
    index of h); y = h w2^T + b2.
    """
    _checks.tensor("x", x, min_dim=1)
    _checks.tensor("w1", w1, dim=2)
    _checks.optional_tensor("b1", b1, dim=1)
    _checks.tensor("w2", w2, dim=2)
    _checks.optional_tensor("b2", b2, dim=1)
    activation = _checks.choice("activation", activation, ACTIVATIONS)
    dropout_p = _checks.probability("dropout_p", dropout_p)
    device = _checks.same_device(x=x, w1=w1, b1=b1, w2=w2, b2=b2)
    dim, hidden, dim_out = x.shape[-1], w1.shape[0], w2.shape[0]
    _checks.shape("w1", w1, (hidden, dim), "(F, D) with D = x.shape[-1]")
    _checks.shape("w2", w2, (dim_out, hidden), "(D_out, F) with F = w1.shape[0]")
    if b1 is not None:
        _checks.shape("b1", b1, (hidden,), "(F,) with F = w1.shape[0]")
    if b2 is not None:
        _checks.shape("b2", b2, (dim_out,), "(D_out,) with D_out = w2.shape[0]")
    _checks.nonempty("x", x, (x.dim() - 1,))
    _checks.nonempty("w1", w1, (0,))
    _checks.nonempty("w2", w2, (0,))
    x, w1, b1, w2, b2 = _checks.autocast(device, x, w1, b1, w2, b2)
    _checks.same_dtype(x=x, w1=w1, b1=b1, w2=w2, b2=b2)

    rows = x.reshape(-1, dim)
    seed = philox.draw_seed(device) if dropout_p > 0.0 else None
    name = select_backend("feed_forward", device, backend, dtype=x.dtype, activation=activation,
                          in_features=dim, hidden_features=hidden, out_features=dim_out)
    y, _ = feed_forward_forward(rows, w1, b1, w2, b2, activation, seed, dropout_p, name)
    return y.view(*x.shape[:-1], dim_out)
