"""Reference position-wise feed-forward network.

Shapes: x (N, D); w1 (F, D), b1 (F,); w2 (D_out, F), b2 (D_out,) in nn.Linear layout.

Forward, step by step (matrix products in the inputs' dtype):
    a = x @ w1^T + b1                      the pre-activation (N, F), saved for the backward
    h = dropout(act(a))                    act in {relu, gelu (exact), gelu_tanh}
    y = h @ w2^T + b2                      (N, D_out)

Dropout counter layout: element (n, f) of h has counter n * F + f.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from fasttx.ops.library import ACTIVATIONS
from fasttx.reference._common import accumulation_dtype, dropout_scale


def activation_forward(a: torch.Tensor, activation: str) -> torch.Tensor:
    if activation == "relu":
        return F.relu(a)
    if activation == "gelu":
        return F.gelu(a)
    if activation == "gelu_tanh":
        return F.gelu(a, approximate="tanh")
    raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")


def activation_derivative(a: torch.Tensor, activation: str) -> torch.Tensor:
    """d act(a) / d a, elementwise, in a's dtype."""
    if activation == "relu":
        return (a > 0).to(a.dtype)
    if activation == "gelu":  # Phi(a) + a * phi(a)
        cdf = 0.5 * (1.0 + torch.erf(a * (1.0 / math.sqrt(2.0))))
        pdf = torch.exp(-0.5 * a * a) * (1.0 / math.sqrt(2.0 * math.pi))
        return cdf + a * pdf
    if activation == "gelu_tanh":  # 0.5 (1 + t) + 0.5 a (1 - t^2) c (1 + 3 k a^2)
        c, k = math.sqrt(2.0 / math.pi), 0.044715
        t = torch.tanh(c * (a + k * a * a * a))
        return 0.5 * (1.0 + t) + 0.5 * a * (1.0 - t * t) * c * (1.0 + 3.0 * k * a * a)
    raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")


def _hidden(preactivation, activation, keep_scale):
    hidden = activation_forward(preactivation, activation)
    return hidden if keep_scale is None else (hidden * keep_scale).to(hidden.dtype)


def feed_forward_forward(x, w1, b1, w2, b2, activation, dropout_seed, dropout_p):
    """Returns y (N, D_out) and the pre-activation (N, F), both in x's dtype."""
    preactivation = F.linear(x, w1, b1)
    keep_scale = dropout_scale(preactivation.shape, dropout_seed, dropout_p, x.device)
    return F.linear(_hidden(preactivation, activation, keep_scale), w2, b2), preactivation


def feed_forward_backward(grad_y, x, w1, b1, w2, b2, preactivation, activation, dropout_seed,
                          dropout_p):
    """Returns dx, dw1, db1, dw2, db2 (empty, shape (0,), where the bias was None).

        dh = dy @ w2 * keep / (1 - p);   da = dh * act'(a)
        dw2 = dy^T h;  db2 = sum_rows(dy);  dx = da @ w1;  dw1 = da^T x;  db1 = sum_rows(da)
    """
    acc = accumulation_dtype(x.dtype)
    keep_scale = dropout_scale(preactivation.shape, dropout_seed, dropout_p, x.device)
    hidden = _hidden(preactivation, activation, keep_scale)
    grad_hidden = (grad_y @ w2).to(acc)
    if keep_scale is not None:
        grad_hidden = grad_hidden * keep_scale
    grad_pre = (grad_hidden * activation_derivative(preactivation.to(acc), activation)).to(x.dtype)
    return (
        grad_pre @ w1,
        grad_pre.transpose(0, 1) @ x,
        grad_pre.to(acc).sum(0).to(b1.dtype) if b1 is not None else grad_y.new_empty((0,)),
        grad_y.transpose(0, 1) @ hidden,
        grad_y.to(acc).sum(0).to(b2.dtype) if b2 is not None else grad_y.new_empty((0,)),
    )
