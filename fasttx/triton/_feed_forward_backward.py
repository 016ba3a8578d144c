"""Triton kernel of the feed-forward network's backward through the activation.

``feed_forward_hidden_grad_kernel`` computes one (BLOCK_M, BLOCK_N) tile of
    dh = dy @ w2                                   (the main loop)
    da = dh * keep / (1 - p) * act'(a)             (the epilogue, fp32)
and, for gelu, also regenerates h = dropout(act(a)) for dW2 = dy^T h. For relu the saved
tensor is h itself (see ``_feed_forward_forward``): da = dh * [h > 0] / (1 - p).

The rest of the backward is ``_matmul.linear_kernel``:
    dW2 = dy^T @ h with db2 = sum_rows(dy) as A's row sums,
    dx = da @ w1, and dW1 = da^T @ x with db1 = sum_rows(da),
so both bias gradients come out of GEMM main loops that read those tensors anyway.
"""

from __future__ import annotations

import triton
import triton.language as tl

from fasttx.triton._feed_forward_common import activation, activation_derivative, hidden_keep
from fasttx.triton._matmul import matmul_tile, store_tile, tile_coordinates


@triton.jit
def feed_forward_hidden_grad_kernel(
    grad_y_ptr,     # (N, D_out) dL/dy, strides (stride_gn, stride_gd)
    w2_ptr,         # (D_out, F) second layer weight, strides (stride_wd, stride_wf)
    saved_ptr,      # (N, F) contiguous: h for relu, the pre-activation a otherwise
    seed_ptr,       # int64 (1,) Philox seed (DROPOUT and not relu only)
    grad_pre_ptr,   # (N, F) out: da = dL/da, contiguous
    hidden_ptr,     # (N, F) out: h regenerated from a (not relu), contiguous
    M, N, K,        # N tokens, F, D_out: the (tokens, F) output over K = D_out
    key_m, key_n, key_k,  # autotuning key: M bucketed, N, K
    stride_gn, stride_gd, stride_wd, stride_wf, dropout_p, dropout_scale,
    ACTIVATION: tl.constexpr, DROPOUT: tl.constexpr, EVEN_K: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
):
    pid_m, pid_n = tile_coordinates(M, N, BLOCK_M, BLOCK_N, GROUP_M)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    grad_hidden, _ = matmul_tile(grad_y_ptr, w2_ptr, rows % M, cols % N, K, stride_gn,
                                 stride_gd, stride_wd, stride_wf, False, EVEN_K, DOT_PRECISION,
                                 BLOCK_M, BLOCK_N, BLOCK_K)
    ok = (rows < M)[:, None] & (cols < N)[None, :]
    saved = tl.load(saved_ptr + rows.to(tl.int64)[:, None] * N + cols[None, :], mask=ok,
                    other=0.0).to(tl.float32)
    if ACTIVATION == "relu":
        # saved = h: positive exactly where a > 0 and the element was kept
        grad_pre = tl.where(saved > 0.0, grad_hidden * dropout_scale, 0.0)
    else:
        grad_pre = grad_hidden * activation_derivative(saved, ACTIVATION)
        hidden = activation(saved, ACTIVATION)
        if DROPOUT:
            keep = hidden_keep(tl.load(seed_ptr), rows, cols, N, dropout_p)
            grad_pre = tl.where(keep, grad_pre * dropout_scale, 0.0)
            hidden = tl.where(keep, hidden * dropout_scale, 0.0)
        store_tile(hidden_ptr, hidden, rows, cols, M, N)
    store_tile(grad_pre_ptr, grad_pre, rows, cols, M, N)
