"""Triton kernel of the feed-forward network's first layer, forward.

``feed_forward_up_kernel`` computes one (BLOCK_M, BLOCK_N) tile of
    a = x @ w1^T + b1,   h = dropout(act(a))
with bias, activation and dropout in the epilogue (fp32, on the accumulator), so the
(N, F) hidden tensor is written once and never re-read between steps. The second layer,
y = h @ w2^T + b2, is ``_matmul.linear_kernel`` with its bias epilogue.

What is saved for the backward (the op's second output) depends on the activation:
- relu: h itself, which the second layer reads anyway and dW2 = dy^T h needs. Its sign is
  both the relu mask and the dropout mask (h > 0 exactly where a > 0 and the element was
  kept), so the backward needs neither a, nor a 1-bit mask, nor the Philox stream;
- gelu, gelu_tanh: the pre-activation a (SAVE_PREACTIVATION), from which the backward
  computes act'(a) and regenerates h. h is then only a temporary of the forward.
"""

from __future__ import annotations

import triton
import triton.language as tl

from fasttx.triton._feed_forward_common import activation, hidden_keep
from fasttx.triton._matmul import matmul_tile, store_tile, tile_coordinates


@triton.jit
def feed_forward_up_kernel(
    x_ptr,         # (N, D) input rows, strides (stride_xn, stride_xd)
    w1_ptr,        # (F, D) first layer weight, strides (stride_wf, stride_wd)
    b1_ptr,        # (F,) first layer bias (HAS_BIAS only)
    seed_ptr,      # int64 (1,) Philox seed (DROPOUT only)
    hidden_ptr,    # (N, F) out: h = dropout(act(a)), x's dtype, contiguous
    preact_ptr,    # (N, F) out: a = x @ w1^T + b1, contiguous (SAVE_PREACTIVATION only)
    M, N, K,       # N tokens, F, D: the (M, N) = (tokens, F) output over K = D
    key_m, key_n, key_k,  # autotuning key: M bucketed, N, K
    stride_xn, stride_xd, stride_wf, stride_wd, dropout_p, dropout_scale,
    ACTIVATION: tl.constexpr, HAS_BIAS: tl.constexpr, DROPOUT: tl.constexpr,
    SAVE_PREACTIVATION: tl.constexpr, EVEN_K: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
):
    pid_m, pid_n = tile_coordinates(M, N, BLOCK_M, BLOCK_N, GROUP_M)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    # B[k, f] = w1[f, k]: the transpose through strides
    preact, _ = matmul_tile(x_ptr, w1_ptr, rows % M, cols % N, K, stride_xn, stride_xd,
                            stride_wd, stride_wf, False, EVEN_K, DOT_PRECISION, BLOCK_M,
                            BLOCK_N, BLOCK_K)
    if HAS_BIAS:
        preact += tl.load(b1_ptr + cols, mask=cols < N, other=0.0).to(tl.float32)[None, :]
    if SAVE_PREACTIVATION:
        store_tile(preact_ptr, preact, rows, cols, M, N)
    hidden = activation(preact, ACTIVATION)
    if DROPOUT:
        keep = hidden_keep(tl.load(seed_ptr), rows, cols, N, dropout_p)
        hidden = tl.where(keep, hidden * dropout_scale, 0.0)
    store_tile(hidden_ptr, hidden, rows, cols, M, N)
