"""``fasttx-train --compare-backends reference,triton,cuda``: the same training on each
backend, side by side.

Each entry trains a fresh model from the same seed on the same batches for
``max_steps`` steps (no evaluation, no checkpoints) with ``fasttx.use_backend(name)``;
``name+compile`` also compiles the training step with ``torch.compile``. The report gives,
per entry, the training throughput (target tokens/s over the steps after the first tenth,
and at least the first, which absorb compilation and autotuning), the peak GPU memory, the
final loss, and how far its loss curve strays from the first entry's (max and mean
|difference| per step). An entry that cannot run (a backend unavailable here) is reported
with the reason, not dropped. Entries that run the Triton kernels under Triton's
interpreter (on CPU) are warned about before the first one starts, with a rough duration,
and a CPU report's table is headed by :data:`fasttx.backends.CPU_TIMINGS_CAVEAT`, the
benchmark suite's label. Each entry's metrics go to ``<out>/compare/<entry>/``
(replaced by the next comparison), the report with the environment to
``<out>/compare_backends.json``, and its plot to ``<out>/compare_backends.png``.
"""

from __future__ import annotations

import dataclasses
import datetime
import gc
import json
import os
import platform
import shutil
import subprocess
from pathlib import Path

import torch

import fasttx
from fasttx.backends import BACKENDS, CPU_TIMINGS_CAVEAT, BackendUnavailableError
from fasttx.train._files import write_atomically
from fasttx.train.plots import plot_backend_losses

__all__ = ["compare_backends", "parse_entries"]


def parse_entries(text: str) -> list[tuple[str, bool]]:
    """"reference,triton+compile" -> [("reference", False), ("triton", True)]."""
    entries = []
    for item in (part.strip() for part in text.split(",")):
        backend, _, suffix = item.partition("+")
        if backend not in ("auto",) + BACKENDS or suffix not in ("", "compile"):
            raise ValueError(f"--compare-backends entries are backends ({', '.join(BACKENDS)}, "
                             f"auto) with an optional +compile, got {item!r}")
        entries.append((backend, suffix == "compile"))
    if len(entries) < 1 or len(set(entries)) != len(entries):
        raise ValueError(f"--compare-backends needs distinct entries, got {text!r}")
    return entries


def _entry_name(backend: str, compiled: bool) -> str:
    return backend + ("+compile" if compiled else "")


#: Training tokens per minute under Triton's interpreter, measured with the tiny preset on a
#: busy 2-core CPU (a step of 256 tokens: about a minute); larger presets are slower.
INTERPRETED_TOKENS_PER_MINUTE = 256


def interpreter_warning(options, entries: list[tuple[str, bool]], available) -> str | None:
    """What a comparison says before it starts when some of its entries (triton, and auto,
    which picks triton) run fasttx's Triton kernels under Triton's interpreter
    (TRITON_INTERPRET=1, how the Triton backend runs on CPU): every kernel then runs in
    Python, and the warning estimates how long each such entry takes. None when no entry
    is interpreted."""
    names = [_entry_name(backend, compiled) for backend, compiled in entries
             if backend in ("triton", "auto")]
    if not names or "triton" in available.reasons:
        return None
    from fasttx.triton._settings import interpreting

    if not interpreting():
        return None
    minutes = options.max_steps * options.max_tokens / INTERPRETED_TOKENS_PER_MINUTE
    duration = (f"{minutes / 60:,.0f} hours" if minutes >= 120 else
                f"{minutes:.0f} minutes" if minutes >= 1.5 else "a minute or so")
    return (f"warning: {', '.join(names)} will run fasttx's Triton kernels under Triton's "
            f"interpreter (TRITON_INTERPRET=1), in Python: {options.max_steps} steps of "
            f"{options.max_tokens} tokens take roughly {duration} per entry (at about a "
            f"minute per {INTERPRETED_TOKENS_PER_MINUTE} tokens of the tiny preset on a "
            f"2-core CPU), and their timings are not a performance figure. To check that "
            f"the backends train alike, pass e.g. --max-tokens 128 --max-steps 5.")


def _throughput(summary) -> float:
    skip = max(1, len(summary.step_seconds) // 10) if len(summary.step_seconds) > 1 else 0
    seconds = sum(summary.step_seconds[skip:])
    return sum(summary.step_tokens[skip:]) / seconds if seconds else float("nan")


def _environment(device: torch.device) -> dict:
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, cwd=Path(__file__).parent, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    return {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "device": torch.cuda.get_device_name(device) if device.type == "cuda"
            else platform.processor() or "cpu",
            "torch": torch.__version__, "triton": triton_version, "cuda": torch.version.cuda,
            "device_type": device.type, "fasttx": fasttx.__version__,
            "commit": commit or None}


def compare_backends(options, entries: list[tuple[str, bool]], echo=print) -> dict:
    """Trains ``options`` (resolved) once per (backend, compile) entry; returns the report
    (also written beside the runs in ``options.out``)."""
    from fasttx.train.trainer import Trainer

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ValueError("--compare-backends runs in one process; start it without torchrun")
    out = Path(options.out)
    rows, losses = [], {}
    available = fasttx.available_backends()
    warning = interpreter_warning(options, entries, available)
    if warning is not None:
        echo(warning)
    for backend, compiled in entries:
        name = _entry_name(backend, compiled)
        row = {"backend": name, "status": "ok"}
        if backend in available.reasons:
            row["status"] = f"skipped: {available.reasons[backend]}"
            rows.append(row)
            echo(f"{name}: {row['status']}")
            continue
        scratch = out / "compare" / name  # this entry's metrics, redone by every comparison
        shutil.rmtree(scratch, ignore_errors=True)
        run_options = dataclasses.replace(
            options, backend=backend, compile=compiled, out=str(scratch),
            eval_every=0, save_every=0, compare_backends=None, resume=False)
        echo(f"{name}: training {options.max_steps} steps")
        try:
            trainer = Trainer(run_options, echo=echo)
            summary = trainer.run(evaluate=False, save=False)
        except BackendUnavailableError as error:
            row["status"] = f"skipped: {error}"
            rows.append(row)
            continue
        finally:
            trainer = None  # free this entry's model and optimizer before the next one
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        if summary.status != "finished" or not summary.losses:
            row["status"] = f"failed: {summary.status} after {summary.step} steps"
            rows.append(row)
            if summary.status == "interrupted":  # Ctrl-C ends the whole comparison
                break
            continue
        losses[name] = summary.losses
        row.update(tokens_per_s=_throughput(summary), peak_memory_mb=summary.peak_memory_mb,
                   final_loss=summary.final_loss, steps=summary.step,
                   backends_used=summary.backends, losses=summary.losses)
        rows.append(row)

    baseline = next((row for row in rows if row["status"] == "ok"), None)
    for row in rows:
        if row["status"] == "ok" and baseline is not None:
            pairs = list(zip(row["losses"], baseline["losses"], strict=False))
            differences = [abs(a - b) for a, b in pairs]
            row["max_abs_loss_diff"] = max(differences)
            row["mean_abs_loss_diff"] = sum(differences) / len(differences)
            row["speedup"] = row["tokens_per_s"] / baseline["tokens_per_s"]
            if row["peak_memory_mb"] and baseline["peak_memory_mb"]:
                row["memory_ratio"] = row["peak_memory_mb"] / baseline["peak_memory_mb"]
    report = {"env": _environment(torch.device(options.device or (
                  "cuda" if torch.cuda.is_available() else "cpu"))),
              "options": dataclasses.asdict(options),
              "baseline": baseline["backend"] if baseline else None, "results": rows}
    out.mkdir(parents=True, exist_ok=True)
    path = out / "compare_backends.json"
    write_atomically(path, text=json.dumps(report, indent=2) + "\n")
    plot_backend_losses(losses, out / "compare_backends.png", echo=echo)
    echo(format_table(report))
    echo(f"report: {path}")
    return report


def _ratio(value: float) -> str:
    """Two decimals, or two significant digits below 0.1 (an interpreted backend's 0.0012,
    not 0.00)."""
    return f"{value:.2f}" if value >= 0.1 else f"{value:.2g}"


def format_table(report: dict) -> str:
    """The report's rows as an aligned text table; on CPU headed by the caveat that its
    timings are not a performance figure (the benchmark suite's label)."""
    header = f"{'backend':<20} {'tokens/s':>12} {'speedup':>9} {'peak MB':>10} " \
             f"{'final loss':>11} {'max |dloss|':>12}"
    lines = [header, "-" * len(header)]
    if report["env"].get("device_type") == "cpu":
        lines.insert(0, f"CPU run: {CPU_TIMINGS_CAVEAT}")
    for row in report["results"]:
        if row["status"] != "ok":
            lines.append(f"{row['backend']:<20} {row['status']}")
            continue
        memory = f"{row['peak_memory_mb']:,.0f}" if row["peak_memory_mb"] else "n/a (cpu)"
        lines.append(f"{row['backend']:<20} {row['tokens_per_s']:>12,.0f} "
                     f"{_ratio(row['speedup']):>8}x {memory:>10} {row['final_loss']:>11.4f} "
                     f"{row['max_abs_loss_diff']:>12.2e}")
    return "\n".join(lines)
