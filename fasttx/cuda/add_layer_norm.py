"""CUDA backend of residual add + dropout + LayerNorm: calls the kernels of ``fasttx._C``.

``add_layer_norm_forward`` / ``add_layer_norm_backward`` take the reference's arguments
(``fasttx.reference.add_layer_norm``) and call ``torch.ops.fasttx_cuda.add_layer_norm_*``
(``csrc/add_layer_norm/``): register-resident row kernels for D up to 16384 (forward) and
8192 (backward); beyond that, a block per row with the row cached in shared memory
(forward) and column windows after a row-dot pre-pass (backward); a deterministic,
atomic-free two-stage dweight/dbias reduction. x and the residual are read through their
row strides; every output is contiguous.
"""

from __future__ import annotations

import torch

from fasttx.cuda._extension import ops

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MAX_HIDDEN_SIZE = 2**24  # fp32 holds D exactly; the kernels index columns with int32


def unsupported_reason(dtype=None, hidden_size=None, residual_dtype=None, **_):
    """Why these inputs can't run on the CUDA kernels, or None."""
    if dtype is not None and dtype not in SUPPORTED_DTYPES:
        return f"the cuda add_layer_norm kernels take float16, bfloat16 or float32, got {dtype}"
    if hidden_size is not None and not 1 <= hidden_size <= MAX_HIDDEN_SIZE:
        return (f"the cuda add_layer_norm kernels take hidden sizes 1 to {MAX_HIDDEN_SIZE}, "
                f"got {hidden_size}")
    if residual_dtype is not None and residual_dtype not in (dtype, torch.float32):
        return ("the cuda add_layer_norm kernels keep the residual stream in x's dtype or "
                f"float32, got {residual_dtype} beside {dtype}")
    return None


def add_layer_norm_forward(x, residual, weight, bias, eps, dropout_seed, dropout_p):
    """As ``fasttx.reference.add_layer_norm.add_layer_norm_forward``: y, s, mean, rstd."""
    return ops().add_layer_norm_forward(x, residual, weight, bias, float(eps), dropout_seed,
                                        float(dropout_p))


def add_layer_norm_backward(grad_y, grad_residual_out, residual_out, weight, bias, mean, rstd,
                            dropout_seed, dropout_p, has_residual):
    """As ``fasttx.reference.add_layer_norm.add_layer_norm_backward``: dx, dresidual, dweight,
    dbias (empty, shape (0,), where there is no such input)."""
    return ops().add_layer_norm_backward(grad_y, grad_residual_out, residual_out, weight, bias,
                                         mean, rstd, dropout_seed, float(dropout_p),
                                         bool(has_residual))
