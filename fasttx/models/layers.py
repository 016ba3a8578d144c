"""The Transformer layers: multi-head self-/cross-attention, encoder and decoder layers.

Every attention goes through :func:`fasttx.scaled_dot_product_attention` (or, on packed
batches, :func:`fasttx.varlen_attention`), every residual add & norm through
:func:`fasttx.add_layer_norm` and every FFN through :func:`fasttx.feed_forward`, so
``with fasttx.use_backend(...)`` switches all kernels.

Packed batches (the ``packed`` argument of the layers, a
:class:`~fasttx.models.PackedBatch`; the attentions' ``forward_packed``): the B sequences
one after another, x (T, D) with no padding; ``cu`` int32 (B + 1,) and ``longest`` (an
int) are the prefix sums of the lengths and the longest length, as
:func:`fasttx.varlen_attention` takes them. The layers take ``packed`` in ``forward`` so
that module hooks (FSDP's unsharding among them) run for packed batches too.

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
from fasttx.models.packing import PackedBatch
from fasttx.nn.layers import AddLayerNorm, FeedForward
from fasttx.ops import scaled_dot_product_attention, varlen_attention

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

    def _split_packed(self, x: torch.Tensor, parts: int):
        """(T, parts * D) -> parts tensors (T, H, Dh) (views)."""
        return x.view(x.shape[0], parts, self.num_heads, self.head_dim).unbind(1)

    def _attend_packed(self, q, k, v, cu_q, cu_k, longest_q, longest_k, is_causal):
        """q (Tq, H, Dh), k/v (Tk, H, Dh) -> (Tq, D)."""
        out = varlen_attention(q, k, v, cu_q, cu_k, longest_q, longest_k,
                               dropout_p=self.dropout if self.training else 0.0,
                               is_causal=is_causal)
        return self.out_proj(out.flatten(1))


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

    def forward_packed(self, x, cu, longest, is_causal=False):
        """x (T, D) of packed sequences -> (T, D); each sequence attends to itself only."""
        q, k, v = self._split_packed(self.qkv_proj(x), 3)
        return self._attend_packed(q, k, v, cu, cu, longest, longest, is_causal)


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

    def forward_packed(self, x, memory, cu_tgt, longest_tgt, cu_src, longest_src):
        """x (Tt, D), memory (Ts, D) packed -> (Tt, D); target b attends to source b."""
        (q,) = self._split_packed(self.q_proj(x), 1)
        k, v = self._split_packed(self.kv_proj(memory), 2)
        return self._attend_packed(q, k, v, cu_tgt, cu_src, longest_tgt, longest_src, False)


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

    def forward(self, x, stream, src_mask, packed: PackedBatch | None = None):
        """x, stream (B, Ls, D) -> (x, stream) for the next layer. With ``packed``:
        x, stream (Ts, D) of its packed sources, and src_mask unused (None)."""
        if packed is None:
            out = self.self_attn(x, src_mask)
        else:
            out = self.self_attn.forward_packed(x, packed.cu_src, packed.max_src)
        x, stream = _add_norm(self.norm1, out, stream, self.norm_first)
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

    def forward(self, x, stream, memory, src_mask, tgt_mask, is_causal, cache=None,
                packed: PackedBatch | None = None):
        """x, stream (B, Lt, D); memory (B, Ls, D) -> (x, stream) for the next layer.
        With ``packed``: x, stream (Tt, D) of its packed decoder inputs, memory (Ts, D) of
        its packed sources, self-attention causal within each target; src_mask, tgt_mask,
        is_causal and cache unused (None, None, True, None)."""
        if packed is None:
            out = self.self_attn(x, tgt_mask, is_causal, cache)
        else:
            out = self.self_attn.forward_packed(x, packed.cu_tgt, packed.max_tgt, is_causal=True)
        x, stream = _add_norm(self.norm1, out, stream, self.norm_first)
        if packed is None:
            out = self.cross_attn(x, memory, src_mask, cache)
        else:
            out = self.cross_attn.forward_packed(x, memory, packed.cu_tgt, packed.max_tgt,
                                                 packed.cu_src, packed.max_src)
        x, stream = _add_norm(self.norm2, out, stream, self.norm_first)
        return _add_norm(self.norm3, self.ffn(x), stream, self.norm_first)
