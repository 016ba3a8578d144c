"""CUDA backend of the position-wise feed-forward network: cuBLASLt GEMMs with fused epilogues.

``feed_forward_forward`` / ``feed_forward_backward`` take the reference's arguments
(``fasttx.reference.feed_forward``) and call the extension's ops
``torch.ops.fasttx_cuda.feed_forward_forward`` / ``_backward`` (``csrc/feed_forward/``):

    forward   h  = dropout(act(x @ w1^T + b1))   cuBLASLt, bias + relu / tanh-gelu epilogue, or
                                                  bias epilogue + an elementwise kernel
              y  = h @ w2^T + b2                  cuBLASLt, bias epilogue
    backward  da = (dy @ w2) * keep/(1-p) * act'  cuBLASLt (tanh-gelu gradient epilogue) or
                                                  plain + an elementwise kernel
              dW2 = dy^T @ h, db2                 cuBLASLt, bias-gradient epilogue
              dx = da @ w1                        cuBLASLt
              dW1 = da^T @ x, db1                 cuBLASLt, bias-gradient epilogue

The op's second output, which only this backend's backward reads, is h for relu and the
pre-activation a for gelu/gelu_tanh (``csrc/feed_forward/feed_forward.cpp`` says why).
Every size and stride is served: what cuBLASLt refuses falls back inside the op.
"""

from __future__ import annotations

import torch

from fasttx.cuda._extension import ops

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def unsupported_reason(dtype=None, **_):
    """Why these inputs can't run on the CUDA feed-forward op, or None."""
    if dtype is not None and dtype not in SUPPORTED_DTYPES:
        return f"the cuda feed_forward op takes float16, bfloat16 or float32, got {dtype}"
    return None


def feed_forward_forward(x, w1, b1, w2, b2, activation, dropout_seed, dropout_p):
    """As ``fasttx.reference.feed_forward.feed_forward_forward``: y (N, D_out) and the
    saved activation (N, F): h for relu, the pre-activation for gelu/gelu_tanh."""
    y, saved = ops().feed_forward_forward(x, w1, b1, w2, b2, activation, dropout_seed,
                                          float(dropout_p))
    return y, saved


def feed_forward_backward(grad_y, x, w1, b1, w2, b2, preactivation, activation, dropout_seed,
                          dropout_p):
    """As ``fasttx.reference.feed_forward.feed_forward_backward``: dx, dw1, db1, dw2, db2
    (empty, shape (0,), where the bias was None). ``preactivation`` is the forward's second
    output: h for relu, a otherwise."""
    grad_x, grad_w1, grad_b1, grad_w2, grad_b2 = ops().feed_forward_backward(
        grad_y, x, w1, b1, w2, b2, preactivation, activation, dropout_seed, float(dropout_p))
    return grad_x, grad_w1, grad_b1, grad_w2, grad_b2
