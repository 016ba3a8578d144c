"""Add + LayerNorm: ``s = residual + dropout(x)``, ``y = layer_norm(s) * weight + bias``.

What is timed: one call of the op on x (rows, hidden) in the case's dtype, the residual
(rows, hidden) in ``residual_dtype`` (fp32 where pre-norm stacks keep the stream wide),
weight and bias (hidden,) in x's dtype; eps is fixed at :data:`EPS`. With
``return_residual`` the op also returns s (pre-norm stacks need it) and the backward
takes its gradient too. Modes are the harness's: fwd, bwd (the gradients of x, residual,
weight and bias through a graph built untimed), fwd_bwd.

Providers:

- ``fasttx-triton``, ``fasttx-cuda``, ``fasttx-reference``:
  ``fasttx.add_layer_norm(x, residual, weight, bias, EPS, dropout_p=, return_residual=,
  backend=)``;
- ``eager``: ``s = residual + F.dropout(x, p)``, then ``F.layer_norm`` in s's dtype, y
  cast to x's dtype;
- ``compiled``: ``torch.compile(eager, fullgraph=True, dynamic=False)``, compiled afresh
  for each case.

Every provider's forward is checked against ``fasttx-reference`` (else ``eager``) when
dropout is 0. There is no floor: the run's copy ceiling (``harness.ceilings``) gives every
GB/s figure its fraction of peak.

Sweeps (profile "full"; bf16 unless said):

- ``transformer``: the Transformer's base and big layers, hidden 512 and 1024 at 25,000
  rows (a batch of 25k tokens); post-norm (s not returned, residual in x's dtype) and
  pre-norm (s returned, residual in fp32); dropout 0 and 0.1;
- ``hidden-size``: hidden 512 ... 65536, each with the fewest rows for which x holds at
  least 64 MiB (memory-bound, not served from L2); dropout 0; bf16 and fp32 x, residual
  as x; post-norm.

All in fwd, bwd and fwd_bwd. "quick": hidden 1024 and 8192 of hidden-size (bf16) and the
big pre-norm training case (dropout 0.1, fwd_bwd). "smoke": fp32, 8 rows, hidden 16 and 48.

Bytes (-> GB/s): what the op must move, whatever a provider actually moves
(:func:`forward_bytes`, :func:`backward_bytes`, :func:`moved_bytes`). With e_x the element
size of x (and y, weight, bias and their gradients), e_s that of the residual stream
(residual, s and their gradients), N rows, D = hidden and fp32 row statistics:

- fwd reads x, residual, weight, bias and writes y, and s when returned;
- bwd reads dy, ds (when s is returned), the saved s, weight, mean and rstd and writes
  dx, dresidual, dweight, dbias;
- fwd_bwd is a backward plus a forward that also writes what the backward reads (s once,
  returned or not, and mean and rstd: 2 * N * 4 bytes).

Not counted: a dropout mask (fasttx regenerates it from a Philox seed; eager's stored mask
is eager's cost) and partial dweight/dbias sums.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from benchmarks import harness

OP = "add_layer_norm"
PROVIDERS = ("fasttx-triton", "fasttx-cuda", "fasttx-reference", "eager", "compiled")
CPU_PROVIDERS = ("fasttx-triton", "fasttx-reference", "eager")
ORACLES = ("fasttx-reference", "eager")
FLOORS = ()
PLOTS = [
    harness.Plot("hidden-size", x="hidden", metric="gbps", panels=("mode", "dtype"),
                 sweeps=("hidden-size",), log_x=True),
    harness.Plot("transformer", x="hidden", metric="gbps",
                 panels=("mode", "return_residual", "dropout"), sweeps=("transformer",),
                 log_x=True),
]

EPS = 1e-5
TRANSFORMER_HIDDEN = (512, 1024)  # base, big
TRANSFORMER_ROWS = 25_000  # tokens per batch
HIDDEN_SIZES = (512, 768, 1024, 2048, 4096, 8192, 16384, 65536)
ACTIVATION_MIB = 64  # x's size in the hidden-size sweep
QUICK_HIDDEN = (1024, 8192)
SMOKE_ROWS = 8
#: (mode, hidden, return_residual, dropout) of the smoke profile's fp32 cases.
SMOKE = (("fwd", 16, True, 0.0), ("bwd", 48, False, 0.0), ("fwd_bwd", 48, True, 0.1))


# ---------------------------------------------------------------------------- bytes


def _stats_size(dtype: torch.dtype) -> int:
    """Bytes of one row statistic (mean or rstd): fp32, fp64 for fp64 inputs."""
    return torch.promote_types(dtype, torch.float32).itemsize


def forward_bytes(rows: int, hidden: int, dtype: torch.dtype, residual_dtype: torch.dtype,
                  *, return_residual: bool, saves_for_backward: bool = False) -> int:
    """Bytes a forward must move.

    It reads x (``dtype``), the residual (``residual_dtype``), weight and bias (``dtype``,
    (D,) each) and writes y (``dtype``), and s (``residual_dtype``) when it is returned.
    A forward that autograd will differentiate (``saves_for_backward``) also writes what
    the backward reads: s, if not returned anyway, and the row mean and rstd (N each).
    """
    elements = rows * hidden
    moved = elements * (2 * dtype.itemsize + residual_dtype.itemsize) + 2 * hidden * dtype.itemsize
    if return_residual or saves_for_backward:
        moved += elements * residual_dtype.itemsize
    if saves_for_backward:
        moved += 2 * rows * _stats_size(dtype)
    return moved


def backward_bytes(rows: int, hidden: int, dtype: torch.dtype, residual_dtype: torch.dtype,
                   *, return_residual: bool) -> int:
    """Bytes a backward must move.

    It reads dy (``dtype``), ds (``residual_dtype``) when s was returned, the saved s
    (``residual_dtype``), weight (``dtype``) and the row mean and rstd (N each), and writes
    dx (``dtype``), dresidual (``residual_dtype``), dweight and dbias (``dtype``).
    """
    elements = rows * hidden
    stream = elements * residual_dtype.itemsize
    reads = elements * dtype.itemsize + stream * (2 if return_residual else 1)
    reads += hidden * dtype.itemsize + 2 * rows * _stats_size(dtype)
    writes = elements * dtype.itemsize + stream + 2 * hidden * dtype.itemsize
    return reads + writes


def moved_bytes(mode: str, rows: int, hidden: int, dtype: torch.dtype,
                residual_dtype: torch.dtype, *, return_residual: bool) -> int:
    """The bytes one call in ``mode`` must move; fwd_bwd is a saving forward + a backward."""
    sizes = (rows, hidden, dtype, residual_dtype)
    if mode == "fwd":
        return forward_bytes(*sizes, return_residual=return_residual)
    backward = backward_bytes(*sizes, return_residual=return_residual)
    if mode == "bwd":
        return backward
    if mode == "fwd_bwd":
        return backward + forward_bytes(*sizes, return_residual=return_residual,
                                        saves_for_backward=True)
    raise ValueError(f"mode must be one of {harness.MODES}, got {mode!r}")


def rows_for(hidden: int, dtype: str, mib: float = ACTIVATION_MIB) -> int:
    """The fewest rows for which x (rows, hidden) in ``dtype`` holds at least ``mib`` MiB."""
    return math.ceil(mib * 2**20 / (hidden * harness.DTYPES[dtype].itemsize))


# ---------------------------------------------------------------------------- cases


def make_case(sweep: str, mode: str, dtype: str, rows: int, hidden: int, *,
              residual_dtype: str | None = None, return_residual: bool = False,
              dropout: float = 0.0) -> harness.Case:
    """One case; the residual stream is in x's dtype unless ``residual_dtype`` is given."""
    residual_dtype = residual_dtype or dtype
    shape = dict(rows=rows, hidden=hidden, residual_dtype=residual_dtype,
                 return_residual=return_residual, dropout=dropout)
    return harness.Case(OP, sweep, mode, dtype, shape, bytes=moved_bytes(
        mode, rows, hidden, harness.DTYPES[dtype], harness.DTYPES[residual_dtype],
        return_residual=return_residual))


def _transformer() -> list[harness.Case]:
    """Post-norm (residual as x) and pre-norm (s returned, fp32 stream) base/big layers."""
    return [make_case("transformer", mode, "bf16", TRANSFORMER_ROWS, hidden,
                      residual_dtype="fp32" if pre_norm else "bf16",
                      return_residual=pre_norm, dropout=dropout)
            for hidden in TRANSFORMER_HIDDEN for pre_norm in (False, True)
            for dropout in (0.0, 0.1) for mode in harness.MODES]


def _hidden_size() -> list[harness.Case]:
    return [make_case("hidden-size", mode, dtype, rows_for(hidden, dtype), hidden)
            for dtype in ("bf16", "fp32") for hidden in HIDDEN_SIZES for mode in harness.MODES]


def _quick(case: harness.Case) -> bool:
    """Whether a full case is in the quick profile."""
    if case.sweep == "hidden-size":
        return case.dtype == "bf16" and case.shape["hidden"] in QUICK_HIDDEN
    return (case.shape["hidden"] == TRANSFORMER_HIDDEN[-1] and case.shape["return_residual"]
            and case.shape["dropout"] > 0 and case.mode == "fwd_bwd")


def cases(profile: str) -> list[harness.Case]:
    """The cases of ``profile``: "full", "quick" (a subset of full) or "smoke"."""
    full = _transformer() + _hidden_size()
    if profile == "full":
        return full
    if profile == "quick":
        return [case for case in full if _quick(case)]
    if profile == "smoke":
        return [make_case("smoke", mode, "fp32", SMOKE_ROWS, hidden,
                          return_residual=return_residual, dropout=dropout)
                for mode, hidden, return_residual, dropout in SMOKE]
    raise ValueError(f"profile must be one of {harness.PROFILES}, got {profile!r}")


# ---------------------------------------------------------------------------- inputs, providers


def make_inputs(case: harness.Case, device: str, seed: int) -> harness.InputSet:
    """inputs: x (rows, hidden), residual (rows, hidden), weight, bias (hidden,), all
    differentiated; grads: dy (rows, hidden) in x's dtype and, when s is returned, ds
    (rows, hidden) in the residual's dtype."""
    rows, hidden = case.shape["rows"], case.shape["hidden"]
    dtype, residual_dtype = case.torch_dtype, harness.DTYPES[case.shape["residual_dtype"]]
    generator = torch.Generator(device="cpu").manual_seed(seed)

    def draw(*size, dtype, scale=1.0, shift=0.0, grad=True):
        values = torch.randn(*size, generator=generator) * scale + shift
        return values.to(device, dtype).requires_grad_(grad)

    inputs = (draw(rows, hidden, dtype=dtype), draw(rows, hidden, dtype=residual_dtype),
              draw(hidden, dtype=dtype, scale=0.1, shift=1.0), draw(hidden, dtype=dtype, scale=0.1))
    grads = (draw(rows, hidden, dtype=dtype, grad=False),)
    if case.shape["return_residual"]:
        grads += (draw(rows, hidden, dtype=residual_dtype, grad=False),)
    return harness.InputSet(inputs, grads)


def fasttx_call(backend: str, *, dropout_p: float, return_residual: bool):
    """fn(x, residual, weight, bias) -> y, or (y, s), by ``fasttx.add_layer_norm``."""
    def fused(x, residual, weight, bias):
        import fasttx  # here, not on import: fasttx imports triton.language, which on
        # CPU must come after harness.start has switched the interpreter on
        return fasttx.add_layer_norm(x, residual, weight, bias, EPS, dropout_p=dropout_p,
                                     return_residual=return_residual, backend=backend)
    return fused


def eager_call(*, dropout_p: float, return_residual: bool):
    """fn(x, residual, weight, bias) -> y, or (y, s), in plain PyTorch."""
    def eager(x, residual, weight, bias):
        s = residual + F.dropout(x, dropout_p)  # (rows, hidden), the wider of the two dtypes
        # a wider residual stream makes s wider: y is normalised in s's dtype, returned in x's
        y = F.layer_norm(s, s.shape[-1:], weight.to(s.dtype), bias.to(s.dtype), EPS)
        return (y.to(x.dtype), s) if return_residual else y.to(x.dtype)
    return eager


def provider(case: harness.Case, name: str, device: str) -> harness.Provider:
    """How ``name`` runs ``case`` (all take the op's inputs as they are)."""
    options = dict(dropout_p=case.shape["dropout"], return_residual=case.shape["return_residual"])
    if name.startswith("fasttx-"):
        return harness.Provider(call=fasttx_call(name.removeprefix("fasttx-"), **options))
    if name == "eager":
        return harness.Provider(call=eager_call(**options))
    if name == "compiled":
        return harness.Provider(call=harness.compiled(eager_call(**options)))
    raise LookupError(f"{name!r} is not one of {OP}'s providers {PROVIDERS}")
