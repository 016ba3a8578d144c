"""Training checkpoints: written atomically, complete enough to resume bit-for-bit.

    save_checkpoint(path, state)            # temp file in the same folder, fsync, rename
    state = load_checkpoint(path)           # clear error for a missing or foreign file

A checkpoint is one ``torch.save`` dict with the keys :data:`KEYS`: the model
and optimiser (full, unsharded state dicts), the scheduler, the step, the data position,
the random states of every rank, the options and model config of the run and the
tokenizer. A crash while writing leaves the previous checkpoint untouched: the new one is
written to a temporary file beside it and renamed over it only once complete.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import torch

from fasttx.train._files import write_atomically

__all__ = ["FORMAT", "CheckpointError", "capture_rng", "load_checkpoint", "restore_rng",
           "save_checkpoint"]

#: Stored under "format"; bumped when the layout changes incompatibly.
FORMAT = "fasttx-train/1"

#: Keys every checkpoint holds.
KEYS = ("format", "step", "data_position", "data_size", "world_size", "model", "optimizer",
        "scheduler", "rng", "options", "model_config", "tokenizer")


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, unreadable, not fasttx's, or from another run."""


def save_checkpoint(path: str | os.PathLike, state: dict) -> Path:
    """Writes ``state`` (a dict with :data:`KEYS`) to ``path`` atomically; returns the path."""
    missing = [key for key in KEYS if key not in state]
    if missing:
        raise ValueError(f"checkpoint state lacks {missing}")
    return write_atomically(path, lambda file: torch.save(state, file))


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Reads a checkpoint written by :func:`save_checkpoint` (onto the CPU)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # truncated, corrupted, or not a torch file at all
        raise CheckpointError(f"cannot read checkpoint {path}: {error}") from error
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(f"{path} is not a fasttx training checkpoint (format {found!r}, "
                              f"expected {FORMAT!r})")
    return state


def capture_rng(device: torch.device) -> dict:
    """Every random state a training step draws from: Python's, NumPy's, torch's CPU
    generator and, on CUDA, the device's generator (dropout seeds come from it)."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(),
             "torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def restore_rng(state: dict, device: torch.device) -> None:
    """Restores what :func:`capture_rng` captured."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:  # absent when the run moved from a CPU
        torch.cuda.set_rng_state(state["cuda"], device)
