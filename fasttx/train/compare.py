"""``fasttx-train --compare-backends reference,triton,cuda``: the same training on each
backend, side by side.

Each entry trains a fresh model from the same seed on the same batches for
``max_steps`` steps (no evaluation, no checkpoints) with ``fasttx.use_backend(name)``;
``name+compile`` also compiles the training step with ``torch.compile``. The report gives,
per entry, the training throughput (target tokens/s over the steps after the first tenth,
and at least the first, which absorb compilation and autotuning), the peak GPU memory, the
final loss, and how far its loss curve strays from the first entry's (max and mean
|difference| per step). An entry that cannot run (a backend unavailable here) is reported
with the reason, not dropped. Each entry's metrics go to ``<out>/compare/<entry>/``
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
from fasttx.backends import BACKENDS, BackendUnavailableError
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
            "fasttx": fasttx.__version__, "commit": commit or None}


def compare_backends(options, entries: list[tuple[str, bool]], echo=print) -> dict:
    """Trains ``options`` (resolved) once per (backend, compile) entry; returns the report
    (also written beside the runs in ``options.out``)."""
    from fasttx.train.trainer import Trainer

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ValueError("--compare-backends runs in one process; start it without torchrun")
    out = Path(options.out)
    rows, losses = [], {}
    available = fasttx.available_backends()
    for backend, compiled in entries:
        name = backend + ("+compile" if compiled else "")
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


def format_table(report: dict) -> str:
    """The report's rows as an aligned text table."""
    header = f"{'backend':<20} {'tokens/s':>12} {'speedup':>8} {'peak MB':>10} " \
             f"{'final loss':>11} {'max |dloss|':>12}"
    lines = [header, "-" * len(header)]
    for row in report["results"]:
        if row["status"] != "ok":
            lines.append(f"{row['backend']:<20} {row['status']}")
            continue
        memory = f"{row['peak_memory_mb']:,.0f}" if row["peak_memory_mb"] else "n/a (cpu)"
        lines.append(f"{row['backend']:<20} {row['tokens_per_s']:>12,.0f} "
                     f"{row['speedup']:>7.2f}x {memory:>10} {row['final_loss']:>11.4f} "
                     f"{row['max_abs_loss_diff']:>12.2e}")
    return "\n".join(lines)
