"""Helpers shared by the reference ops."""

from __future__ import annotations

import torch

from fasttx import random as philox


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp32 for 16-bit inputs, the input dtype for fp32/fp64: where statistics live."""
    return torch.promote_types(dtype, torch.float32)


def dropout_scale(shape, dropout_seed, dropout_p, device, counter=None):
    """keep / (1 - p) as fp32 over ``shape``, or None without dropout.

    ``counter`` gives each element's Philox counter; by default the row-major index.
    """
    if dropout_p == 0.0:
        return None
    if counter is None:
        counter = philox.counters(shape, device=device)
    keep = philox.keep_mask(dropout_seed, counter, dropout_p)
    return keep.to(torch.float32) / (1.0 - dropout_p)
