"""Plots of a run: the loss curve from metrics.jsonl, and the backends of a comparison.

    plot_loss_curve("runs/copy-tiny/metrics.jsonl", "runs/copy-tiny/loss.png")
    plot_backend_losses({"reference": [...], "triton": [...]}, "compare/losses.png")

matplotlib is optional (``pip install 'fasttx[train]'``): without it the plot is skipped
with a message, never the run.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

__all__ = ["plot_backend_losses", "plot_loss_curve"]


def _pyplot(echo):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        echo("matplotlib is not installed: no plot (pip install 'fasttx[train]')")
        return None
    return plt


def _save(figure, plt, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def plot_loss_curve(metrics_path, png_path, echo=print,
                    label_smoothing: float = 0.0) -> Path | None:
    """Training loss (each metrics record) and validation loss against the step;
    ``label_smoothing``: the run's, which the training loss includes."""
    metrics_path, png_path = Path(metrics_path), Path(png_path)
    records = []
    if metrics_path.exists():
        for line in metrics_path.read_text(encoding="utf-8").splitlines():
            with contextlib.suppress(json.JSONDecodeError):  # a line a crash cut short
                records.append(json.loads(line))
    train = [(r["step"], r["loss"]) for r in records if "loss" in r]
    valid = [(r["step"], r["valid_loss"]) for r in records if "valid_loss" in r]
    if not train or (plt := _pyplot(echo)) is None:
        return None
    figure, axes = plt.subplots(figsize=(7, 4))
    smoothed = f" (label smoothing {label_smoothing:g})" if label_smoothing else ""
    axes.plot(*zip(*train, strict=True), label="train" + smoothed)
    if valid:
        axes.plot(*zip(*valid, strict=True), "o-", label="validation")
    axes.set(xlabel="step", ylabel="loss per target token", yscale="log",
             title=f"{metrics_path.parent.name}: loss")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend()
    return _save(figure, plt, png_path)


def plot_backend_losses(losses: dict[str, list[float]], png_path, echo=print) -> Path | None:
    """The per-step training loss of each backend of a comparison, on one plot."""
    if not losses or (plt := _pyplot(echo)) is None:
        return None
    figure, axes = plt.subplots(figsize=(7, 4))
    for name, values in losses.items():
        axes.plot(range(1, len(values) + 1), values, label=name, alpha=0.8)
    axes.set(xlabel="step", ylabel="training loss", yscale="log",
             title="same seed and data, per backend")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend()
    return _save(figure, plt, Path(png_path))
