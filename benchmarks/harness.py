"""The shared benchmark harness: timing, the run's environment, ceilings, result files.

Timing follows the field's conventions: ``triton.testing.do_bench`` (the
median of many runs after a warm-up) on a GPU, cycling through several input sets so the
L2 cache does not flatter small problems. On CPU (``--device cpu``, a smoke test of the
scripts under the Triton interpreter) a plain wall-clock median stands in.

Every result file records the date, the commit, the GPU and the library versions, and the
ceilings measured in the same run (a large bf16 matmul, a large copy), so that a figure is
never separated from what it was measured on.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import itertools
import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import torch

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def start(device: str) -> dict:
    """Checks that ``device`` can run the benchmark (exits with a message when there is no
    GPU), makes the Triton kernels run under the interpreter on CPU (before fasttx's first
    Triton launch), and returns :func:`environment`."""
    if device == "cuda" and not torch.cuda.is_available():
        sys.exit("no CUDA GPU: run with --device cpu --smoke to check the script")
    if device == "cpu":
        os.environ.setdefault("TRITON_INTERPRET", "1")
    return environment(device)


def environment(device: str) -> dict:
    """The date, commit, machine and library versions of this run."""
    info = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "commit": _git("rev-parse", "HEAD"),
        "dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "device": device,
    }
    try:
        import triton
        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    if device == "cuda":
        properties = torch.cuda.get_device_properties(0)
        info.update(gpu=properties.name, capability=f"{properties.major}.{properties.minor}",
                    gpu_memory_gib=round(properties.total_memory / 2**30, 1),
                    cudnn=torch.backends.cudnn.version())
    else:
        info["gpu"] = None
    return info


def _git(*args: str) -> str | None:
    try:
        return subprocess.run(["git", *args], capture_output=True, text=True, check=True,
                              cwd=Path(__file__).parent).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def time_ms(fn: Callable, input_sets: Sequence[tuple], device: str, *, warmup_ms: int = 25,
            rep_ms: int = 100) -> float:
    """Median milliseconds of ``fn(*inputs)``, cycling through ``input_sets``."""
    cycle = itertools.cycle(input_sets)

    def call():
        return fn(*next(cycle))

    if device == "cuda":
        import triton.testing
        return float(triton.testing.do_bench(call, warmup=warmup_ms, rep=rep_ms,
                                             return_mode="median"))
    call()  # warm-up (compiles, allocates)
    samples = []
    for _ in range(3):
        start = time.perf_counter()
        call()
        samples.append((time.perf_counter() - start) * 1e3)
    return statistics.median(samples)


def copy_ms(nbytes: int, device: str, *, copies: int = 1) -> float:
    """Median milliseconds of a same-device copy of ``nbytes`` bytes (a memcpy: it reads and
    writes them, so ``2 * nbytes`` move), cycling through ``copies`` source/target pairs
    as :func:`time_ms` cycles through input sets."""
    pairs = [(torch.empty(nbytes, dtype=torch.uint8, device=device),
              torch.empty(nbytes, dtype=torch.uint8, device=device)) for _ in range(copies)]
    return time_ms(lambda source, target: target.copy_(source), pairs, device)


def gb_per_s(nbytes: float, ms: float) -> float:
    """Bytes moved in ``ms`` milliseconds, as GB/s (10^9 bytes per second)."""
    return nbytes / ms / 1e6


def ceilings(device: str) -> dict:
    """Peaks measured in this run: an 8192^3 bf16 matmul (TFLOP/s), a 2 GiB copy (TB/s)."""
    if device != "cuda":
        return {}
    a, b = (torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    matmul_ms = time_ms(torch.matmul, [(a, b)], device)
    copy_bytes = 2**31  # 2 GiB, read and written
    copy_tb_per_s = gb_per_s(2 * copy_bytes, copy_ms(copy_bytes, device)) / 1e3
    return {"bf16_matmul_tflops": round(2 * 8192**3 / matmul_ms / 1e9, 1),
            "copy_tb_per_s": round(copy_tb_per_s, 2)}


def progress(items: Iterable, total: int, label: str):
    """Yields ``items`` while printing a one-line progress bar to stderr."""
    width = 30
    for done, item in enumerate(items):
        filled = width * done // max(total, 1)
        print(f"\r{label} [{'#' * filled}{'.' * (width - filled)}] {done}/{total}", end="",
              file=sys.stderr, flush=True)
        yield item
    print(f"\r{label} [{'#' * width}] {total}/{total}", file=sys.stderr, flush=True)


class MismatchError(AssertionError):
    """A provider's output is not what the reference computes (see :func:`check_matches`)."""


def check_matches(name: str, actual, expected) -> None:
    """Raises MismatchError when a provider's output (a tensor or a tuple of them) is
    farther from ``expected`` than 5% (16-bit dtypes) or 1% (wider) of max(1, |expected|):
    a check of gross errors before anything is timed, not of accuracy."""
    actual = actual if isinstance(actual, tuple | list) else (actual,)
    expected = expected if isinstance(expected, tuple | list) else (expected,)
    if len(actual) != len(expected):
        raise MismatchError(f"{name} returns {len(actual)} outputs, expected {len(expected)}")
    for index, (got, want) in enumerate(zip(actual, expected, strict=True)):
        if got.shape != want.shape:
            raise MismatchError(f"{name} output {index}: shape {tuple(got.shape)} != "
                                f"{tuple(want.shape)}")
        tolerance = 0.05 if got.element_size() <= 2 else 0.01
        scale = max(1.0, want.detach().float().abs().max().item())
        error = (got.detach().float() - want.detach().float()).abs().max().item()
        if not error <= tolerance * scale:
            raise MismatchError(f"{name} output {index} differs from the reference by "
                                f"{error:.3g} (allowed {tolerance * scale:.3g})")


def failure_note(error: Exception) -> str:
    """The table note for a provider that could not run or was wrong: "out of memory",
    "wrong output: ..." (a :class:`MismatchError`, also printed to stderr: nothing is
    timed), or "skipped: " and the reason (a backend fasttx can't run here, a failed
    torch.compile, ...)."""
    if isinstance(error, MismatchError):
        print(f"\nwarning: {error}; not timed", file=sys.stderr)
        return f"wrong output: {error}"
    if isinstance(error, torch.cuda.OutOfMemoryError):
        torch.cuda.empty_cache()
        return "out of memory"
    reason = (str(error).strip().splitlines() or [""])[0]
    if type(error).__name__ != "BackendUnavailableError":
        reason = f"{type(error).__name__}: {reason}"
    return "skipped: " + (reason if len(reason) <= 160 else reason[:157] + "...")


def int_list(text: str) -> list[int]:
    """An argparse type: comma-separated positive integers ("512,1024")."""
    try:
        values = [int(item) for item in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a comma-separated list of integers") from None
    if any(value <= 0 for value in values):
        raise argparse.ArgumentTypeError(f"{text!r}: every value must be positive")
    return values


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


@dataclasses.dataclass
class Table:
    """Rows of results with fixed columns, written as JSON + Markdown (+ a PNG plot)."""

    columns: list[str]
    rows: list[dict] = dataclasses.field(default_factory=list)

    def add(self, **row) -> None:
        self.rows.append({column: row.get(column) for column in self.columns})

    def markdown(self) -> str:
        lines = ["| " + " | ".join(self.columns) + " |",
                 "|" + "|".join("---" for _ in self.columns) + "|"]
        for row in self.rows:
            lines.append("| " + " | ".join(_cell(row[c]) for c in self.columns) + " |")
        return "\n".join(lines)


def _cell(value) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def plot_panels(table: Table, path: Path, *, panel_by: Sequence[str], x: str, y: str,
                series: str, ylabel: str) -> None:
    """Plots ``y`` against ``x`` (evenly spaced, labelled by value, in the run's order), one
    line per ``series`` value, one panel per distinct value of the ``panel_by`` columns."""
    import matplotlib.pyplot as plt
    rows = [row for row in table.rows if row[y] is not None]
    panels = list(dict.fromkeys(tuple(row[c] for c in panel_by) for row in rows))
    if not panels:
        return
    positions = {value: i for i, value in enumerate(dict.fromkeys(row[x] for row in rows))}
    columns = min(4, len(panels))
    lines = math.ceil(len(panels) / columns)
    figure, axes = plt.subplots(lines, columns, squeeze=False,
                                figsize=(4.2 * columns, 3.4 * lines))
    for axis, panel in zip(axes.flat, panels, strict=False):
        for name in dict.fromkeys(row[series] for row in rows):
            points = [(positions[row[x]], row[y]) for row in rows if row[series] == name
                      and tuple(row[c] for c in panel_by) == panel]
            if points:
                axis.plot(*zip(*points, strict=True), marker="o", label=name)
        axis.set(title=", ".join(str(value) for value in panel), xlabel=x, ylabel=ylabel)
        axis.set_xticks(range(len(positions)), [str(value) for value in positions], fontsize=7)
    for axis in axes.flat[len(panels):]:
        axis.set_visible(False)
    axes.flat[0].legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def write_results(name: str, env: dict, table: Table, notes: str, out_dir: Path | None = None,
                  plot: Callable[[Table, Path], None] | None = None) -> Path:
    """Writes ``<name>-<date>.json`` and ``.md`` (and ``.png`` with ``plot`` and matplotlib)
    under ``benchmarks/results/<gpu>/`` (or ``out_dir``); returns the Markdown path."""
    folder = out_dir or RESULTS_DIR / slug(env.get("gpu") or "cpu")
    folder.mkdir(parents=True, exist_ok=True)
    stem = folder / f"{name}-{env['date'][:10]}"
    stem.with_suffix(".json").write_text(json.dumps(
        {"environment": env, "notes": notes, "columns": table.columns, "rows": table.rows},
        indent=1) + "\n")
    header = "\n".join(f"- {key}: {value}" for key, value in env.items())
    stem.with_suffix(".md").write_text(f"# {name}\n\n{header}\n\n{notes}\n\n{table.markdown()}\n")
    if plot is not None:
        try:
            import matplotlib
            matplotlib.use("Agg")
            plot(table, stem.with_suffix(".png"))
        except ImportError:
            print("matplotlib is not installed: no plot", file=sys.stderr)
    return stem.with_suffix(".md")
