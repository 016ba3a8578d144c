"""Triton matmul building blocks of the feed-forward kernels, and the plain linear kernel.

``matmul_tile`` is the main loop every FFN kernel shares: one (BLOCK_M, BLOCK_N) tile of
A @ B accumulated in fp32 over K, with A and B read through their strides (so x @ w.T,
dy.T @ h and the rest need no transposed copies). The kernels differ only in their
epilogues: ``linear_kernel`` adds a bias and can also sum A's rows, which for the
weight-gradient products dW = dY^T X is the bias gradient sum_rows(dY) (cuBLASLt's BGRADA
epilogue); ``_feed_forward_forward`` and ``_feed_forward_backward`` fuse the activation and
dropout.

Out-of-range rows and columns are clamped into range (``% M``) rather than masked, so the
loads of every full K step are unmasked; only the K tail (unless EVEN_K) and the stores
are masked.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def tile_coordinates(M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                     GROUP_M: tl.constexpr):
    """This program's (row tile, column tile), ordered in groups of GROUP_M row tiles so
    that the programs running together share A's rows and B's columns in L2."""
    pid = tl.program_id(0)
    tiles_m = tl.cdiv(M, BLOCK_M)
    tiles_n = tl.cdiv(N, BLOCK_N)
    per_group = GROUP_M * tiles_n
    first_m = (pid // per_group) * GROUP_M
    group_rows = tl.minimum(tiles_m - first_m, GROUP_M)
    return first_m + (pid % per_group) % group_rows, (pid % per_group) // group_rows


@triton.jit
def matmul_tile(
    a_ptr,        # (M, K) left operand, strides (stride_am, stride_ak)
    b_ptr,        # (K, N) right operand, strides (stride_bk, stride_bn)
    rows, cols,   # (BLOCK_M,) rows of A and (BLOCK_N,) columns of B, already in range
    K, stride_am, stride_ak, stride_bk, stride_bn,
    SUM_A_ROWS: tl.constexpr,  # also return the sums over K of A's rows, fp32
    EVEN_K: tl.constexpr,      # K is a multiple of BLOCK_K: no masks in the loop
    DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """A[rows, :] @ B[:, cols] accumulated in fp32, and A's row sums (zeros unless asked)."""
    ks = tl.arange(0, BLOCK_K)
    # 64-bit row offsets (token counts times widths pass 2**31); K steps advance pointers
    a_ptrs = a_ptr + rows.to(tl.int64)[:, None] * stride_am + ks[None, :] * stride_ak
    b_ptrs = b_ptr + ks[:, None] * stride_bk + cols.to(tl.int64)[None, :] * stride_bn
    acc = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
    row_sums = tl.zeros((BLOCK_M,), tl.float32)
    for k in range(0, K, BLOCK_K):
        if EVEN_K:
            a = tl.load(a_ptrs)
            b = tl.load(b_ptrs)
        else:
            a = tl.load(a_ptrs, mask=ks[None, :] < K - k, other=0.0)
            b = tl.load(b_ptrs, mask=ks[:, None] < K - k, other=0.0)
        acc = tl.dot(a, b, acc, input_precision=DOT_PRECISION)
        if SUM_A_ROWS:
            row_sums += tl.sum(a.to(tl.float32), 1)
        a_ptrs += BLOCK_K * stride_ak
        b_ptrs += BLOCK_K * stride_bk
    return acc, row_sums


@triton.jit
def linear_kernel(
    a_ptr,         # (M, K) left operand, strides (stride_am, stride_ak)
    b_ptr,         # (K, N) right operand, strides (stride_bk, stride_bn)
    bias_ptr,      # (N,) added to every row of C (HAS_BIAS only)
    c_ptr,         # (M, N) out: A @ B + bias, contiguous
    row_sums_ptr,  # (M,) out: sums over K of A's rows (SUM_A_ROWS only)
    M, N, K,
    key_m, key_n, key_k,  # autotuning key: M, N, K with the token count bucketed
    stride_am, stride_ak, stride_bk, stride_bn,
    HAS_BIAS: tl.constexpr, SUM_A_ROWS: tl.constexpr, EVEN_K: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
):
    """C = A @ B (+ bias); with SUM_A_ROWS the first column of tiles also writes A's row
    sums (only those programs pay for the extra reduction)."""
    pid_m, pid_n = tile_coordinates(M, N, BLOCK_M, BLOCK_N, GROUP_M)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    args = (a_ptr, b_ptr, rows % M, cols % N, K, stride_am, stride_ak, stride_bk, stride_bn)
    if SUM_A_ROWS:
        if pid_n == 0:
            acc, row_sums = matmul_tile(*args, True, EVEN_K, DOT_PRECISION, BLOCK_M, BLOCK_N,
                                        BLOCK_K)
            tl.store(row_sums_ptr + rows, row_sums.to(row_sums_ptr.dtype.element_ty),
                     mask=rows < M)
        else:
            acc, _ = matmul_tile(*args, False, EVEN_K, DOT_PRECISION, BLOCK_M, BLOCK_N, BLOCK_K)
    else:
        acc, _ = matmul_tile(*args, False, EVEN_K, DOT_PRECISION, BLOCK_M, BLOCK_N, BLOCK_K)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + cols, mask=cols < N, other=0.0).to(tl.float32)[None, :]
    store_tile(c_ptr, acc, rows, cols, M, N)


@triton.jit
def store_tile(c_ptr, tile, rows, cols, M, N):
    """Writes a (BLOCK_M, BLOCK_N) tile into a contiguous (M, N) tensor, in its dtype."""
    tl.store(c_ptr + rows.to(tl.int64)[:, None] * N + cols[None, :],
             tile.to(c_ptr.dtype.element_ty), mask=(rows < M)[:, None] & (cols < N)[None, :])
