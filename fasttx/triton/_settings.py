"""Settings the Triton launchers of every op read: interpreter mode and fp32 dot precision."""

from __future__ import annotations

import os

import torch


def interpreting() -> bool:
    """Whether Triton runs kernels under its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


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
