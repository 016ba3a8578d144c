"""Triton backend of the position-wise feed-forward network: the launchers.

``feed_forward_forward`` / ``feed_forward_backward`` take the reference's arguments
(``fasttx.reference.feed_forward``) and run two GEMMs forward and four backward:

    forward   h  = dropout(act(x @ w1^T + b1))   feed_forward_up_kernel (fused epilogue)
              y  = h @ w2^T + b2                  linear_kernel (bias epilogue)
    backward  da = (dy @ w2) * keep/(1-p) * act'  feed_forward_hidden_grad_kernel
              dW2 = dy^T @ h, db2 = sum_rows(dy)  linear_kernel (A's row sums)
              dx = da @ w1                        linear_kernel
              dW1 = da^T @ x, db1 = sum_rows(da)  linear_kernel (A's row sums)

The op's second output, which only this backend's backward reads, is h for relu and the
pre-activation a for gelu/gelu_tanh (``_feed_forward_forward`` says why).

Tiles are autotuned on a GPU from configs for Hopper or for Ampere, keyed on the layer
sizes and the token count rounded up to a power of two (so batches of varying size reuse
one tuning), or with ``FASTTX_TRITON_AUTOTUNE=0`` the first of them that fits; under the
interpreter and inside :func:`fixed_blocks` the tiles are fixed.
Every operand is read through its strides: no transposed copies.
"""

from __future__ import annotations

import contextlib

import torch
import triton

from fasttx.triton._feed_forward_backward import feed_forward_hidden_grad_kernel
from fasttx.triton._feed_forward_forward import feed_forward_up_kernel
from fasttx.triton._matmul import linear_kernel
from fasttx.triton._settings import (
    autotuning,
    first_fitting_config,
    fp32_dot_precision,
    interpreter_dtype_reason,
    interpreting,
)

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)

# (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages) per kernel weight and architecture:
# wgmma-sized tiles with deep pipelines on Hopper, mma.sync-sized ones on Ampere. A "heavy"
# kernel (a Philox dropout or gelu epilogue, which needs registers for every accumulator
# element at once, or the bias-gradient row sums beside the main loop) gets at most 32
# accumulators per thread. Chosen from ptxas's resource usage on sm_90 (bf16): every
# Hopper config of a family runs its kernels without register spills (the tests check the
# worst case of each); the big tiles spill up to 4 KB per thread in the heavy kernels, and
# 128 x 128 tiles on 4 warps spill even in some light ones.
_CONFIGS = {
    "light": {
        "hopper": [(128, 256, 64, 8, 3), (128, 128, 64, 8, 4), (128, 64, 64, 4, 4),
                   (64, 128, 64, 4, 4), (64, 64, 64, 4, 3)],
        "ampere": [(128, 256, 32, 8, 3), (128, 128, 32, 8, 4), (128, 64, 32, 4, 4),
                   (64, 128, 32, 4, 4), (64, 64, 32, 4, 4)],
    },
    "heavy": {
        "hopper": [(128, 64, 64, 8, 4), (64, 128, 64, 8, 4), (64, 64, 64, 4, 3)],
        "ampere": [(128, 64, 32, 8, 4), (64, 128, 32, 8, 4), (64, 64, 32, 4, 4)],
    },
}
_SMALLEST_CONFIG = (32, 32, 32, 4, 2)  # when nothing listed fits (fp32 on a small GPU)
_GROUP_M = 8
_INTERPRETER_BLOCKS = {"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 16, "GROUP_M": 2}
# the sizes and every compile-time flag a kernel has; the autotuner adds the dtypes
_AUTOTUNE_KEY = ["key_m", "key_n", "key_k", "ACTIVATION", "HAS_BIAS", "SUM_A_ROWS", "DROPOUT",
                 "SAVE_PREACTIVATION", "DOT_PRECISION"]
_fixed_blocks: dict[str, int] | None = None


@contextlib.contextmanager
def fixed_blocks(block_m: int, block_n: int, block_k: int, group_m: int = 2):
    """Runs every feed-forward kernel with these tiles instead of autotuning (for tests)."""
    global _fixed_blocks
    previous = _fixed_blocks
    _fixed_blocks = {"BLOCK_M": block_m, "BLOCK_N": block_n, "BLOCK_K": block_k,
                     "GROUP_M": group_m}
    try:
        yield
    finally:
        _fixed_blocks = previous


def unsupported_reason(dtype=None, device=None, **_):
    """Why these inputs can't run on the Triton kernels, or None."""
    if dtype is not None and dtype not in SUPPORTED_DTYPES:
        return f"the triton feed_forward kernels take float16, bfloat16 or float32, got {dtype}"
    return interpreter_dtype_reason("triton feed_forward", dtype, device)  # GEMMs: tl.dot


def _shared_memory(config: triton.Config, element_size: int) -> int:
    """Bytes of the pipelined A and B tiles: what bounds the stages."""
    block_m, block_n, block_k = (config.kwargs[k] for k in ("BLOCK_M", "BLOCK_N", "BLOCK_K"))
    return config.num_stages * (block_m + block_n) * block_k * element_size


def _prune(family):
    """Keeps the configs of this family for this GPU's architecture that fit its shared
    memory."""

    def prune(configs, named_args, **kwargs):
        first = next(iter(named_args.values()))  # every kernel's first argument is an operand
        properties = torch.cuda.get_device_properties(first.device)
        wanted = set(_CONFIGS[family]["hopper" if properties.major >= 9 else "ampere"])
        budget = getattr(properties, "shared_memory_per_block_optin", 101376)
        kept = [c for c in configs
                if (c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.kwargs["BLOCK_K"], c.num_warps,
                    c.num_stages) in wanted
                and _shared_memory(c, first.element_size()) <= budget
                and spill_free(c, named_args["K"])]
        return kept or [_config(*_SMALLEST_CONFIG)]
    return prune


def spill_free(config: triton.Config, k: int) -> bool:
    """False for the one listed case that spills: a 128 x 256 tile whose K loop needs the
    tail masks (K not a multiple of BLOCK_K)."""
    big = config.kwargs["BLOCK_M"] * config.kwargs["BLOCK_N"] > 128 * 128
    return not big or k % config.kwargs["BLOCK_K"] == 0


def family(kind, meta):
    """"heavy" for the kernels that compute Philox or gelu per element or sum A's rows,
    else "light"."""
    if kind == "up" and (meta["DROPOUT"] or meta["ACTIVATION"] != "relu"):
        return "heavy"
    if kind == "hidden_grad" and meta["ACTIVATION"] != "relu":
        return "heavy"
    if kind == "linear" and meta["SUM_A_ROWS"]:
        return "heavy"
    return "light"


def _config(block_m, block_n, block_k, warps, stages):
    return triton.Config({"BLOCK_M": block_m, "BLOCK_N": block_n, "BLOCK_K": block_k,
                          "GROUP_M": _GROUP_M}, num_warps=warps, num_stages=stages)


def _kernels(kernel):
    """The fixed-tile variant and an autotuned one per config family; EVEN_K follows from
    the tile's BLOCK_K."""
    with_even_k = triton.heuristics({"EVEN_K": lambda args: args["K"] % args["BLOCK_K"] == 0})(
        kernel)
    key = [name for name in _AUTOTUNE_KEY if name in kernel.arg_names]
    tuned = {}
    for name, architectures in _CONFIGS.items():
        configs = sorted({cfg for arch in architectures.values() for cfg in arch})
        tuned[name] = triton.autotune(
            configs=[_config(*c) for c in configs], key=key,
            prune_configs_by={"early_config_prune": _prune(name)})(with_even_k)
    return with_even_k, tuned


_KERNELS = {"up": _kernels(feed_forward_up_kernel),
            "hidden_grad": _kernels(feed_forward_hidden_grad_kernel),
            "linear": _kernels(linear_kernel)}


def _tiles(rows, cols):
    """The grid over an (rows, cols) output: one program per (BLOCK_M, BLOCK_N) tile."""
    return lambda m: (triton.cdiv(rows, m["BLOCK_M"]) * triton.cdiv(cols, m["BLOCK_N"]),)


def _launch(kind, grid, *args, **meta):
    """Runs kernel ``kind`` autotuned, or with fixed tiles: inside fixed_blocks, under the
    interpreter, or with autotuning off (the architecture's first config that fits)."""
    fixed, tuned = _KERNELS[kind]
    blocks = _fixed_blocks or (_INTERPRETER_BLOCKS if interpreting() else None)
    if blocks is None and not autotuning():
        blocks = untuned_config(kind, *args, **meta)
    if blocks is None:
        tuned[family(kind, meta)][grid](*args, **meta)
    else:
        fixed[grid](*args, **meta, **blocks)


def untuned_config(kind, *args, **meta) -> dict:
    """The launch options of kernel ``kind`` with autotuning off: the first config of its
    family listed for this GPU's architecture that fits (as the autotuner's pruning
    decides)."""
    name = family(kind, meta)
    configs = [_config(*c) for arch in ("hopper", "ampere") for c in _CONFIGS[name][arch]]
    return first_fitting_config(_prune(name), configs, _KERNELS[kind][0], args, meta)


def _sizes(m, n, k, tokens_axis):
    """(M, N, K) and the autotuning key: the same with the token count bucketed."""
    key = [m, n, k]
    key[tokens_axis] = triton.next_power_of_2(key[tokens_axis])
    return (m, n, k, *key)


def _linear(a, b, bias, out, row_sums, tokens_axis):
    """out = a @ b (+ bias), and a's row sums into ``row_sums`` when it is not None; a is
    (M, K) and b (K, N), any strides. ``tokens_axis`` says which of M, N, K is the token
    count (bucketed in the autotuning key)."""
    (m, k), n = a.shape, b.shape[1]
    _launch("linear", _tiles(m, n), a, b, a if bias is None else bias, out,
            a if row_sums is None else row_sums, *_sizes(m, n, k, tokens_axis), *a.stride(),
            *b.stride(), HAS_BIAS=bias is not None, SUM_A_ROWS=row_sums is not None,
            DOT_PRECISION=fp32_dot_precision(a.dtype))


def _contiguous(tensor):
    return None if tensor is None else tensor.contiguous()


def _dropout_args(dropout_seed, dropout_p, placeholder):
    dropout = dropout_seed is not None and dropout_p > 0.0
    seed = dropout_seed if dropout else placeholder
    return seed, dropout, dropout_p, 1.0 / (1.0 - dropout_p) if dropout else 1.0


def feed_forward_forward(x, w1, b1, w2, b2, activation, dropout_seed, dropout_p):
    """As ``fasttx.reference.feed_forward.feed_forward_forward``: y (N, D_out) and the
    saved activation (N, F): h for relu, the pre-activation for gelu/gelu_tanh."""
    tokens, dim = x.shape
    hidden_size, dim_out = w1.shape[0], w2.shape[0]
    b1, b2 = _contiguous(b1), _contiguous(b2)  # the kernels read biases as dense vectors
    hidden = x.new_empty(tokens, hidden_size)
    preactivation = None if activation == "relu" else x.new_empty(tokens, hidden_size)
    y = x.new_empty(tokens, dim_out)
    if tokens == 0:
        return y, hidden if preactivation is None else preactivation
    seed, dropout, dropout_p, dropout_scale = _dropout_args(dropout_seed, dropout_p, x)
    _launch("up", _tiles(tokens, hidden_size), x, w1, x if b1 is None else b1, seed, hidden,
            hidden if preactivation is None else preactivation,
            *_sizes(tokens, hidden_size, dim, 0), *x.stride(), *w1.stride(), dropout_p,
            dropout_scale, ACTIVATION=activation, HAS_BIAS=b1 is not None, DROPOUT=dropout,
            SAVE_PREACTIVATION=preactivation is not None, DOT_PRECISION=fp32_dot_precision(x.dtype))
    _linear(hidden, w2.t(), b2, y, None, tokens_axis=0)
    return y, hidden if preactivation is None else preactivation


def feed_forward_backward(grad_y, x, w1, b1, w2, b2, preactivation, activation, dropout_seed,
                          dropout_p):
    """As ``fasttx.reference.feed_forward.feed_forward_backward``: dx, dw1, db1, dw2, db2
    (empty, shape (0,), where the bias was None). ``preactivation`` is the forward's second
    output: h for relu, a otherwise."""
    tokens, dim = x.shape
    hidden_size, dim_out = w1.shape[0], w2.shape[0]
    grad_b1 = None if b1 is None else torch.empty_like(b1, memory_format=torch.contiguous_format)
    grad_b2 = None if b2 is None else torch.empty_like(b2, memory_format=torch.contiguous_format)
    if tokens == 0:  # no rows: zero weight and bias gradients
        grads = (x.new_empty(0, dim), torch.zeros_like(w1), grad_b1, torch.zeros_like(w2), grad_b2)
        return tuple(grad_y.new_empty((0,)) if g is None else g.zero_() for g in grads)
    preactivation = preactivation.contiguous()  # as the forward wrote it, unless called directly
    grad_pre = x.new_empty(tokens, hidden_size)
    hidden = preactivation if activation == "relu" else x.new_empty(tokens, hidden_size)
    seed, dropout, dropout_p, dropout_scale = _dropout_args(dropout_seed, dropout_p, x)
    _launch("hidden_grad", _tiles(tokens, hidden_size), grad_y, w2, preactivation, seed, grad_pre,
            hidden, *_sizes(tokens, hidden_size, dim_out, 0), *grad_y.stride(), *w2.stride(),
            dropout_p, dropout_scale, ACTIVATION=activation,
            DROPOUT=dropout and activation != "relu", DOT_PRECISION=fp32_dot_precision(x.dtype))

    grad_w2 = torch.empty(w2.shape, dtype=w2.dtype, device=w2.device)
    _linear(grad_y.t(), hidden, None, grad_w2, grad_b2, tokens_axis=2)
    grad_x = x.new_empty(tokens, dim)
    _linear(grad_pre, w1, None, grad_x, None, tokens_axis=0)
    grad_w1 = torch.empty(w1.shape, dtype=w1.dtype, device=w1.device)
    _linear(grad_pre.t(), x, None, grad_w1, grad_b1, tokens_axis=2)
    empty = grad_y.new_empty
    return (grad_x, grad_w1, empty((0,)) if grad_b1 is None else grad_b1, grad_w2,
            empty((0,)) if grad_b2 is None else grad_b2)
