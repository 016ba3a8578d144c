"""The launches the static report compiles: each op's real calls at the benchmark suite's
headline shapes, and what one iteration of each kernel's hot loop computes.

The launches are recorded on CPU without running any kernel (``run=False``): a launch's
arguments (pointer dtypes and alignment, integer sizes and strides, compile-time flags)
depend on the shapes only, so the recorded calls are the very ones a GPU run of the same
shapes makes. bf16 is recorded in fp16 (the triton backend refuses bf16 on CPU tensors)
and compiled as bf16.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import json
from collections.abc import Callable
from unittest import mock

import torch

import fasttx
from benchmarks.static import launches as recording
from fasttx.testing import key_padding_mask

H200_SMS = 132


@dataclasses.dataclass(frozen=True)
class Case:
    """One call of an op whose kernel launches the report compiles."""

    op: str                     # "attention", "add_layer_norm", "feed_forward"
    name: str                   # "d128 causal"
    call: Callable[[], None]    # runs the op (forward and backward) on CPU tensors

    @property
    def id(self) -> str:
        return f"{self.op} {self.name}"

    def launches(self) -> list:
        module = importlib.import_module(f"fasttx.triton.{self.op}")
        with contextlib.ExitStack() as stack:
            for patch in _dry_run_patches(module):
                stack.enter_context(patch)
            launches = recording.record_launches(module, self.call, run=False)
        # once each: dweight's and dbias's column sums, say, are the same launch
        unique = {json.dumps(launch): launch for launch in launches}
        return recording.as_bf16(list(unique.values()))


class _NoLaunch:
    """Stands for a kernel launched outside ``_launch``: ``kernel[grid](...)`` does nothing."""

    def __getitem__(self, grid):
        return lambda *args, **meta: None


def _dry_run_patches(module):
    """What else a dry run changes: the launcher's view of an H200 where it asks the device
    (add_layer_norm's persistent backward grid, whose program count is a kernel argument),
    and no run of the small kernels launched directly (attention's backward preprocess)."""
    if hasattr(module, "programs_per_sm"):
        yield mock.patch.object(module, "_persistent_programs",
                                lambda device, warps: H200_SMS * module.programs_per_sm(warps))
    if hasattr(module, "attention_backward_preprocess_kernel"):
        yield mock.patch.object(module, "attention_backward_preprocess_kernel", _NoLaunch())


def _zeros(*shape):
    return torch.zeros(*shape, dtype=torch.float16, requires_grad=True)


# Attention: the long-sequence headline (4 x 4096 tokens, 2048 / head_dim heads).
ATTENTION_BATCH, ATTENTION_LENGTH = 4, 4096
ATTENTION_VARIANTS = ("none", "key_padding", "causal", "dropout")


def _attention_call(head_dim, variant):
    def call():
        heads = 2048 // head_dim
        q, k, v = (_zeros(ATTENTION_BATCH, heads, ATTENTION_LENGTH, head_dim)
                   for _ in range(3))
        options = {"none": {}, "causal": {"is_causal": True}, "dropout": {"dropout_p": 0.1},
                   "key_padding": {"attn_mask": key_padding_mask(
                       [ATTENTION_LENGTH * 3 // 4] * ATTENTION_BATCH, ATTENTION_LENGTH)}}
        out = fasttx.scaled_dot_product_attention(q, k, v, backend="triton",
                                                  **options[variant])
        out.backward(torch.ones_like(out))
    return call


# add + LayerNorm: post-norm at the base and big layers' 25k tokens, and the hidden-size
# sweep's 8192 and 65536 at 64 MiB of x; dropout 0.1 at the base size.
LAYER_NORM_SHAPES = ((25000, 512, 0.0), (25000, 512, 0.1), (25000, 1024, 0.0),
                     (4096, 8192, 0.0), (512, 65536, 0.0))


def _layer_norm_call(rows, dim, dropout_p):
    def call():
        x, residual = _zeros(rows, dim), _zeros(rows, dim)
        weight, bias = _zeros(dim), _zeros(dim)
        y = fasttx.add_layer_norm(x, residual, weight, bias, dropout_p=dropout_p,
                                  backend="triton")
        y.backward(torch.ones_like(y))
    return call


# The feed-forward network: the Transformer's base and big layers at 25k tokens, relu.
FEED_FORWARD_SHAPES = ((25000, 512, 2048), (25000, 1024, 4096))


def _feed_forward_call(tokens, d_model, d_ff):
    def call():
        x = _zeros(tokens, d_model)
        w1, b1, w2, b2 = _zeros(d_ff, d_model), _zeros(d_ff), _zeros(d_model, d_ff), \
            _zeros(d_model)
        y = fasttx.feed_forward(x, w1, b1, w2, b2, backend="triton")
        y.backward(torch.ones_like(y))
    return call


def cases(ops=("attention", "add_layer_norm", "feed_forward")) -> list[Case]:
    """Every case of these ops, in report order."""
    found = []
    if "attention" in ops:
        found += [Case("attention", f"d{head_dim} {variant}", _attention_call(head_dim, variant))
                  for head_dim in (64, 128) for variant in ATTENTION_VARIANTS]
    if "add_layer_norm" in ops:
        found += [Case("add_layer_norm", f"{rows}x{dim}" + (f" p{p}" if p else ""),
                       _layer_norm_call(rows, dim, p)) for rows, dim, p in LAYER_NORM_SHAPES]
    if "feed_forward" in ops:
        found += [Case("feed_forward", f"{tokens}x{d_model}x{d_ff}",
                       _feed_forward_call(tokens, d_model, d_ff))
                  for tokens, d_model, d_ff in FEED_FORWARD_SHAPES]
    return found


@dataclasses.dataclass(frozen=True)
class Work:
    """What one iteration of a kernel's hot loop computes, and which loop that is."""

    unit: str            # "score", "element", "k-step"
    per_iteration: int   # units one iteration of the whole CTA computes
    loop: str            # "fewest": the smallest loop doing the kernel's tensor-core work
                         # (attention's mask-free bulk pass); "most": the largest (the
                         # slowest GEMM programs); "sum": every loop runs once per unit of
                         # work (add_layer_norm); "kernel": no loop, one tile per program


def work(op: str, kind: str, meta: dict) -> Work:
    """The hot loop's work for a launch of ``kind`` with these meta-parameters (the launch's
    and the compiled config's)."""
    if op == "attention":  # forward and dQ stream keys, dK/dV streams queries
        return Work("score", meta["BLOCK_M"] * meta["BLOCK_N"], "fewest")
    if op == "feed_forward":  # one K step of the output tile: a MAC tile
        return Work("k-step", 1, "most")
    rows = meta.get("BLOCK_ROWS", meta.get("BLOCK_P", 1))
    return Work("element", rows * meta["BLOCK_D"], "kernel" if kind == "forward" else "sum")
