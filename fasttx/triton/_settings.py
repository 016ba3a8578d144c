"""Settings the Triton launchers of every op read: interpreter mode, autotuning, fp32 dot
precision, and what the interpreter can't compute."""

from __future__ import annotations

import os

import torch


def interpreting() -> bool:
    """Whether Triton runs kernels under its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def autotuning() -> bool:
    """Whether the launchers autotune their tiles on a GPU (the default). With
    ``FASTTX_TRITON_AUTOTUNE=0`` each kernel runs the first config its architecture lists
    that fits the GPU: one compile per specialisation and no timing runs, which bounds the
    JIT time of a test run (tools/gpu_run.py sets it for the GPU test suite)."""
    return os.environ.get("FASTTX_TRITON_AUTOTUNE", "1") != "0"


def first_fitting_config(prune, configs, kernel, args, meta) -> dict:
    """The launch options of the first of ``configs`` that an autotuner's pruning function
    keeps for these arguments (its fallback when it keeps none): tiles, num_warps and
    num_stages, to launch ``kernel`` with instead of autotuning."""
    chosen = prune(configs, dict(zip(kernel.arg_names, args, strict=False)), **meta)[0]
    return dict(chosen.kwargs, num_warps=chosen.num_warps, num_stages=chosen.num_stages)


def tf32_matmuls_allowed() -> bool:
    """Whether torch lets fp32 matmuls use TF32, by the newer fp32_precision settings when
    set (reading the legacy flag then raises), else by ``allow_tf32``."""
    for precision in (getattr(torch.backends.cuda.matmul, "fp32_precision", "none"),
                      getattr(torch.backends, "fp32_precision", "none")):
        if precision != "none":
            return precision == "tf32"
    return bool(torch.backends.cuda.matmul.allow_tf32)


def fp32_dot_precision(dtype: torch.dtype) -> str:
    """``input_precision`` of ``tl.dot`` for operands of ``dtype``: "tf32" only for fp32
    when torch allows it (and never under the interpreter), else full precision."""
    if dtype == torch.float32 and tf32_matmuls_allowed() and not interpreting():
        return "tf32"
    return "ieee"


def interpreter_dtype_reason(kernels: str, dtype, device) -> str | None:
    """Why ``kernels`` (which multiply with ``tl.dot``) refuse ``dtype`` on ``device``, or None.

    The Triton interpreter's bfloat16 ``tl.dot`` returns garbage without an error (attention
    off by ~1e9, the feed-forward by ~1e11), so kernels built on it take bfloat16 only on
    CUDA tensors; CPU tensors run under the interpreter.
    """
    if dtype == torch.bfloat16 and device is not None and torch.device(device).type == "cpu":
        return (f"the {kernels} kernels take bfloat16 only on CUDA tensors: the Triton "
                f"interpreter that runs them on CPU tensors computes bfloat16 dot products "
                f"wrongly (use float16 or float32 there, or the reference backend)")
    return None
