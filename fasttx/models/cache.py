"""The key/value cache for incremental decoding: :class:`KVCache` holds one
:class:`LayerCache` per decoder layer.

    cache = KVCache(num_layers=len(model.decoder), capacity=1 + max_new_tokens)
    logits = model.decode(tgt[:, :1], memory, src_mask, cache)     # bos
    logits = model.decode(next_token, memory, src_mask, cache)     # one step at a time

Each layer caches its self-attention keys/values (appended step by step into a buffer of
``capacity`` positions) and its cross-attention keys/values (computed once from the
encoder output). Beam search reorders the rows with :meth:`KVCache.reorder_beams`.
"""

from __future__ import annotations

import torch

__all__ = ["KVCache", "LayerCache"]


class LayerCache:
    """Key/value cache of one decoder layer.

    key, value: (B, H, capacity, Dh) self-attention keys/values, allocated on first use;
        positions [0, length) are filled, one step at a time.
    cross_key, cross_value: (B, H, Ls, Dh) cross-attention keys/values of the encoder
        output, computed once on the first step.
    """

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.length = 0
        self.key = self.value = self.cross_key = self.cross_value = None

    def append(self, key: torch.Tensor, value: torch.Tensor):
        """Writes key, value (B, H, n, Dh) at [length, length + n); returns the filled
        prefix (B, H, length + n, Dh) of both."""
        end = self.length + key.shape[2]
        if end > self.capacity:
            raise ValueError(f"the cache holds {self.capacity} positions, decoding position "
                             f"{end - 1} needs more (create it with a larger capacity)")
        if self.key is None:
            shape = (key.shape[0], key.shape[1], self.capacity, key.shape[3])
            self.key, self.value = key.new_empty(shape), value.new_empty(shape)
        self.key[:, :, self.length:end] = key
        self.value[:, :, self.length:end] = value
        self.length = end
        return self.key[:, :, :end], self.value[:, :, :end]


class KVCache:
    """Per-layer decoder caches for incremental decoding; ``length`` positions are cached."""

    def __init__(self, num_layers: int, capacity: int):
        self.layers = [LayerCache(capacity) for _ in range(num_layers)]

    @property
    def length(self) -> int:
        return self.layers[0].length

    def reorder_beams(self, index: torch.Tensor) -> None:
        """Row r continues the hypothesis of row ``index[r]`` (B*K,). The rows of ``index``
        must come from the same source (beams of one sentence), so the cross-attention
        keys/values, which depend on the source only, stay in place."""
        for layer in self.layers:
            if layer.key is not None:
                layer.key = layer.key.index_select(0, index)
                layer.value = layer.value.index_select(0, index)
