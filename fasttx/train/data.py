"""Parallel text in, padded token batches out: reading, encoding, batching, collation.

    pairs = read_parallel("train.de", "train.en")             # strict: errors name file:line
    corpus, dropped = encode_corpus(pairs, tokenizer, max_len=256)
    batcher = TokenBatcher(corpus.src_lengths, corpus.tgt_lengths, max_tokens=25_000, seed=1)
    for indices in batcher.epoch_batches(epoch):
        src, tgt = collate(corpus, indices, pad_id=0)           # (B, Ls), (B, Lt) int64
        loss = model.loss(src, tgt).loss

A source is its tokens + [eos]; a target is [bos] + tokens + [eos]; batches are right-padded
with pad_id, the layout of :class:`fasttx.models.CopyTask`. Batches hold up to
``max_tokens`` padded tokens of sentences of similar length (as in the paper, ~25,000
source and target tokens per step), so little compute goes to padding.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fasttx.train.tokenizer import BOS_ID, EOS_ID, PAD_ID

__all__ = ["DataError", "EncodedCorpus", "TokenBatcher", "collate", "collate_packed",
           "decode_lines", "encode_corpus", "read_lines", "read_parallel"]


class DataError(ValueError):
    """Unusable input data; the message names the file and, where it applies, the line."""


def read_lines(path: str | os.PathLike) -> list[str]:
    """The lines of the file ``path``, as :func:`decode_lines` splits them."""
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        raise DataError(f"{path}: cannot read the file ({error.strerror or error})") from None
    return decode_lines(data, path)


def decode_lines(data: bytes, name) -> list[str]:
    """The lines of ``data`` (strict UTF-8, split at "\\n" only), surrounding whitespace
    stripped; ``name`` names the input in errors. Only "\\n" ends a line, so a stray form
    feed or U+2028 cannot shift the numbering of one side against the other."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        raise DataError(f"{name}, line {line}: not valid UTF-8 ({error.reason}: byte "
                        f"0x{data[error.start]:02x})") from None
    if not text:
        raise DataError(f"{name}: the file is empty")
    lines = text.removeprefix("\ufeff").split("\n")
    if lines[-1] == "":  # the newline ending the last line
        lines.pop()
    return [line.strip() for line in lines]


def read_parallel(src_path: str | os.PathLike,
                  tgt_path: str | os.PathLike) -> list[tuple[str, str]]:
    """(source, target) sentence pairs from two line-aligned UTF-8 files.

    Raises DataError (naming the file, and the 1-based line where one applies) for a file
    that is missing or unreadable, empty, not UTF-8, has an empty (or whitespace-only) line,
    or has a different number of lines than the other: nothing is skipped silently, since a
    skipped line would misalign every pair after it. A final newline is optional.
    """
    src_path, tgt_path = Path(src_path), Path(tgt_path)
    sources, targets = read_lines(src_path), read_lines(tgt_path)
    for path, lines in ((src_path, sources), (tgt_path, targets)):
        empty = [number for number, line in enumerate(lines, start=1) if not line]
        if empty:
            more = f" (and {len(empty) - 1} more empty lines)" if len(empty) > 1 else ""
            raise DataError(f"{path}, line {empty[0]}: the line is empty{more}; every line "
                            f"needs a sentence")
    if len(sources) != len(targets):
        raise DataError(f"{src_path} has {len(sources)} lines but {tgt_path} has "
                        f"{len(targets)}: parallel files need one sentence per line on each "
                        f"side")
    return list(zip(sources, targets, strict=True))


@dataclass
class EncodedCorpus:
    """Token ids of parallel sentences.

    Attributes:
        src: per sentence, its token ids + [eos].
        tgt: per sentence, [bos] + its token ids + [eos].
        pair_indices: per sentence, its index in the pairs it was encoded from (pairs that
            :func:`encode_corpus` dropped leave gaps); defaults to 0, 1, 2, ...
    """

    src: list[list[int]]
    tgt: list[list[int]]
    pair_indices: list[int] | None = None

    def __post_init__(self):
        if len(self.src) != len(self.tgt):
            raise ValueError(f"src and tgt must hold as many sentences, got {len(self.src)} "
                             f"and {len(self.tgt)}")
        if self.pair_indices is None:
            self.pair_indices = list(range(len(self.src)))
        elif len(self.pair_indices) != len(self.src):
            raise ValueError(f"pair_indices must have one entry per sentence ({len(self.src)}),"
                             f" got {len(self.pair_indices)}")

    def __len__(self) -> int:
        return len(self.src)

    @property
    def src_lengths(self) -> np.ndarray:
        """(N,) int64: the length of each source, eos included."""
        return np.fromiter(map(len, self.src), dtype=np.int64, count=len(self.src))

    @property
    def tgt_lengths(self) -> np.ndarray:
        """(N,) int64: the length of each target, bos and eos included."""
        return np.fromiter(map(len, self.tgt), dtype=np.int64, count=len(self.tgt))


def encode_corpus(pairs: Sequence[tuple[str, str]], tokenizer,
                  max_len: int) -> tuple[EncodedCorpus, int]:
    """Encodes ``pairs`` with ``tokenizer``; returns (corpus, number of pairs dropped).

    A pair is dropped when its source (with eos) or its target (with bos and eos) is longer
    than ``max_len`` tokens; ``corpus.pair_indices`` says which pairs were kept.
    """
    if isinstance(max_len, bool) or not isinstance(max_len, int) or max_len < 1:
        raise ValueError(f"max_len must be a positive int, got {max_len!r}")
    sources = tokenizer.encode_batch([source for source, _ in pairs])
    targets = tokenizer.encode_batch([target for _, target in pairs])
    src, tgt, kept = [], [], []
    for index, (source, target) in enumerate(zip(sources, targets, strict=True)):
        if len(source) + 1 <= max_len and len(target) + 2 <= max_len:
            src.append(source + [EOS_ID])
            tgt.append([BOS_ID] + target + [EOS_ID])
            kept.append(index)
    return EncodedCorpus(src, tgt, kept), len(pairs) - len(kept)


def _lengths(name: str, lengths) -> np.ndarray:
    array = np.asarray(lengths)
    if array.ndim == 1 and array.size == 0:
        return np.zeros(0, dtype=np.int64)
    if array.ndim != 1 or not np.issubdtype(array.dtype, np.integer) or (array < 0).any():
        raise ValueError(f"{name} must be a 1-D array of non-negative ints, got "
                         f"{array.dtype} of shape {array.shape}")
    return array.astype(np.int64)


class TokenBatcher:
    """Batches of sentences of similar length, each of at most ``max_tokens`` padded tokens.

    A batch's cost is (number of sentences) x max(longest source, longest target): the
    tokens of its padded source or target, whichever is wider. Each epoch the sentences are
    sorted by max(source length, target length), ties in a random order from (seed, epoch),
    cut greedily into the largest batches within ``max_tokens``, and the batches are shuffled,
    again from (seed, epoch). A sentence longer than ``max_tokens`` on its own becomes a
    batch of its own (the only batches over the budget).

    With ``shuffle=False`` (for evaluation) the order is fixed: shortest sentences first,
    ties in corpus order, batches in that order, the same every epoch.
    """

    def __init__(self, src_lengths, tgt_lengths, max_tokens: int, seed: int = 0,
                 shuffle: bool = True):
        src_lengths = _lengths("src_lengths", src_lengths)
        tgt_lengths = _lengths("tgt_lengths", tgt_lengths)
        if src_lengths.shape != tgt_lengths.shape:
            raise ValueError(f"src_lengths and tgt_lengths must have one entry per sentence, "
                             f"got {src_lengths.size} and {tgt_lengths.size}")
        if not src_lengths.size:
            raise ValueError("no sentences to batch: the lengths are empty")
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
            raise ValueError(f"max_tokens must be a positive int, got {max_tokens!r}")
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {seed!r}")
        self.widths = np.maximum(src_lengths, tgt_lengths)
        self.max_tokens = max_tokens
        self.seed = seed
        self.shuffle = shuffle

    def __len__(self) -> int:
        """The number of sentences (the number of batches can vary by epoch)."""
        return self.widths.size

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        """The batches of ``epoch`` as lists of sentence indices: every sentence exactly once.

        The same (seed, epoch) gives the same batches.
        """
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
            raise ValueError(f"epoch must be a non-negative int, got {epoch!r}")
        if not self.shuffle:
            return self._cut(np.argsort(self.widths, kind="stable"))
        rng = np.random.default_rng([self.seed, epoch])
        order = np.lexsort((rng.permutation(self.widths.size), self.widths))
        batches = self._cut(order)
        return [batches[i] for i in rng.permutation(len(batches))]

    def _cut(self, order: np.ndarray) -> list[list[int]]:
        """Greedy cut of ``order`` (ascending widths): a batch's last sentence is its widest."""
        batches, batch = [], []
        for index, width in zip(order.tolist(), self.widths[order].tolist(), strict=True):
            if batch and (len(batch) + 1) * width > self.max_tokens:
                batches.append(batch)
                batch = []
            batch.append(index)
        batches.append(batch)
        return batches


def collate(corpus: EncodedCorpus, indices: Sequence[int],
            pad_id: int = PAD_ID) -> tuple[torch.Tensor, torch.Tensor]:
    """src (B, Ls) and tgt (B, Lt) int64 of sentences ``indices``, right-padded with pad_id.

    Ls and Lt are the longest source and target of the batch; row b is sentence indices[b].
    """
    if not len(indices):
        raise ValueError("indices must name at least one sentence")
    return (_pad([corpus.src[i] for i in indices], pad_id),
            _pad([corpus.tgt[i] for i in indices], pad_id))


def _pad(sequences: list[list[int]], pad_id: int) -> torch.Tensor:
    batch = np.full((len(sequences), max(map(len, sequences))), pad_id, dtype=np.int64)
    for row, sequence in zip(batch, sequences, strict=True):
        row[:len(sequence)] = sequence
    return torch.from_numpy(batch)


def collate_packed(corpus: EncodedCorpus, indices: Sequence[int]):
    """The sentences ``indices`` packed without padding: a ``fasttx.models.PackedBatch``."""
    from fasttx.models.packing import PackedBatch

    if not len(indices):
        raise ValueError("indices must name at least one sentence")
    return PackedBatch.from_sequences([corpus.src[i] for i in indices],
                                      [corpus.tgt[i] for i in indices])
