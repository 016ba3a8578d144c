"""Modules built on fasttx's fused ops.

Drop-in replacements for ``torch.nn``'s Transformer modules (same constructor arguments,
forward signatures and state_dict keys): ``MultiheadAttention``, ``TransformerEncoderLayer``,
``TransformerDecoderLayer``, ``TransformerEncoder``, ``TransformerDecoder``, ``Transformer``;
plus the fused building blocks ``AddLayerNorm`` and ``FeedForward``.
"""

from fasttx.nn.attention import MultiheadAttention
from fasttx.nn.layers import AddLayerNorm, FeedForward
from fasttx.nn.transformer import (
    Transformer,
    TransformerDecoder,
    TransformerDecoderLayer,
    TransformerEncoder,
    TransformerEncoderLayer,
)

__all__ = [
    "AddLayerNorm",
    "FeedForward",
    "MultiheadAttention",
    "Transformer",
    "TransformerDecoder",
    "TransformerDecoderLayer",
    "TransformerEncoder",
    "TransformerEncoderLayer",
]
