"""Triton kernels of residual add + dropout + LayerNorm, backward.

With xhat = (s - mean) * rstd and g = dy * weight, per row:
    ds = rstd * (g - mean(g) - xhat * mean(g * xhat)) + d(s returned)
    dresidual = ds;  dx = ds * keep / (1 - p)   (the forward's Philox mask, regenerated)
and over all rows dweight = sum(dy * xhat), dbias = sum(dy).

Reduction strategy for dweight and dbias: deterministic and atomic-free, in two stages.
``add_layer_norm_backward_kernel`` runs on a persistent grid (programs, column blocks):
each program walks a fixed set of row tiles and keeps its column sums in fp32 registers,
then writes them to its own row of a (programs, D) buffer; ``column_sum_kernel`` adds
those rows in a fixed order. The same GPU therefore gives bit-identical results run after run.

Rows that fit in registers (one column block) get their two row means from the tile
itself. Wider rows are split into column blocks, so ``add_layer_norm_backward_row_dots_kernel``
first computes mean(g * xhat) and mean(g) per row in one pass over dy and s.
Everything is upcast to fp32 on load.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def normalised_and_scaled_grad(
    grad_y_ptr, stream_ptr, weight_ptr,  # dy (N, D), s (N, D), weight (D,)
    rows, cols,      # int64 rows (BLOCK_ROWS, 1), int32 columns (1, BLOCK_D)
    ok, mean, rstd,  # tile mask; fp32 (BLOCK_ROWS, 1) statistics
    dim, HAS_WEIGHT: tl.constexpr,
):
    """Returns dy, xhat (0 outside ``ok``) and g = dy * weight, fp32."""
    dy = tl.load(grad_y_ptr + rows * dim + cols, mask=ok, other=0.0).to(tl.float32)
    s = tl.load(stream_ptr + rows * dim + cols, mask=ok, other=0.0).to(tl.float32)
    xhat = tl.where(ok, (s - mean) * rstd, 0.0)
    g = dy
    if HAS_WEIGHT:
        g = dy * tl.load(weight_ptr + cols, mask=cols < dim, other=0.0).to(tl.float32)
    return dy, xhat, g


@triton.jit
def add_layer_norm_backward_row_dots_kernel(
    grad_y_ptr,      # (N, D) dL/dy, contiguous
    stream_ptr,      # (N, D) saved s, contiguous
    weight_ptr,      # (D,) LayerNorm scale (HAS_WEIGHT only)
    mean_ptr, rstd_ptr,  # (N,) fp32 statistics of the forward
    row_dots_ptr,    # (2, N) fp32 out: mean(g * xhat) and mean(g) of each row
    n_rows, dim,
    HAS_WEIGHT: tl.constexpr,
    BLOCK_D: tl.constexpr,  # columns per chunk
):
    """One row per program, in column chunks (for rows wider than one column block)."""
    row = tl.program_id(0).to(tl.int64)
    mean = tl.load(mean_ptr + row)
    rstd = tl.load(rstd_ptr + row)
    dot_xhat = tl.zeros((BLOCK_D,), tl.float32)
    dot_one = tl.zeros((BLOCK_D,), tl.float32)
    for start in range(0, dim, BLOCK_D):
        cols = start + tl.arange(0, BLOCK_D)
        _, xhat, g = normalised_and_scaled_grad(grad_y_ptr, stream_ptr, weight_ptr, row, cols,
                                                cols < dim, mean, rstd, dim, HAS_WEIGHT)
        dot_xhat += g * xhat
        dot_one += g
    tl.store(row_dots_ptr + row, tl.sum(dot_xhat, 0) / dim)
    tl.store(row_dots_ptr + n_rows + row, tl.sum(dot_one, 0) / dim)


@triton.jit
def add_layer_norm_backward_kernel(
    grad_y_ptr,          # (N, D) dL/dy, contiguous
    grad_stream_ptr,     # (N, D) dL/ds of the returned s, contiguous (HAS_GRAD_STREAM only)
    stream_ptr,          # (N, D) saved s, contiguous
    weight_ptr,          # (D,) LayerNorm scale (HAS_WEIGHT only)
    mean_ptr, rstd_ptr,  # (N,) fp32 statistics of the forward
    row_dots_ptr,        # (2, N) fp32 mean(g * xhat), mean(g) per row (ROW_DOTS_GIVEN only)
    seed_ptr,            # int64 (1,) Philox seed (DROPOUT only)
    grad_x_ptr,          # (N, D) out: dx, contiguous
    grad_residual_ptr,   # (N, D) out: dresidual, contiguous (HAS_RESIDUAL only)
    partial_weight_ptr,  # (programs, D) fp32 out: this program's sum of dy * xhat
    partial_bias_ptr,    # (programs, D) fp32 out: this program's sum of dy
    n_rows, dim, dropout_p, dropout_scale,
    HAS_RESIDUAL: tl.constexpr, HAS_WEIGHT: tl.constexpr, HAS_GRAD_STREAM: tl.constexpr,
    DROPOUT: tl.constexpr,
    ROW_DOTS_GIVEN: tl.constexpr,  # rows span several column blocks
    BLOCK_ROWS: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """Program (p, c) handles row tiles p, p + programs, ... in column block c."""
    program = tl.program_id(0)
    programs = tl.num_programs(0)
    cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    col_ok = cols < dim
    seed = 0
    if DROPOUT:
        seed = tl.load(seed_ptr)
    sum_dy_xhat = tl.zeros((BLOCK_D,), tl.float32)
    sum_dy = tl.zeros((BLOCK_D,), tl.float32)
    for tile in range(program, tl.cdiv(n_rows, BLOCK_ROWS), programs):
        rows = tile * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
        row_ok = rows < n_rows
        ok = row_ok[:, None] & col_ok[None, :]
        rstd = tl.load(rstd_ptr + rows, mask=row_ok, other=0.0)
        mean = tl.load(mean_ptr + rows, mask=row_ok, other=0.0)
        rows = rows.to(tl.int64)
        dy, xhat, g = normalised_and_scaled_grad(
            grad_y_ptr, stream_ptr, weight_ptr, rows[:, None], cols[None, :], ok,
            mean[:, None], rstd[:, None], dim, HAS_WEIGHT)
        sum_dy_xhat += tl.sum(dy * xhat, 0)  # dy dies here: fewer live registers below
        sum_dy += tl.sum(dy, 0)
        if ROW_DOTS_GIVEN:
            mean_g_xhat = tl.load(row_dots_ptr + rows, mask=row_ok, other=0.0)
            mean_g = tl.load(row_dots_ptr + n_rows + rows, mask=row_ok, other=0.0)
        else:
            mean_g_xhat = tl.sum(g * xhat, 1) / dim
            mean_g = tl.sum(g, 1) / dim
        ds = rstd[:, None] * (g - mean_g[:, None] - xhat * mean_g_xhat[:, None])
        offsets = rows[:, None] * dim + cols[None, :]
        if HAS_GRAD_STREAM:
            ds += tl.load(grad_stream_ptr + offsets, mask=ok, other=0.0).to(tl.float32)
        if HAS_RESIDUAL:
            tl.store(grad_residual_ptr + offsets, ds.to(grad_residual_ptr.dtype.element_ty),
                     mask=ok)
        if DROPOUT:
            keep = tl.rand(seed, offsets) >= dropout_p
            ds = tl.where(keep, ds * dropout_scale, 0.0)
        tl.store(grad_x_ptr + offsets, ds.to(grad_x_ptr.dtype.element_ty), mask=ok)
    tl.store(partial_weight_ptr + program * dim + cols, sum_dy_xhat, mask=col_ok)
    tl.store(partial_bias_ptr + program * dim + cols, sum_dy, mask=col_ok)


@triton.jit
def column_sum_kernel(
    partial_ptr,  # (programs, D) fp32 per-program column sums
    out_ptr,      # (D,) out: their sum over programs, in the parameter's dtype
    programs, dim,
    BLOCK_P: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """Stage two of the dweight/dbias reduction: a fixed-order sum over the programs."""
    cols = tl.program_id(0) * BLOCK_D + tl.arange(0, BLOCK_D)
    total = tl.zeros((BLOCK_P, BLOCK_D), tl.float32)
    for start in range(0, programs, BLOCK_P):
        rows = start + tl.arange(0, BLOCK_P)
        ok = (rows < programs)[:, None] & (cols < dim)[None, :]
        total += tl.load(partial_ptr + rows[:, None] * dim + cols[None, :], mask=ok, other=0.0)
    tl.store(out_ptr + cols, tl.sum(total, 0).to(out_ptr.dtype.element_ty), mask=cols < dim)
