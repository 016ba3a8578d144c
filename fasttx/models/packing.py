"""Packed (padding-free) training batches: the sequences of a batch one after another.

    batch = PackedBatch.from_sequences(src, tgt, device="cuda")
    out = model.loss_packed(batch)      # == model.loss(padded src, padded tgt)
    out.loss.backward()

``src[b]`` is the b-th source, its tokens then eos; ``tgt[b]`` the b-th target, bos, its
tokens, then eos: the rows of the padded ``model.loss(src, tgt)``, without the padding.
No token computes or stores padding: attention runs through
:func:`fasttx.varlen_attention` over the prefix sums ``cu_src`` and ``cu_tgt``
(sequence b is rows ``cu[b]:cu[b+1]``).

The sequences must not hold ``pad_id`` themselves: the padded loss masks it out, the packed
one attends to it (and scores it as a label) like any other token.
"""

from __future__ import annotations

import array
import dataclasses
import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import torch

__all__ = ["PackedBatch"]

_TOKEN_FIELDS = ("src", "src_positions", "tgt_in", "tgt_out", "tgt_positions")


@dataclass
class PackedBatch:
    """B source/target pairs concatenated with no padding.

    Attributes:
        src: (Ts,) int64 source tokens of all sequences, one after another.
        src_positions: (Ts,) int64 position of each source token in its sequence.
        cu_src: int32 (B + 1,) prefix sums of the source lengths, 0 to Ts.
        max_src: the longest source (an int).
        tgt_in: (Tt,) int64 decoder inputs: each target without its last token (eos).
        tgt_out: (Tt,) int64 next-token labels: each target without its first token (bos).
        tgt_positions: (Tt,) int64 position of each decoder input in its sequence.
        cu_tgt: int32 (B + 1,) prefix sums of the decoder-input lengths, 0 to Tt.
        max_tgt: the longest decoder input (an int): the longest target minus one.

    Build it with :meth:`from_sequences`; the constructor checks shapes, dtypes and
    devices only (the values would cost a device sync).
    """

    src: torch.Tensor
    src_positions: torch.Tensor
    cu_src: torch.Tensor
    max_src: int
    tgt_in: torch.Tensor
    tgt_out: torch.Tensor
    tgt_positions: torch.Tensor
    cu_tgt: torch.Tensor
    max_tgt: int

    def __post_init__(self):
        tensors = {name: getattr(self, name) for name in (*_TOKEN_FIELDS, "cu_src", "cu_tgt")}
        for name, tensor in tensors.items():
            expected = torch.int32 if name.startswith("cu_") else torch.int64
            if not isinstance(tensor, torch.Tensor) or tensor.dim() != 1 \
                    or tensor.dtype != expected:
                got = (f"{tensor.dtype} of shape {tuple(tensor.shape)}"
                       if isinstance(tensor, torch.Tensor) else type(tensor).__name__)
                raise TypeError(f"PackedBatch.{name} must be a 1-D {expected} tensor, got {got}")
        devices = {tensor.device for tensor in tensors.values()}
        if len(devices) > 1:
            raise ValueError(f"PackedBatch's tensors must be on one device, got "
                             f"{sorted(map(str, devices))}")
        for tokens, others in (("src", ("src_positions",)),
                               ("tgt_in", ("tgt_out", "tgt_positions"))):
            for other in others:
                if tensors[other].shape != tensors[tokens].shape:
                    raise ValueError(f"PackedBatch.{other} must have {tokens}'s shape "
                                     f"{tuple(tensors[tokens].shape)}, got "
                                     f"{tuple(tensors[other].shape)}")
        if self.cu_src.shape[0] < 2 or self.cu_tgt.shape != self.cu_src.shape:
            raise ValueError(f"PackedBatch.cu_src and cu_tgt must both have shape (B + 1,) "
                             f"with B >= 1, got {tuple(self.cu_src.shape)} and "
                             f"{tuple(self.cu_tgt.shape)}")
        for name in ("max_src", "max_tgt"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"PackedBatch.{name} must be a positive int, got {value!r}")

    @classmethod
    def from_sequences(cls, src: Sequence[Sequence[int]], tgt: Sequence[Sequence[int]],
                       device: torch.device | str = "cpu") -> PackedBatch:
        """Packs B pairs: ``src[b]`` = tokens + [eos], ``tgt[b]`` = [bos] + tokens + [eos].

        Each sequence is a list of ints or a 1-D integer tensor. The batch is built on the
        CPU in a few tensor ops and moved to ``device`` in one copy.
        """
        if isinstance(src, (str, bytes, torch.Tensor)) or not isinstance(src, Sequence) \
                or isinstance(tgt, (str, bytes, torch.Tensor)) or not isinstance(tgt, Sequence):
            raise TypeError(f"src and tgt must be sequences (e.g. lists) of token-id "
                            f"sequences, got {type(src).__name__} and {type(tgt).__name__}")
        if not src:
            raise ValueError("src and tgt must hold at least one sequence each, got none")
        if len(src) != len(tgt):
            raise ValueError(f"src and tgt must hold the same number of sequences, got "
                             f"{len(src)} and {len(tgt)}")
        src_tokens, src_lengths = _concatenate("src", src, 1, "a source holds at least eos")
        tgt_tokens, tgt_lengths = _concatenate("tgt", tgt, 2,
                                               "a target holds at least bos and eos")
        tgt_ends = _prefix_sums(tgt_lengths)                 # (B + 1,) in the full targets
        not_last = torch.ones(tgt_tokens.shape[0], dtype=torch.bool)
        not_last[tgt_ends[1:] - 1] = False
        not_first = torch.ones_like(not_last)
        not_first[tgt_ends[:-1]] = False
        decoder_lengths = [n - 1 for n in tgt_lengths]
        cu_src, cu_tgt = _prefix_sums(src_lengths), _prefix_sums(decoder_lengths)
        batch = cls(src=src_tokens, src_positions=_positions(cu_src, src_lengths),
                    cu_src=cu_src.int(), max_src=max(src_lengths),
                    tgt_in=tgt_tokens[not_last], tgt_out=tgt_tokens[not_first],
                    tgt_positions=_positions(cu_tgt, decoder_lengths), cu_tgt=cu_tgt.int(),
                    max_tgt=max(decoder_lengths))
        return batch.to(device)

    @property
    def num_sequences(self) -> int:
        """B, the number of source/target pairs."""
        return self.cu_src.shape[0] - 1

    @property
    def num_tokens(self) -> int:
        """Tt, the number of target tokens scored (the loss's denominator)."""
        return self.tgt_out.shape[0]

    @property
    def device(self) -> torch.device:
        """Where the tensors are."""
        return self.src.device

    def to(self, device: torch.device | str) -> PackedBatch:
        """This batch on ``device``: one host-to-device copy of all its tensors."""
        device = torch.device(device)
        if self.src.device == device:
            return self
        parts = [getattr(self, name) for name in _TOKEN_FIELDS] \
            + [self.cu_src.long(), self.cu_tgt.long()]
        moved = torch.cat(parts).to(device).split([part.shape[0] for part in parts])
        *tokens, cu_src, cu_tgt = moved
        return dataclasses.replace(self, **dict(zip(_TOKEN_FIELDS, tokens, strict=True)),
                                   cu_src=cu_src.int(), cu_tgt=cu_tgt.int())


def _concatenate(name, sequences, min_length, why) -> tuple[torch.Tensor, list[int]]:
    """The token ids of all sequences in one int64 tensor, and the lengths (each checked to
    be at least ``min_length``; ``why`` says why in the error)."""
    tensors = all(isinstance(sequence, torch.Tensor) for sequence in sequences)
    try:
        lengths = [len(sequence) for sequence in sequences]
    except TypeError:
        lengths = None
    if lengths is None or (tensors and any(sequence.dim() != 1 for sequence in sequences)):
        raise TypeError(f"{name} must be a sequence of token-id sequences (lists of ints or "
                        f"1-D tensors), got {type(sequences[0]).__name__} elements")
    short = next((b for b, length in enumerate(lengths) if length < min_length), None)
    if short is not None:
        raise ValueError(f"{name}[{short}] has {lengths[short]} token(s): {why}")
    if not tensors:  # array.array reads the ints several times faster than torch.tensor
        try:
            ids = array.array("q", itertools.chain.from_iterable(sequences))
        except (TypeError, OverflowError) as error:
            raise TypeError(f"{name} must hold int token ids, one level deep: {error}") from None
        return torch.frombuffer(ids, dtype=torch.int64), lengths
    tokens = torch.cat([sequence.cpu() for sequence in sequences])
    if tokens.dtype.is_floating_point or tokens.dtype.is_complex or tokens.dtype == torch.bool:
        raise TypeError(f"{name} must hold integer token ids, got {tokens.dtype} tensors")
    return tokens.long(), lengths


def _prefix_sums(lengths: list[int]) -> torch.Tensor:
    """[n_0, n_1, ...] -> int64 (B + 1,) [0, n_0, n_0 + n_1, ...]."""
    return torch.tensor([0, *itertools.accumulate(lengths)], dtype=torch.int64)


def _positions(cu: torch.Tensor, lengths: list[int]) -> torch.Tensor:
    """Each row's index in its sequence: arange(T) minus its sequence's start."""
    counts = torch.tensor(lengths, dtype=torch.int64)
    return torch.arange(int(cu[-1])) - cu[:-1].repeat_interleave(counts)
