"""Modules built on fasttx's fused ops."""

from fasttx.nn.layers import AddLayerNorm, FeedForward

__all__ = ["AddLayerNorm", "FeedForward"]
