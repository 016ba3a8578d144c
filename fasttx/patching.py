"""``fasttx.patch_torch()``: fasttx's attention behind ``F.scaled_dot_product_attention``,
for code that cannot be edited.

    fasttx.patch_torch()                 # from now on, until fasttx.unpatch_torch()
    with fasttx.patch_torch(): ...       # or for a block only
    with fasttx.patch_torch(backend="triton"): ...

After the patch, every call of ``torch.nn.functional.scaled_dot_product_attention`` that
looks the function up when it runs (``F.scaled_dot_product_attention(...)``, and
``torch.nn.MultiheadAttention``'s slow path) goes through :func:`fasttx.
scaled_dot_product_attention` when one of the patch's backends supports the call: CUDA
tensors with a dtype, head dims and mask kind the backend's kernels take (the Triton
backend by default; ``backend=`` names another, e.g. "triton" on CPU tensors under the
Triton interpreter, for tests). Everything else falls back to torch's own function,
unchanged: CPU tensors (torch's kernels beat fasttx's reference there), nested tensors,
arguments fasttx does not know, inputs fasttx's checks refuse. A name bound before the
patch (``from torch.nn.functional import scaled_dot_product_attention``) keeps torch's.
The default patch warns once per process when CPU tensors reach it (they run on torch).

``with`` blocks nest: each restores, at its end, the patch in effect before it (or none).
The patched function traces under ``torch.compile(fullgraph=True)`` without a graph break:
which function runs is decided while tracing and is a constant of the graph.

One difference remains: a query row that may attend to no key gives zeros with fasttx,
NaN with torch.
"""

from __future__ import annotations

import operator
import warnings

import torch
import torch.nn.functional as F

from fasttx import backends
from fasttx.ops import scaled_dot_product_attention

__all__ = ["is_torch_patched", "patch_torch", "unpatch_torch"]

_torch_sdpa = F.scaled_dot_product_attention
_patched_backends: tuple[str, ...] | None = None
_cuda_only = True  # the default patch leaves CPU tensors to torch
_warned_cpu_passthrough = False


def _fasttx_backend(query, key, value, attn_mask, extra) -> str | None:
    """The patch's first backend that supports this call, or None (torch runs it)."""
    tensors = (query, key, value) + (() if attn_mask is None else (attn_mask,))
    if extra or not all(isinstance(t, torch.Tensor) and not t.is_nested for t in tensors):
        return None
    if query.dim() < 3 or key.dim() != query.dim() or value.dim() != query.dim():
        return None
    # Head dims may arrive symbolic under torch.compile(dynamic=True); the backends' checks
    # depend on them, so operator.index makes dynamo guard on their values.
    properties = (("dtype", query.dtype), ("head_dim", operator.index(query.shape[-1])),
                  ("value_head_dim", operator.index(value.shape[-1])),
                  ("mask_dtype", None if attn_mask is None else attn_mask.dtype),
                  ("mask_needs_grad", attn_mask is not None and attn_mask.requires_grad))
    return _first_supporting_backend(_patched_backends, _cuda_only, query.device, properties)


@torch.compiler.assume_constant_result
def _first_supporting_backend(names: tuple[str, ...], cuda_only: bool, device: torch.device,
                              properties: tuple) -> str | None:
    # Runs eagerly while torch.compile traces (the backends' checks import modules, which
    # dynamo can't trace): its result is a constant of the graph, guarded by the arguments.
    if cuda_only and device.type != "cuda":
        _warn_cpu_passthrough_once(device)
        return None
    for name in names:
        if backends.unsupported_reason(name, "attention", device, **dict(properties)) is None:
            return name
    return None


def _warn_cpu_passthrough_once(device: torch.device) -> None:
    global _warned_cpu_passthrough
    if _warned_cpu_passthrough:
        return
    _warned_cpu_passthrough = True
    warnings.warn(
        f"fasttx.patch_torch(): scaled_dot_product_attention on {device} tensors runs on "
        f"torch's own function; the default patch routes only CUDA tensors to fasttx's "
        f"kernels. Pass backend= (e.g. 'reference') to run fasttx on {device} tensors. "
        f"(Warned once per process.)", UserWarning, stacklevel=5)


def _patched_sdpa(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False,
                  scale=None, enable_gqa=False, **extra):
    """``F.scaled_dot_product_attention`` while patched: fasttx where it can, else torch."""
    name = _fasttx_backend(query, key, value, attn_mask, extra)
    if name is not None:
        try:
            return scaled_dot_product_attention(query, key, value, attn_mask, dropout_p,
                                                is_causal, scale, enable_gqa, backend=name)
        except (ValueError, TypeError):  # fasttx's input checks refused it: torch decides
            pass
    return _torch_sdpa(query, key, value, attn_mask, dropout_p, is_causal, scale=scale,
                       enable_gqa=enable_gqa, **extra)


class _Patch:
    """What :func:`patch_torch` returns: ``with`` it to restore, at the block's end, the
    patch that was in effect before (``previous``: its backends and CUDA-only flag), or
    torch's own function when there was none."""

    def __init__(self, previous: tuple[tuple[str, ...], bool] | None):
        self.previous = previous

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.previous is None:
            unpatch_torch()
        else:
            _install(*self.previous)


def _install(names: tuple[str, ...], cuda_only: bool) -> None:
    global _patched_backends, _cuda_only
    _patched_backends, _cuda_only = names, cuda_only
    F.scaled_dot_product_attention = _patched_sdpa


def patch_torch(backend: str | tuple[str, ...] | None = None) -> _Patch:
    """Routes ``torch.nn.functional.scaled_dot_product_attention`` through fasttx (see the
    module docstring) until :func:`unpatch_torch`, or the end of a ``with`` block.

    Args:
        backend: the fasttx backend(s) tried in order, on any device their kernels take;
            default the fast ones of the ``auto`` order ("triton"), on CUDA tensors only.
            "reference" is allowed, for tests.

    Returns:
        A context manager whose exit restores the patch in effect before this call (blocks
        nest), or torch's function when there was none.
    """
    if backend is None:
        names = tuple(name for name in backends.AUTO_ORDER if name != "reference")
    else:
        names = (backend,) if isinstance(backend, str) else tuple(backend)
    for name in names:
        if name not in backends.BACKENDS:
            raise ValueError(f"backend must be one of {backends.BACKENDS}, got {name!r}")
    if not names:
        raise ValueError("backend must name at least one fasttx backend")
    previous = (_patched_backends, _cuda_only) if is_torch_patched() else None
    _install(names, backend is None)
    return _Patch(previous)


def unpatch_torch() -> None:
    """Puts torch's own ``scaled_dot_product_attention`` back (a no-op when unpatched),
    whatever ``with`` blocks are open: their ends then restore what was before them."""
    global _patched_backends
    F.scaled_dot_product_attention = _torch_sdpa
    _patched_backends = None


def is_torch_patched() -> bool:
    """Whether ``F.scaled_dot_product_attention`` is fasttx's patched function now."""
    return F.scaled_dot_product_attention is _patched_sdpa
