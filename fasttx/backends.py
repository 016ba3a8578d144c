"""Backend registry and selection.

A *backend* is a package with one module per op (``attention``, ``varlen_attention``,
``add_layer_norm``, ``feed_forward``), each exposing ``<op>_forward`` and
``<op>_backward`` with the same arguments in every backend:

    fasttx.reference   plain PyTorch, the oracle; runs anywhere
    fasttx.triton      Triton kernels (CUDA tensors; CPU tensors under TRITON_INTERPRET=1)
    fasttx.cuda        CUDA C++ kernels from the compiled extension fasttx._C

An op module may also define ``unsupported_reason(**properties) -> str | None`` to
refuse inputs it can't serve (a head dim, a dtype; the inputs' ``device`` is among the
properties). ``auto`` picks the first backend in
``AUTO_ORDER`` that can serve the inputs; an explicitly named backend never falls back:
it raises :class:`BackendUnavailableError` naming what it can't serve.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import operator
import os
from collections.abc import Iterator
from types import ModuleType

import torch

__all__ = [
    "BACKENDS",
    "BackendAvailability",
    "BackendUnavailableError",
    "CPU_TIMINGS_CAVEAT",
    "available_backends",
    "current_backend",
    "record_selections",
    "select_backend",
    "use_backend",
]

BACKENDS = ("reference", "triton", "cuda")
# The CUDA kernels join `auto` ahead of Triton once a GPU run has verified and timed them;
# until then they run only when asked for by name (backend="cuda").
AUTO_ORDER = ("triton", "reference")
_PACKAGES = {"reference": "fasttx.reference", "triton": "fasttx.triton", "cuda": "fasttx.cuda"}

_active_backend = "auto"
# Input properties that are already constants; any other property is a size (an int).
_CONSTANT_TYPES = (bool, str, torch.dtype, type(None))
_recorded: dict[str, str] | None = None
#: The label of every timing taken on CPU (the benchmark suite's smoke profile, its plots,
#: ``fasttx-train --compare-backends``): there the Triton kernels run in Python under the
#: interpreter, so a CPU speedup says nothing about a GPU. Defined once, worded the same.
CPU_TIMINGS_CAVEAT = ("not a performance figure: timed on CPU, where the Triton kernels run "
                      "under Triton's interpreter")


class BackendUnavailableError(RuntimeError):
    """An explicitly requested backend can't run on this machine or for these inputs."""


def _triton_interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@functools.cache
def _backend_reason(name: str) -> str | None:
    """Why the backend can't run at all on this machine, or None when it can."""
    if name == "reference":
        return None
    if name == "triton":
        try:
            import triton  # noqa: F401
        except ImportError as error:
            return f"triton is not importable ({error})"
        if not torch.cuda.is_available() and not _triton_interpreting():
            return "no CUDA device, and TRITON_INTERPRET=1 is not set for the CPU interpreter"
    if name == "cuda":
        from fasttx.cuda._extension import load_error

        reason = load_error()
        if reason is not None:
            return reason
        if not torch.cuda.is_available():
            return "no CUDA device is available"
    try:
        importlib.import_module(_PACKAGES[name])
    except ImportError as error:
        return f"the fasttx {name} backend package does not import ({error})"
    return None


@functools.cache
def _op_module(name: str, op: str) -> ModuleType | str:
    """The backend's module for ``op``, or the reason it has none."""
    module_name = f"{_PACKAGES[name]}.{op}"
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name not in (module_name, _PACKAGES[name]):  # it exists, needs something else
            return f"the {name} backend's {op} kernels do not import ({error})"
        return f"the {name} backend has no kernel for {op} in this version of fasttx"


def _device_reason(name: str, device: torch.device) -> str | None:
    if name == "reference":
        return None
    if device.type == "cuda":
        return None
    if name == "triton" and device.type == "cpu" and _triton_interpreting():
        return None
    hint = " (CPU tensors run on it only under TRITON_INTERPRET=1)" if name == "triton" else ""
    return f"the {name} backend needs CUDA tensors, got tensors on {device}{hint}"


def unsupported_reason(name: str, op: str, device: torch.device, **properties) -> str | None:
    """Why backend ``name`` can't run ``op`` on these inputs, or None when it can."""
    reason = _backend_reason(name) or _device_reason(name, device)
    if reason is not None:
        return reason
    module = _op_module(name, op)
    if isinstance(module, str):
        return module
    check = getattr(module, "unsupported_reason", None)
    return check(device=device, **properties) if check is not None else None


def select_backend(op: str, device: torch.device, requested: str | None, **properties) -> str:
    """Resolves ``requested`` (None means the active one) to a backend name for ``op``.

    ``properties`` describe the inputs (dtype, head_dim, ...) for the backends' checks.
    Reading the active backend here (in traced code) makes torch.compile guard on it.
    """
    name = _active_backend if requested is None else requested
    # Under torch.compile with dynamic shapes, sizes arrive symbolic: the choice of kernel
    # may depend on them (a head dim), so the graph specialises on their values
    # (operator.index makes dynamo guard on the value; int() would keep it symbolic).
    concrete = tuple((key, value if isinstance(value, _CONSTANT_TYPES) else operator.index(value))
                     for key, value in properties.items())
    chosen = _resolve(op, device, name, concrete)
    if _recorded is not None:
        _recorded[op] = chosen
    return chosen


@torch.compiler.assume_constant_result
def _resolve(op: str, device: torch.device, name: str, properties: tuple) -> str:
    # Run eagerly while torch.compile traces (it imports backend modules): its result
    # is a constant string for the graph.
    properties = dict(properties)
    if name not in BACKENDS and name != "auto":
        raise ValueError(f"backend must be one of {('auto',) + BACKENDS}, got {name!r}")
    if name != "auto":
        reason = unsupported_reason(name, op, device, **properties)
        if reason is not None:
            raise BackendUnavailableError(f"backend={name!r} can't run {op}: {reason}")
        return name
    # On CPU tensors auto always means the reference: the Triton interpreter is a
    # testing tool, not a fast path.
    candidates = AUTO_ORDER if device.type == "cuda" else ("reference",)
    for candidate in candidates:
        if unsupported_reason(candidate, op, device, **properties) is None:
            return candidate
    raise BackendUnavailableError(f"no backend can run {op} on {device}")  # pragma: no cover


def op_module(name: str, op: str) -> ModuleType:
    """The module implementing ``op`` in backend ``name`` (already selected)."""
    module = _op_module(name, op)
    if isinstance(module, str):
        raise BackendUnavailableError(module)
    return module


class BackendAvailability(dict):
    """``{name: bool}`` with ``.reasons``: why each unavailable backend is unavailable."""

    def __init__(self, reasons: dict[str, str | None]):
        super().__init__({name: reason is None for name, reason in reasons.items()})
        self.reasons = {name: reason for name, reason in reasons.items() if reason is not None}

    def __repr__(self) -> str:
        lines = [f"  {name!r}: {'True' if ok else 'False  # ' + self.reasons[name]}"
                 for name, ok in self.items()]
        return "{\n" + ",\n".join(lines) + "\n}"


def available_backends() -> BackendAvailability:
    """Which backends can run on this machine: ``{"reference": True, "cuda": False, ...}``.

    The result's ``.reasons`` maps each unavailable backend to why (and its repr shows it).
    """
    return BackendAvailability({name: _backend_reason(name) for name in BACKENDS})


def current_backend() -> str:
    """The backend that ops use when called without ``backend=``."""
    return _active_backend


@contextlib.contextmanager
def record_selections() -> Iterator[dict[str, str]]:
    """Records which backend each op ran on inside the block: ``{op: backend}`` (the last).

        with fasttx.backends.record_selections() as used:
            model(src, tgt)
        print(used)   # {"attention": "triton", "add_layer_norm": "triton", ...}
    """
    global _recorded
    previous, _recorded = _recorded, {}
    try:
        yield _recorded
    finally:
        _recorded = previous


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Makes ``name`` ("reference", "triton", "cuda" or "auto") the default inside the block.

    An explicit ``backend=`` argument to an op still wins. The setting is process-wide
    (like ``torch.backends`` flags), not per thread; compiled functions guard on it and
    recompile when it changes.
    """
    global _active_backend
    if name not in BACKENDS and name != "auto":
        raise ValueError(f"backend must be one of {('auto',) + BACKENDS}, got {name!r}")
    previous, _active_backend = _active_backend, name
    try:
        yield
    finally:
        _active_backend = previous
