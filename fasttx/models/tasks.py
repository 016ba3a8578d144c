"""The copy task on token ids (as in "The Annotated Transformer"): learn to output the input.

Batches of token ids straight from a generator, for the model's tests and benchmarks; the
training CLI's tasks (copy, reverse, sort, numbers, as text) are :mod:`fasttx.train.tasks`.

    task = CopyTask.for_config(config)               # symbols = every non-special token id
    for src, tgt in task.batches(64, seed=0): ...    # deterministic given the seed

A sequence x of 1..max_len random symbols becomes src = x + [eos] and
tgt = [bos] + x + [eos], both right-padded with pad_id to the longest in the batch.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from fasttx.models.config import TransformerConfig

__all__ = ["Accuracy", "CopyTask", "sequence_accuracy"]


@dataclass(frozen=True)
class CopyTask:
    """Random symbol sequences to copy; ``min_len``..``max_len`` symbols each."""

    vocab_size: int
    pad_id: int = 0
    bos_id: int = 1
    eos_id: int = 2
    min_len: int = 1
    max_len: int = 10

    def __post_init__(self):
        if not 1 <= self.min_len <= self.max_len:
            raise ValueError(f"need 1 <= min_len <= max_len, got min_len={self.min_len}, "
                             f"max_len={self.max_len}")
        if len(self.symbols) < 2:
            raise ValueError(f"vocab_size={self.vocab_size} leaves fewer than two symbols "
                             f"besides pad, bos and eos")

    @classmethod
    def for_config(cls, config: TransformerConfig, **kwargs) -> CopyTask:
        """The task over ``config``'s vocabulary and special ids; kwargs: min_len, max_len."""
        task = cls(config.vocab_size, config.pad_id, config.bos_id, config.eos_id, **kwargs)
        if task.max_len + 2 > config.max_len:
            raise ValueError(f"max_len={task.max_len} symbols + bos + eos exceed the model's "
                             f"max_len={config.max_len}")
        return task

    @property
    def symbols(self) -> torch.Tensor:
        """The token ids that may appear in a sequence: all but pad, bos and eos."""
        special = {self.pad_id, self.bos_id, self.eos_id}
        return torch.tensor([i for i in range(self.vocab_size) if i not in special])

    def sample(self, batch_size: int, generator: torch.Generator, device="cpu"):
        """src (B, Ls) and tgt (B, Ls + 1) int64 on ``device``, drawn from ``generator``."""
        symbols = self.symbols
        lengths = torch.randint(self.min_len, self.max_len + 1, (batch_size,),
                                generator=generator)
        width = int(lengths.max())
        draws = torch.randint(0, len(symbols), (batch_size, width), generator=generator)
        body = symbols[draws].masked_fill(torch.arange(width) >= lengths[:, None], self.pad_id)
        src = torch.cat([body, torch.full((batch_size, 1), self.pad_id)], dim=1)
        src[torch.arange(batch_size), lengths] = self.eos_id
        tgt = torch.cat([torch.full((batch_size, 1), self.bos_id), src], dim=1)
        return src.to(device), tgt.to(device)

    def batches(self, batch_size: int, seed: int = 0, device="cpu") -> Iterator:
        """An endless, deterministic stream of (src, tgt) batches."""
        generator = torch.Generator().manual_seed(seed)
        while True:
            yield self.sample(batch_size, generator, device)


@dataclass
class Accuracy:
    """exact_match: share of sequences decoded exactly (through eos); token_accuracy: share
    of target tokens (symbols and eos) predicted at their position."""

    exact_match: float
    token_accuracy: float
    num_sequences: int


def sequence_accuracy(predictions: torch.Tensor, targets: torch.Tensor, pad_id: int) -> Accuracy:
    """predictions (B, Lp) and targets (B, Lt), both starting with bos and padded with pad_id."""
    width = max(predictions.shape[1], targets.shape[1])
    predictions = F.pad(predictions, (0, width - predictions.shape[1]), value=pad_id)
    targets = F.pad(targets, (0, width - targets.shape[1]), value=pad_id)
    same = predictions == targets
    scored = targets[:, 1:] != pad_id
    return Accuracy(exact_match=same.all(dim=1).float().mean().item(),
                    token_accuracy=((same[:, 1:] & scored).sum() / scored.sum()).item(),
                    num_sequences=targets.shape[0])

