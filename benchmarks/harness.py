"""The shared benchmark harness: cases, providers, timing, memory, ceilings, result files.

Every op module (``attention``, ``add_layer_norm``, ``feed_forward``, ``model``) describes
*what* to time with the same four names, and this module does the rest the same way for
all of them:

- ``OP``; ``PROVIDERS`` (display order; fasttx's are named ``fasttx-<backend>``);
  ``CPU_PROVIDERS`` (those the CPU smoke profile runs); ``ORACLES`` (providers whose
  forward output the others are checked against: the first that runs); ``FLOORS``
  (providers that are a bound, not a peer, such as the bare matmuls); ``PLOTS`` (the
  report's :class:`Plot` list); optionally ``FASTTX_PROVIDERS`` (fasttx's own providers
  when they are not named ``fasttx-triton`` / ``fasttx-cuda``: the report's columns);
- ``cases(profile)``: the :class:`Case` list of a profile ("full", "quick", "smoke");
- ``make_inputs(case, device, seed)``: one :class:`InputSet`;
- ``provider(case, name, device)``: a :class:`Provider`, or raises :class:`Unavailable`
  (:class:`NotApplicable` for a provider of another sweep's model).

Timing follows the field: CUDA events around each call, the L2 cache flushed before each,
input sets rotated, a warm-up, then the median with the 20th and 80th percentiles of as
many calls as fit in ``rep_ms`` (``triton.testing.do_bench``'s method, written out here so
that it works the same with every Triton and without one). On CPU (the smoke profile) a
wall clock stands in and nothing it measures is a performance figure.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib.metadata
import json
import os
import platform
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch

RESULTS_DIR = Path(__file__).resolve().parent / "results"
MODES = ("fwd", "bwd", "fwd_bwd")
PROFILES = ("full", "quick", "smoke")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
#: The L2 cache is flushed before each timed call by writing this many bytes (H200: 50 MB L2).
L2_FLUSH_BYTES = 256 * 2**20


class Unavailable(Exception):
    """A provider that can't run a case here: the message says why (shown in the results)."""


class NotApplicable(Unavailable):
    """A provider that has nothing to do with the case (an op module whose sweeps time
    different models, each with its own providers): its row's note starts with "n/a:" and
    the report leaves such rows out."""


class MismatchError(AssertionError):
    """A provider's output is not what the oracle computes (see :func:`check_matches`)."""


@dataclasses.dataclass(frozen=True)
class Case:
    """One problem to time.

    Attributes:
        op: the op module's ``OP``.
        sweep: the sweep the case belongs to ("transformer-base", "long-sequence", ...).
        mode: "fwd", "bwd" (the backward alone, through a graph built untimed) or "fwd_bwd".
        dtype: "bf16", "fp16" or "fp32".
        shape: the sizes and options that define the problem (JSON values).
        flops: the work of one call by the conventions of the field (TFLOP/s), or None.
        bytes: the bytes one call must move (GB/s), or None.
        tokens: tokens one call processes (tokens/s), or None.
    """

    op: str
    sweep: str
    mode: str
    dtype: str
    shape: dict
    flops: float | None = None
    bytes: float | None = None
    tokens: int | None = None

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {tuple(DTYPES)}, got {self.dtype!r}")

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    @property
    def id(self) -> str:
        """A readable unique name: op, sweep, mode, dtype and the shape's values."""
        sizes = "-".join(f"{key}={_short(value)}" for key, value in self.shape.items())
        return f"{self.op}-{self.sweep}-{self.mode}-{self.dtype}-{sizes}"


def _short(value) -> str:
    return {True: "T", False: "F", None: "none"}.get(value, str(value)) \
        if isinstance(value, bool | None) else str(value)


@dataclasses.dataclass
class InputSet:
    """One set of an op's inputs: ``inputs`` are the op's positional arguments (tensors
    that require grad are differentiated in bwd / fwd_bwd), ``grads`` the gradients of its
    outputs, in order."""

    inputs: tuple
    grads: tuple = ()

    def differentiable(self) -> list[torch.Tensor]:
        return [t for t in self.inputs if isinstance(t, torch.Tensor) and t.requires_grad]


@dataclasses.dataclass
class Provider:
    """How one provider runs a case.

    Attributes:
        call: ``call(*input_set.inputs)`` -> the output tensor or a tuple of them.
        adapt: optional, run untimed on each input set first (a folded mask, unpadded
            sequences, ...); returns the set the provider is called with.
        restore: optional, maps the forward output back to the common layout (given the
            original input set) for the check against the oracle.
        timed: optional, replaces the generic modes: ``(prepare, timed)`` where
            ``prepare(input_set)`` returns the arguments of the timed ``timed(*arguments)``
            (a whole training step, a generation loop).
    """

    call: Callable | None = None
    adapt: Callable[[InputSet], InputSet] | None = None
    restore: Callable[[Any, InputSet], Any] | None = None
    timed: tuple[Callable, Callable] | None = None


def mode_function(call: Callable, mode: str) -> tuple[Callable, Callable]:
    """``(prepare, timed)`` for one mode: ``timed(*prepare(input_set))`` is what is timed.

    fwd: the call under ``no_grad``. fwd_bwd: the call, then ``torch.autograd.grad`` of
    its outputs for the differentiable inputs. bwd: ``prepare`` runs the forward with
    autograd (untimed); ``timed`` runs the same gradients through that graph (retained).
    """
    def outputs(out):
        return out if isinstance(out, tuple | list) else (out,)

    if mode == "fwd":
        def forward(input_set):
            with torch.no_grad():
                return call(*input_set.inputs)
        return (lambda input_set: (input_set,)), forward
    if mode == "fwd_bwd":
        def forward_backward(input_set):
            out = outputs(call(*input_set.inputs))
            return torch.autograd.grad(out, input_set.differentiable(),
                                       input_set.grads[:len(out)], allow_unused=True)
        return (lambda input_set: (input_set,)), forward_backward
    if mode == "bwd":
        def prepare(input_set):
            out = outputs(call(*input_set.inputs))
            return out, input_set.grads[:len(out)], input_set.differentiable()

        def backward(out, grads, inputs):
            return torch.autograd.grad(out, inputs, grads, retain_graph=True, allow_unused=True)
        return prepare, backward
    raise ValueError(f"mode must be one of {MODES}, got {mode!r}")


@dataclasses.dataclass(frozen=True)
class Plot:
    """One figure of the report: ``metric`` ("tflops", "gbps", "tokens_per_s") against the
    shape value ``x``, a line per provider, a panel per distinct value of ``panels`` (row
    fields such as "mode" and "dtype", or shape keys), over the cases of ``sweeps``."""

    name: str
    x: str
    metric: str
    panels: tuple[str, ...]
    sweeps: tuple[str, ...]
    log_x: bool = False

    def __post_init__(self):
        if not re.fullmatch(r"[a-z0-9-]+", self.name):  # it names the PNG the report links
            raise ValueError(f"a plot's name must be lowercase letters, digits and '-', "
                             f"got {self.name!r}")


def compiled(fn: Callable) -> Callable:
    """``torch.compile(fn, fullgraph=True, dynamic=False)`` after clearing dynamo's caches:
    every case compiles afresh (no recompile limit reached, no stale graph reused). The
    compile itself happens on the first call, in the harness's untimed warm-up."""
    torch._dynamo.reset()
    return torch.compile(fn, fullgraph=True, dynamic=False)


# ---------------------------------------------------------------------------- timing


@dataclasses.dataclass
class Timing:
    """Milliseconds per call: median, 20th and 80th percentiles over ``calls`` calls."""

    median_ms: float
    p20_ms: float
    p80_ms: float
    calls: int


def quantile(samples: Sequence[float], q: float) -> float:
    """The q-quantile of ``samples`` with linear interpolation (numpy's default)."""
    ordered = sorted(samples)
    position = q * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


class Timer:
    """Times ``fn(*arguments)`` cycling through ``argument_sets``.

    ``setup()`` flushes the L2 cache and returns the next arguments (untimed); calling the
    timer runs ``fn`` between two CUDA events (a wall clock on CPU) and keeps the pair.
    :meth:`run` is the loop; pytest-benchmark drives the same two steps with
    ``benchmark.pedantic(timer, setup=timer.setup, ...)``, so both measure the same way
    (``synchronize=True`` then waits for each call, so that its wall clock sees the GPU
    work too; the CUDA events are the same either way).
    """

    def __init__(self, fn: Callable, argument_sets: Sequence[tuple], device: str, *,
                 synchronize: bool = False):
        if not argument_sets:
            raise ValueError("argument_sets must hold at least one set of arguments")
        self.fn, self.argument_sets, self.device = fn, list(argument_sets), device
        self.synchronize = synchronize and device == "cuda"
        self._next = 0
        self._pairs: list = []
        self._flush = (torch.empty(L2_FLUSH_BYTES, dtype=torch.uint8, device=device)
                       if device == "cuda" else None)

    def setup(self) -> tuple[tuple, dict]:
        if self._flush is not None:
            self._flush.zero_()
        arguments = self.argument_sets[self._next % len(self.argument_sets)]
        self._next += 1
        return arguments, {}

    def __call__(self, *arguments):
        if self.device == "cuda":
            start, end = (torch.cuda.Event(enable_timing=True) for _ in range(2))
            start.record()
            self.fn(*arguments)
            end.record()
            if self.synchronize:
                end.synchronize()
        else:
            start = time.perf_counter()
            self.fn(*arguments)
            end = time.perf_counter()
        self._pairs.append((start, end))

    def samples_ms(self) -> list[float]:
        """Milliseconds of each call since the last :meth:`timing` or warm-up."""
        if self.device == "cuda":
            torch.cuda.synchronize()
            return [start.elapsed_time(end) for start, end in self._pairs]
        return [(end - start) * 1e3 for start, end in self._pairs]

    def warm_up(self, calls: int) -> None:
        """Runs ``calls`` untimed calls (compilation, autotuning, allocator, clocks)."""
        for _ in range(calls):
            self(*self.setup()[0])
        self.samples_ms()  # waits for them
        self._pairs.clear()

    def plan(self, warmup_ms: float, rep_ms: float, max_calls: int = 1000) -> tuple[int, int]:
        """(warm-up calls, timed calls) to fill ``warmup_ms`` and ``rep_ms``, from an
        estimate over 5 calls after a first one (do_bench's method). On CPU: 1 and 3."""
        if self.device != "cuda":
            return 1, 3
        self.warm_up(1)
        for _ in range(5):
            self(*self.setup()[0])
        estimate = max(sum(self.samples_ms()) / 5, 1e-3)
        self._pairs.clear()
        return (max(1, min(max_calls, int(warmup_ms / estimate))),
                max(5, min(max_calls, int(rep_ms / estimate))))

    def run(self, warmup: int, calls: int) -> Timing:
        self.warm_up(warmup)
        for _ in range(calls):
            self(*self.setup()[0])
        return self.timing()

    def timing(self) -> Timing:
        """The statistics of the calls since the warm-up (then forgets them)."""
        samples = self.samples_ms()
        if not samples:
            raise ValueError("no call was timed")
        self._pairs.clear()
        return Timing(quantile(samples, 0.5), quantile(samples, 0.2), quantile(samples, 0.8),
                      len(samples))


def time_ms(fn: Callable, argument_sets: Sequence[tuple], device: str, *,
            warmup_ms: float = 25, rep_ms: float = 100) -> Timing:
    """Times ``fn`` over rotating ``argument_sets`` (see :class:`Timer`)."""
    timer = Timer(fn, argument_sets, device)
    return timer.run(*timer.plan(warmup_ms, rep_ms))


def peak_memory_mb(fn: Callable, arguments: tuple, device: str) -> float | None:
    """MiB the call allocates at its peak beyond what was allocated before it (its
    workspace and outputs; the inputs are not counted). None on CPU, or when the extra
    call does not fit (its timing stands all the same)."""
    if device != "cuda":
        return None
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    try:
        fn(*arguments)
        torch.cuda.synchronize()
    except torch.cuda.OutOfMemoryError:
        return None
    return (torch.cuda.max_memory_allocated() - before) / 2**20


def ceilings(device: str) -> dict:
    """The GPU's peaks, measured in this run: an 8192^3 bf16 matmul (TFLOP/s) and a 2 GiB
    device-to-device copy (GB/s, the bytes read and written). Empty on CPU."""
    if device != "cuda":
        return {}
    factors = [tuple(torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
                     for _ in range(2))]
    matmul = time_ms(torch.matmul, factors, device, rep_ms=300)
    nbytes = 2**31
    buffers = [tuple(torch.empty(nbytes, dtype=torch.uint8, device="cuda") for _ in range(2))]
    copy = time_ms(lambda source, target: target.copy_(source), buffers, device, rep_ms=300)
    del factors, buffers
    torch.cuda.empty_cache()
    return {"bf16_matmul_tflops": round(2 * 8192**3 / matmul.median_ms / 1e9, 1),
            "copy_gbps": round(2 * nbytes / copy.median_ms / 1e6, 1)}


# ---------------------------------------------------------------------------- running


def check_matches(name: str, actual, expected, what: str = "output") -> None:
    """Raises MismatchError when a provider's output (a tensor or a tuple of them; None for
    an input without a gradient) is farther from ``expected`` than 5% (16-bit dtypes) or
    1% (wider) of max(1, |expected|): a check of gross errors before anything is timed,
    not of accuracy (the tests do that)."""
    actual = actual if isinstance(actual, tuple | list) else (actual,)
    expected = expected if isinstance(expected, tuple | list) else (expected,)
    if len(actual) != len(expected):
        raise MismatchError(f"{name} returns {len(actual)} {what}s, expected {len(expected)}")
    for index, (got, want) in enumerate(zip(actual, expected, strict=True)):
        if got is None or want is None:
            if (got is None) != (want is None):
                raise MismatchError(f"{name} {what} {index}: {got is None and 'none' or 'one'}"
                                    f" where the oracle has {want is None and 'none' or 'one'}")
            continue
        if got.shape != want.shape:
            raise MismatchError(f"{name} {what} {index}: shape {tuple(got.shape)} != "
                                f"{tuple(want.shape)}")
        tolerance = 0.05 if got.element_size() <= 2 else 0.01
        scale = max(1.0, want.detach().float().abs().max().item())
        error = (got.detach().float() - want.detach().float()).abs().max().item()
        if not error <= tolerance * scale:
            raise MismatchError(f"{name} {what} {index} differs from the oracle by "
                                f"{error:.3g} (allowed {tolerance * scale:.3g})")


class DeviceError(RuntimeError):
    """The GPU's context broke (an illegal address, a device-side assert): nothing more can
    run in this process, and the results so far are kept."""


#: The start of the note of a provider that does not apply to the case (NotApplicable).
NOT_APPLICABLE = "n/a:"


def failure_note(error: BaseException, device: str = "cpu") -> str:
    """The note of a provider that did not run or was wrong: "wrong output: ...",
    "out of memory", "n/a: <reason>" (:class:`NotApplicable`) or "skipped: <reason>".
    Raises :class:`DeviceError` instead when the error has left the GPU unusable (checked,
    not guessed from the message)."""
    if device == "cuda" and not _device_usable():
        raise DeviceError(f"the GPU is unusable after {type(error).__name__}: "
                          f"{str(error).strip()[:300]}") from error
    if isinstance(error, MismatchError):
        print(f"\nwarning: {error}; not timed", file=sys.stderr)
        return f"wrong output: {error}"
    if isinstance(error, torch.cuda.OutOfMemoryError):
        return "out of memory"
    if isinstance(error, NotApplicable):
        return f"{NOT_APPLICABLE} {error}"
    reason = (str(error).strip().splitlines() or [""])[0]
    if not isinstance(error, Unavailable) and type(error).__name__ != "BackendUnavailableError":
        reason = f"{type(error).__name__}: {reason}"
    return "skipped: " + (reason if len(reason) <= 160 else reason[:157] + "...")


def _device_usable() -> bool:
    """Whether the GPU still runs work (a broken context fails every later call)."""
    try:
        torch.cuda.synchronize()
        return torch.ones(1, device="cuda").add_(1).item() == 2
    except Exception:  # noqa: BLE001 - any failure here means a broken context
        return False
    finally:
        _free("cuda")


#: What a provider may raise instead of running becomes its row's note: refused inputs,
#: missing backends and packages, a wrong output, out of memory, a failed compile (Triton's
#: and torch.compile's errors are not all RuntimeErrors), a peer's own assertion. A broken
#: GPU is the exception (:func:`failure_note` raises DeviceError) and so is Ctrl-C.
RUN_ERRORS = (Exception,)


class Prepared:
    """A case's input sets and its oracle's results (forward output, and the gradients
    for bwd / fwd_bwd), shared by all providers of the case."""

    def __init__(self, module, case: Case, device: str, input_sets: int = 2):
        self.module, self.case, self.device = module, case, device
        self.sets = [module.make_inputs(case, device, seed) for seed in range(input_sets)]
        self.oracle, self.expected, self.expected_grads = None, None, None
        if case.shape.get("dropout", 0) == 0:  # with dropout, providers draw different masks
            for name in module.ORACLES:
                try:
                    provider = module.provider(case, name, device)
                    self.expected = self.forward(provider)
                    self.expected_grads = self.gradients(provider)
                    self.oracle = name
                    break
                except RUN_ERRORS as error:
                    failure_note(error, device)  # raises only for a broken GPU
                    self.expected = self.expected_grads = None
                finally:
                    _free(device)

    def forward(self, provider: Provider):
        """The provider's forward output on the first input set, in the common layout."""
        adapted = provider.adapt(self.sets[0]) if provider.adapt else self.sets[0]
        with torch.no_grad():
            out = provider.call(*adapted.inputs)
        return provider.restore(out, self.sets[0]) if provider.restore else out

    def gradients(self, provider: Provider) -> tuple | None:
        """The gradients of the differentiable inputs on the first input set, for a bwd or
        fwd_bwd case; None for fwd, and for providers whose inputs are laid out their own
        way (``restore``) or whose step is their own (``timed``)."""
        if self.case.mode == "fwd" or provider.restore or provider.timed or not provider.call:
            return None
        adapted = provider.adapt(self.sets[0]) if provider.adapt else self.sets[0]
        prepare, forward_backward = mode_function(provider.call, "fwd_bwd")
        return forward_backward(*prepare(adapted))


def result_row(case: Case, provider: str, timing: Timing | None = None,
               peak_mem_mb: float | None = None, ceiling: dict | None = None,
               note: str | None = None) -> dict:
    """One entry of a results file: the case, the provider, its times and rates."""
    row = {"op": case.op, "sweep": case.sweep, "mode": case.mode, "provider": provider,
           "dtype": case.dtype, "shape": dict(case.shape), "median_ms": None, "p20_ms": None,
           "p80_ms": None}
    # The rates the case counts (None when untimed); fraction_of_peak is TFLOP/s over the
    # run's bf16 matmul (whatever the dtype) or GB/s over its copy.
    rates = [("tflops", case.flops, 1e-9, "bf16_matmul_tflops"),
             ("gbps", case.bytes, 1e-6, "copy_gbps"), ("tokens_per_s", case.tokens, 1e3, None)]
    ceiling = ceiling or {}
    for key, amount, scale, peak in rates:
        if amount is None:
            continue
        rate = amount / timing.median_ms * scale if timing is not None else None
        row[key] = rate
        if peak is not None:
            row["fraction_of_peak"] = rate / ceiling[peak] \
                if rate is not None and ceiling.get(peak) else None
    if timing is not None:
        row.update(median_ms=timing.median_ms, p20_ms=timing.p20_ms, p80_ms=timing.p80_ms)
    row["peak_mem_mb"] = peak_mem_mb
    row["note"] = note
    return row


def run_provider(prepared: Prepared, name: str, ceiling: dict | None = None, *,
                 drive: Callable[[Timer, int, int], Timing] | None = None,
                 warmup_ms: float = 25, rep_ms: float = 100) -> dict:
    """Checks and times one provider on a prepared case; returns its :func:`result_row`.

    A provider that can't run, or whose forward output or gradients are not the oracle's,
    gets a row with a note and no times (floors compute something else and are not
    checked). ``drive(timer, warmup, calls)`` replaces ``timer.run`` (pytest-benchmark's
    loop). Raises :class:`DeviceError` when the provider broke the GPU.
    """
    case, device = prepared.case, prepared.device
    try:
        provider = prepared.module.provider(case, name, device)
        sets = [provider.adapt(s) for s in prepared.sets] if provider.adapt else prepared.sets
        checked = name != prepared.oracle and name not in prepared.module.FLOORS
        if prepared.expected is not None and checked and provider.call is not None:
            check_matches(name, prepared.forward(provider), prepared.expected)
            grads = prepared.gradients(provider)
            if grads is not None and prepared.expected_grads is not None:
                check_matches(name, grads, prepared.expected_grads, "gradient")
        prepare, timed = provider.timed or mode_function(provider.call, case.mode)
        argument_sets = [prepare(s) for s in sets]
        timer = Timer(timed, argument_sets, device)
        warmup, calls = timer.plan(warmup_ms, rep_ms)
        timing = drive(timer, warmup, calls) if drive else timer.run(warmup, calls)
        memory = peak_memory_mb(timed, argument_sets[0], device)
        return result_row(case, name, timing, memory, ceiling)
    except RUN_ERRORS as error:
        return result_row(case, name, note=failure_note(error, device))
    finally:
        _free(device)


def _free(device: str) -> None:
    if device == "cuda":
        torch.cuda.empty_cache()


# ---------------------------------------------------------------------------- environment


def start(device: str) -> None:
    """Checks that ``device`` can run the suite, and on CPU makes the Triton kernels run
    under the interpreter (before fasttx's first Triton launch; unless the variable is
    already set: a GPU machine's test session keeps it off for its GPU tests)."""
    if device == "cuda" and not torch.cuda.is_available():
        sys.exit("no CUDA GPU: run with --device cpu (the smoke profile) to check the suite")
    if device == "cpu":
        os.environ.setdefault("TRITON_INTERPRET", "1")


def providers_for(module, device: str) -> tuple[str, ...]:
    """The op's providers that can run on ``device`` here: all of them on a GPU; on CPU
    its CPU_PROVIDERS, fasttx-triton only under the Triton interpreter."""
    if device == "cuda":
        return module.PROVIDERS
    interpreted = os.environ.get("TRITON_INTERPRET") == "1"
    return tuple(name for name in module.CPU_PROVIDERS
                 if name != "fasttx-triton" or interpreted)


def environment(device: str, profile: str) -> dict:
    """The date, commit, machine and library versions of this run."""
    import fasttx
    info = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        # a copy without .git (a borrowed GPU machine's) is told its commit by FASTTX_COMMIT
        "commit": _git("rev-parse", "HEAD") or os.environ.get("FASTTX_COMMIT"),
        "dirty": _dirty(),
        "profile": profile,
        "device": device,
        "gpu": None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "triton": _version("triton"),
        "flash_attn": _version("flash_attn", "flash-attn"),
        "flash_attn_3": _version("flash_attn_3", "flash-attn-3"),
        "fasttx": fasttx.__version__,
        "fasttx_backends": {name: bool(ok) for name, ok in
                            fasttx.available_backends().items()},
    }
    if device == "cuda":
        properties = torch.cuda.get_device_properties(0)
        info.update(gpu=properties.name, capability=f"{properties.major}.{properties.minor}",
                    gpu_memory_gib=round(properties.total_memory / 2**30, 1),
                    cudnn=torch.backends.cudnn.version(),
                    float32_matmul_precision=torch.get_float32_matmul_precision())
    return info


def _version(*distributions: str) -> str | None:
    """The installed version of the first of ``distributions`` found (read from its
    metadata, not imported: a broken build must not stop the run), or None."""
    for name in distributions:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def _dirty() -> bool | None:
    """Whether tracked files differ from the commit; None where git can't tell."""
    status = _git("status", "--porcelain", "--untracked-files=no")
    return None if status is None else bool(status)


def _git(*args: str) -> str | None:
    try:
        return subprocess.run(["git", *args], capture_output=True, text=True, check=True,
                              cwd=Path(__file__).parent).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def results_dir(env: dict) -> Path:
    """``benchmarks/results/<gpu>/``, or ``benchmarks/results/cpu/`` (not committed)."""
    return RESULTS_DIR / slug(env.get("gpu") or "cpu")


def suite_name(op: str, profile: str) -> str:
    """The results file's stem: the op for the full profile, ``<op>-<profile>`` else."""
    return op if profile == "full" else f"{op}-{profile}"


def write_results(path: Path, env: dict, ceiling: dict, rows: list[dict]) -> Path:
    """Writes ``{"env": {...}, "results": [...]}`` to ``path`` (the ceilings in env),
    atomically: a run killed while writing leaves the previous file whole."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps({"env": {**env, "ceilings": ceiling}, "results": rows},
                                  indent=1) + "\n")
    os.replace(partial, path)
    return path


def row_key(row: dict) -> tuple:
    """What identifies a result: its case and provider."""
    return (row["sweep"], row["mode"], row["dtype"], json.dumps(row["shape"], sort_keys=True),
            row["provider"])


def kept_rows(path: Path, env: dict) -> list[dict]:
    """The rows of an earlier results file at ``path`` that a new run adds to: those of the
    same GPU, profile and commit (a run split by op, sweep or provider builds one file);
    none when the file is absent, unreadable or from another GPU, profile or commit."""
    try:
        previous = load_results(path)
    except ValueError:
        return []
    same = all(previous["env"].get(key) == env.get(key) for key in ("gpu", "profile", "commit"))
    return previous["results"] if same and env.get("commit") else []


def merge_rows(kept: list[dict], new: list[dict]) -> list[dict]:
    """``kept`` without the results ``new`` measures again, then ``new``."""
    remeasured = {row_key(row) for row in new}
    return [row for row in kept if row_key(row) not in remeasured] + new


def load_results(path: Path) -> dict:
    """Reads a results file, with a clear error when it is not one."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: not a readable results file ({error})") from None
    if not isinstance(data, dict) or not isinstance(data.get("env"), dict) \
            or not isinstance(data.get("results"), list):
        raise ValueError(f"{path}: a results file holds {{'env': {{...}}, 'results': [...]}}")
    return data


# ---------------------------------------------------------------------------- CLI helpers


def progress(items: Iterable, total: int, label: str):
    """Yields ``items`` while printing a one-line progress bar to stderr (a line per item
    where stderr is not a terminal, so that a log's tail shows how far a run got)."""
    width = 30
    if not sys.stderr.isatty():
        for done, item in enumerate(items):
            print(f"{label} {done + 1}/{total}: {getattr(item, 'id', item)}", file=sys.stderr,
                  flush=True)
            yield item
        return
    for done, item in enumerate(items):
        filled = width * done // max(total, 1)
        print(f"\r{label} [{'#' * filled}{'.' * (width - filled)}] {done}/{total}", end="",
              file=sys.stderr, flush=True)
        yield item
    print(f"\r{label} [{'#' * width}] {total}/{total}", file=sys.stderr, flush=True)


def choice_list(choices: Iterable[str]) -> Callable[[str], list[str]]:
    """An argparse type: a comma-separated list of names out of ``choices``."""
    choices = tuple(choices)

    def parse(text: str) -> list[str]:
        for item in text.split(","):
            if item not in choices:
                raise argparse.ArgumentTypeError(
                    f"{item!r} is not one of {', '.join(choices)}")
        return text.split(",")
    return parse
