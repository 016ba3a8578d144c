"""Triton backend of residual add + dropout + LayerNorm: the launchers.

``add_layer_norm_forward`` / ``add_layer_norm_backward`` take the reference's arguments
(``fasttx.reference.add_layer_norm``) and run the kernels of ``_add_layer_norm_forward`` and
``_add_layer_norm_backward``.

What the launchers decide, from the hidden size D alone (no autotuning: the best
meta-parameters of a memory-bound row kernel follow from the row size):
- rows up to ``MAX_REGISTER_ROW`` elements are held in registers whole, several rows per
  program for small D so that each program moves about ``TILE_ELEMENTS`` elements;
- wider rows are walked in ``WIDE_CHUNK``-column chunks (forward) or split into column
  blocks after a row-dot pre-pass (backward), so no hidden size spills registers;
- warps: about eight elements per thread, which is one 16-byte load of a 16-bit tensor,
  and at most 16 warps (a whole 8192-column row at 32 warps would leave 64 registers per
  thread for the backward and spill; at 16 it compiles to 128 without spills, but for 16
  bytes per thread with dropout, whose Philox counters need registers too);
- the backward's persistent grid: a few programs per SM, each summing its rows' dweight and
  dbias contributions in registers before the fixed-order second stage.

x and the residual are read through their row strides; every output is contiguous.
"""

from __future__ import annotations

import contextlib
import dataclasses

import torch
import triton

from fasttx.triton._add_layer_norm_backward import (
    add_layer_norm_backward_kernel,
    add_layer_norm_backward_row_dots_kernel,
    column_sum_kernel,
)
from fasttx.triton._add_layer_norm_forward import (
    add_layer_norm_forward_kernel,
    add_layer_norm_forward_wide_kernel,
)
from fasttx.triton._settings import interpreting

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MAX_REGISTER_ROW = 8192  # widest row (elements, rounded up to a power of two) kept whole
WIDE_CHUNK = 4096        # columns per chunk or column block of wider rows
TILE_ELEMENTS = 4096     # elements per program for small rows
_ELEMENTS_PER_THREAD = 8
_MAX_WARPS = 16
_INTERPRETER_PROGRAMS = 3  # persistent programs under the interpreter: several, unevenly loaded
_forced_chunk: int | None = None


@contextlib.contextmanager
def column_chunks(columns: int):
    """Runs every add_layer_norm kernel on the wide-row path with chunks of ``columns`` (a
    power of two), whatever the hidden size (tests use it to cover that path cheaply)."""
    global _forced_chunk
    previous, _forced_chunk = _forced_chunk, columns
    try:
        yield
    finally:
        _forced_chunk = previous


def unsupported_reason(dtype=None, **_):
    """Why these inputs can't run on the Triton kernels, or None.

    bfloat16 stays allowed on CPU tensors: these kernels use no ``tl.dot`` (whose bfloat16
    the Triton interpreter gets wrong), and their interpreted results match the reference.
    """
    if dtype is not None and dtype not in SUPPORTED_DTYPES:
        return f"the triton add_layer_norm kernels take float16, bfloat16 or float32, got {dtype}"
    return None


@dataclasses.dataclass(frozen=True)
class Plan:
    """How the kernels cover an (N, D) problem."""

    wide: bool        # rows in column chunks/blocks rather than whole in registers
    block_rows: int   # rows per tile
    block_d: int      # columns per tile: the whole row (power of two >= D) or a chunk
    num_warps: int

    @classmethod
    def of(cls, dim: int) -> Plan:
        whole_row = triton.next_power_of_2(dim)
        if _forced_chunk is None and whole_row <= MAX_REGISTER_ROW:
            rows = max(1, TILE_ELEMENTS // whole_row)  # not fewer for small N: same registers
            return cls(False, rows, whole_row, _warps(rows * whole_row))
        chunk = _forced_chunk or WIDE_CHUNK
        return cls(True, 1, chunk, _warps(chunk))

    def column_block_count(self, dim: int) -> int:
        return triton.cdiv(dim, self.block_d)


_KERNELS = {
    "forward": add_layer_norm_forward_kernel,
    "forward_wide": add_layer_norm_forward_wide_kernel,
    "row_dots": add_layer_norm_backward_row_dots_kernel,
    "backward": add_layer_norm_backward_kernel,
    "column_sum": column_sum_kernel,
}


def _launch(kind, grid, *args, **meta):
    """Runs kernel ``kind`` (one place to launch, so tests can record the launches)."""
    _KERNELS[kind][grid](*args, **meta)


def _warps(elements: int) -> int:
    return min(_MAX_WARPS, max(1, elements // (32 * _ELEMENTS_PER_THREAD)))


def programs_per_sm(num_warps: int) -> int:
    """The backward programs the persistent grid assumes resident on one SM at once: a
    quarter of its 64 warps, which is what fits at up to 128 registers per thread (the
    backward compiles to 63-128 on sm_90). The static cost report's budget test checks it
    against the compiled kernel's real occupancy: half the warps (the earlier assumption)
    would need at most 64 registers, so half of its programs ran as a second wave."""
    return max(1, 16 // num_warps)


def _persistent_programs(device: torch.device, num_warps: int) -> int:
    """Programs of the backward's persistent grid: ``programs_per_sm`` on every SM (a fixed
    number per device, so the reduction order is too)."""
    if device.type != "cuda" or interpreting():
        return _INTERPRETER_PROGRAMS
    sm_count = torch.cuda.get_device_properties(device).multi_processor_count
    return sm_count * programs_per_sm(num_warps)


def _with_unit_column_stride(tensor: torch.Tensor | None) -> torch.Tensor | None:
    """Rows may be strided; elements within a row must be adjacent."""
    if tensor is None or tensor.stride(-1) == 1 or tensor.shape[-1] == 1:
        return tensor
    return tensor.contiguous()


def _dense(tensor: torch.Tensor | None) -> torch.Tensor | None:
    return None if tensor is None else tensor.contiguous()


def _dropout_args(dropout_seed, dropout_p, placeholder):
    scale = 1.0 / (1.0 - dropout_p)
    return (placeholder if dropout_seed is None else dropout_seed), dropout_p, scale


def add_layer_norm_forward(x, residual, weight, bias, eps, dropout_seed, dropout_p):
    """As ``fasttx.reference.add_layer_norm.add_layer_norm_forward``: y, s, mean, rstd."""
    n_rows, dim = x.shape
    x = _with_unit_column_stride(x)
    residual = _with_unit_column_stride(residual)
    weight, bias = _dense(weight), _dense(bias)  # the kernels read them as dense vectors
    stream_dtype = x.dtype if residual is None else residual.dtype
    y = torch.empty((n_rows, dim), dtype=x.dtype, device=x.device)
    stream = torch.empty((n_rows, dim), dtype=stream_dtype, device=x.device)
    mean = torch.empty(n_rows, dtype=torch.float32, device=x.device)
    rstd = torch.empty_like(mean)
    plan = Plan.of(dim)
    seed, dropout_p, dropout_scale = _dropout_args(dropout_seed, dropout_p, x)
    args = (x, x if residual is None else residual, x if weight is None else weight,
            x if bias is None else bias, seed, y, stream, mean, rstd, n_rows, dim, x.stride(0),
            0 if residual is None else residual.stride(0), eps, dropout_p, dropout_scale)
    flags = dict(HAS_RESIDUAL=residual is not None, HAS_WEIGHT=weight is not None,
                 HAS_BIAS=bias is not None, DROPOUT=dropout_seed is not None and dropout_p > 0,
                 BLOCK_D=plan.block_d, num_warps=plan.num_warps)
    if plan.wide:
        _launch("forward_wide", (n_rows,), *args, **flags)
    else:
        _launch("forward", (triton.cdiv(n_rows, plan.block_rows),), *args, **flags,
                BLOCK_ROWS=plan.block_rows)
    return y, stream, mean, rstd


def add_layer_norm_backward(grad_y, grad_residual_out, residual_out, weight, bias, mean, rstd,
                            dropout_seed, dropout_p, has_residual):
    """As ``fasttx.reference.add_layer_norm.add_layer_norm_backward``: dx, dresidual, dweight,
    dbias (empty, shape (0,), where there is no such input)."""
    n_rows, dim = residual_out.shape
    device = residual_out.device
    grad_y = grad_y.contiguous()
    grad_stream = None if grad_residual_out is None else grad_residual_out.contiguous()
    stream = residual_out.contiguous()
    weight = _dense(weight)
    plan = Plan.of(dim)
    column_blocks = plan.column_block_count(dim)
    row_tiles = triton.cdiv(n_rows, plan.block_rows)
    programs = min(row_tiles,
                   max(1, _persistent_programs(device, plan.num_warps) // column_blocks))

    row_dots = mean  # placeholder unless the rows span several column blocks
    if column_blocks > 1:
        row_dots = torch.empty(2, n_rows, dtype=torch.float32, device=device)
        _launch(
            "row_dots", (n_rows,), grad_y, stream, stream if weight is None else weight, mean,
            rstd, row_dots, n_rows, dim, HAS_WEIGHT=weight is not None, BLOCK_D=plan.block_d,
            num_warps=plan.num_warps)

    grad_x = torch.empty((n_rows, dim), dtype=grad_y.dtype, device=device)
    grad_residual = torch.empty_like(stream) if has_residual else None
    partial_weight = torch.empty(programs, dim, dtype=torch.float32, device=device)
    partial_bias = torch.empty_like(partial_weight)
    seed, dropout_p, dropout_scale = _dropout_args(dropout_seed, dropout_p, mean)
    _launch(
        "backward", (programs, column_blocks), grad_y,
        grad_y if grad_stream is None else grad_stream, stream,
        stream if weight is None else weight, mean, rstd, row_dots, seed, grad_x,
        grad_x if grad_residual is None else grad_residual, partial_weight, partial_bias,
        n_rows, dim, dropout_p, dropout_scale,
        HAS_RESIDUAL=has_residual, HAS_WEIGHT=weight is not None,
        HAS_GRAD_STREAM=grad_stream is not None,
        DROPOUT=dropout_seed is not None and dropout_p > 0, ROW_DOTS_GIVEN=column_blocks > 1,
        BLOCK_ROWS=plan.block_rows, BLOCK_D=plan.block_d, num_warps=plan.num_warps,
        num_stages=1)

    def column_sums(partial, like):
        if like is None:
            return grad_y.new_empty((0,))
        out = torch.empty_like(like, memory_format=torch.contiguous_format)
        _launch("column_sum", (triton.cdiv(dim, 128),), partial, out, programs, dim,
                BLOCK_P=32, BLOCK_D=128, num_warps=4)
        return out

    return (grad_x, grad_residual if has_residual else grad_y.new_empty((0,)),
            column_sums(partial_weight, weight), column_sums(partial_bias, bias))
