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

import dataclasses
import datetime
import itertools
import json
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


def ceilings(device: str) -> dict:
    """Peaks measured in this run: an 8192^3 bf16 matmul (TFLOP/s), a 2 GiB copy (TB/s)."""
    if device != "cuda":
        return {}
    a, b = (torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    matmul_ms = time_ms(torch.matmul, [(a, b)], device)
    source = torch.empty(2**30, device="cuda", dtype=torch.int16)
    target = torch.empty_like(source)
    copy_ms = time_ms(lambda s, t: t.copy_(s), [(source, target)], device)
    return {"bf16_matmul_tflops": round(2 * 8192**3 / matmul_ms / 1e9, 1),
            "copy_tb_per_s": round(2 * source.nbytes / copy_ms / 1e9, 2)}


def progress(items: Iterable, total: int, label: str):
    """Yields ``items`` while printing a one-line progress bar to stderr."""
    width = 30
    for done, item in enumerate(items):
        filled = width * done // max(total, 1)
        print(f"\r{label} [{'#' * filled}{'.' * (width - filled)}] {done}/{total}", end="",
              file=sys.stderr, flush=True)
        yield item
    print(f"\r{label} [{'#' * width}] {total}/{total}", file=sys.stderr, flush=True)


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
