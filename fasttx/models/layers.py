"""The Transformer layers: multi-head self-/cross-attention, encoder and decoder layers.

Every attention goes through :func:`fasttx.scaled_dot_product_attention`, every residual
add & norm through :func:`fasttx.add_layer_norm` and every FFN through
:func:`fasttx.feed_forward`, so ``with fasttx.use_backend(...)`` switches all kernels.

Residual blocks. Each sub-layer output ``out`` meets the residual stream ``s`` in one fused
op, ``y, s' = add_layer_norm(out, s)`` with ``y = LN(s + dropout(out))`` and
``s' = s + dropout(out)``. Post-norm (the paper) carries ``y`` on as the stream; pre-norm
carries ``s'`` and feeds ``y`` to the next sub-layer, so the pre-norm of sub-layer k is
fused with the add of sub-layer k-1. A pre-norm stack therefore has one extra norm in front
(fused with the dropout on the embeddings, see :class:`~fasttx.models.Seq2SeqTransformer`),
and its last norm is the final LayerNorm.
"""

from __future__ import annotations

import torch
from torch import nn

from fasttx.models.cache import LayerCache
from fasttx.models.config import TransformerConfig
from fasttx.nn.layers import AddLayerNorm, FeedForward
from fasttx.ops import scaled_dot_product_attention

__all__ = ["CrossAttention", "DecoderLayer", "EncoderLayer", "SelfAttention"]


class _Attention(nn.Module):
    """Heads split/merge, the fused attention call and the output projection."""

    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.num_heads, self.head_dim = config.num_heads, config.head_dim
        self.dropout = config.attention_dropout
        self.out_proj = nn.Linear(config.d_model, config.d_model)

    def _split(self, x: torch.Tensor, parts: int):
        """(B, L, parts * D) -> parts tensors (B, H, L, Dh) (views)."""
        batch, length, _ = x.shape
        x = x.view(batch, length, parts, self.num_heads, self.head_dim)
        return x.permute(2, 0, 3, 1, 4).unbind(0)

    def _attend(self, q, k, v, mask, is_causal):
        """q (B, H, Lq, Dh), k/v (B, H, Lk, Dh) -> (B, Lq, D)."""
        out = scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0,
            is_causal=is_causal)
        batch, _, length, _ = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(batch, length, -1))


class SelfAttention(_Attention):
    """Multi-head self-attention with one fused (D -> 3D) input projection."""

    def __init__(self, config: TransformerConfig):
        super().__init__(config)
        self.qkv_proj = nn.Linear(config.d_model, 3 * config.d_model)

    def forward(self, x, mask=None, is_causal=False, cache: LayerCache | None = None):
        """x (B, L, D); mask bool broadcastable to (B, H, L, Lk), True = may attend;
        with ``cache`` the new keys/values are appended and all cached ones attended."""
        q, k, v = self._split(self.qkv_proj(x), 3)
        if cache is not None:
            k, v = cache.append(k, v)
        return self._attend(q, k, v, mask, is_causal)


class CrossAttention(_Attention):
    """Multi-head attention of the decoder over the encoder output (memory)."""

    def __init__(self, config: TransformerConfig):
        super().__init__(config)
        self.q_proj = nn.Linear(config.d_model, config.d_model)
        self.kv_proj = nn.Linear(config.d_model, 2 * config.d_model)

    def forward(self, x, memory, mask, cache: LayerCache | None = None):
        """x (B, Lt, D), memory (B, Ls, D), mask (B, 1, 1, Ls) -> (B, Lt, D)."""
        (q,) = self._split(self.q_proj(x), 1)
        if cache is not None and cache.cross_key is not None:
            k, v = cache.cross_key, cache.cross_value
        else:
            k, v = self._split(self.kv_proj(memory), 2)
            if cache is not None:
                cache.cross_key, cache.cross_value = k, v
        return self._attend(q, k, v, mask, False)


def _add_norm(norm: AddLayerNorm, out, stream, norm_first: bool):
    """One residual block end: returns (input of the next sub-layer, new residual stream)."""
    if norm_first:
        return norm(out, stream, return_residual=True)
    y = norm(out, stream)
    return y, y


class EncoderLayer(nn.Module):
    """[self-attention -> add & norm -> FFN -> add & norm]."""

    def __init__(self, config: TransformerConfig):
        super().__init__()
        d, eps, p = config.d_model, config.layer_norm_eps, config.dropout
        self.norm_first = config.norm_first
        self.self_attn = SelfAttention(config)
        self.norm1 = AddLayerNorm(d, eps, dropout=p)
        self.ffn = FeedForward(d, config.d_ff, config.activation_dropout, config.activation)
        self.norm2 = AddLayerNorm(d, eps, dropout=p)

    def forward(self, x, stream, src_mask):
        """x, stream (B, Ls, D) -> (x, stream) for the next layer."""
        x, stream = _add_norm(self.norm1, self.self_attn(x, src_mask), stream, self.norm_first)
        return _add_norm(self.norm2, self.ffn(x), stream, self.norm_first)


class DecoderLayer(nn.Module):
    """[masked self-attention -> add & norm -> cross-attention -> add & norm -> FFN ->
    add & norm]."""

    def __init__(self, config: TransformerConfig):
        super().__init__()
        d, eps, p = config.d_model, config.layer_norm_eps, config.dropout
        self.norm_first = config.norm_first
        self.self_attn = SelfAttention(config)
        self.norm1 = AddLayerNorm(d, eps, dropout=p)
        self.cross_attn = CrossAttention(config)
        self.norm2 = AddLayerNorm(d, eps, dropout=p)
        self.ffn = FeedForward(d, config.d_ff, config.activation_dropout, config.activation)
        self.norm3 = AddLayerNorm(d, eps, dropout=p)

    def forward(self, x, stream, memory, src_mask, tgt_mask, is_causal, cache=None):
        """x, stream (B, Lt, D); memory (B, Ls, D) -> (x, stream) for the next layer."""
        out = self.self_attn(x, tgt_mask, is_causal, cache)
        x, stream = _add_norm(self.norm1, out, stream, self.norm_first)
        out = self.cross_attn(x, memory, src_mask, cache)
        x, stream = _add_norm(self.norm2, out, stream, self.norm_first)
        return _add_norm(self.norm3, self.ffn(x), stream, self.norm_first)
