"""``MultiheadAttention``: a drop-in ``torch.nn.MultiheadAttention`` over fasttx's fused attention.

Same constructor, parameters (names, shapes, initialisation), forward signature and outputs as
torch's module, so ``load_state_dict(torch_mha.state_dict(), strict=True)`` works. The
projections are plain ``F.linear``; the attention itself is one call of
:func:`fasttx.scaled_dot_product_attention`. torch's masks (True = *ignore*) are turned into
fasttx's (True = *may attend*) without materialising a (N, H, L, S) tensor when a key-padding
mask alone is given: it becomes a (N, 1, 1, S) mask that the kernel broadcasts.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.init import constant_, xavier_normal_, xavier_uniform_
from torch.nn.modules.linear import NonDynamicallyQuantizableLinear

from fasttx.ops.attention import attention_probabilities, scaled_dot_product_attention

__all__ = ["MultiheadAttention"]


class MultiheadAttention(nn.Module):
    r"""Multi-head attention of "Attention Is All You Need", as ``torch.nn.MultiheadAttention``.

    Args:
        embed_dim: E, the model dimension (query features and output features).
        num_heads: H; E must be divisible by H (head dim D = E / H).
        dropout: dropout probability on the attention weights (training mode only).
        bias: learn the input- and output-projection biases.
        add_bias_kv: learn ``bias_k``/``bias_v`` (1, 1, E), appended to the keys/values
            as one extra source position that every query may attend to.
        add_zero_attn: append one all-zero key/value position.
        kdim, vdim: features of key and value (default E). When both equal E the
            projections are packed in ``in_proj_weight`` (3E, E); otherwise they are
            ``q_proj_weight`` (E, E), ``k_proj_weight`` (E, kdim), ``v_proj_weight`` (E, vdim).
        batch_first: inputs and outputs are (N, L, E) instead of (L, N, E).
        device, dtype: factory arguments of the parameters.

    Parameters (state_dict keys): ``in_proj_weight`` or ``q/k/v_proj_weight``,
    ``in_proj_bias`` (3E,), ``out_proj.weight`` (E, E), ``out_proj.bias`` (E,),
    ``bias_k``/``bias_v`` (1, 1, E) — exactly torch's.

    Differences from torch (all on inputs torch handles poorly or not at all):

    * A query row that may attend to no key (fully masked) gives a zero output row and
      zero attention weights; torch gives NaN.
    * ``is_causal=True`` applies the causal mask (top-left aligned, query i sees keys
      j <= i), together with ``attn_mask`` when one is given (torch treats ``is_causal``
      as a hint that ``attn_mask`` *is* the causal mask; for a correct hint both agree).
      Without ``attn_mask`` torch raises; here it just works. The extra positions of
      ``add_bias_kv``/``add_zero_attn`` stay visible to every query.
    * With dropout in training mode and ``need_weights=True``, the returned weights are
      the attention probabilities before dropout (torch returns them after dropout).
    * Bad inputs raise ``ValueError``/``TypeError`` naming the argument (torch raises
      ``AssertionError``/``RuntimeError``). There is no NestedTensor support.
    """

    __constants__ = ["batch_first"]

    def __init__(self, embed_dim: int, num_heads: int, dropout: float = 0.0, bias: bool = True,
                 add_bias_kv: bool = False, add_zero_attn: bool = False, kdim: int | None = None,
                 vdim: int | None = None, batch_first: bool = False, device=None,
                 dtype=None) -> None:
        if embed_dim <= 0 or num_heads <= 0:
            raise ValueError(f"embed_dim and num_heads must be greater than 0, got "
                             f"embed_dim={embed_dim} and num_heads={num_heads}")
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim ({embed_dim}) must be divisible by num_heads "
                             f"({num_heads})")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        factory = {"device": device, "dtype": dtype}
        super().__init__()
        self.embed_dim = embed_dim
        self.kdim = kdim if kdim is not None else embed_dim
        self.vdim = vdim if vdim is not None else embed_dim
        self._qkv_same_embed_dim = self.kdim == embed_dim and self.vdim == embed_dim
        self.num_heads = num_heads
        self.dropout = dropout
        self.batch_first = batch_first
        self.head_dim = embed_dim // num_heads
        # Registration order matches torch's, so state_dict and parameters() orders agree.
        if self._qkv_same_embed_dim:
            self.in_proj_weight = nn.Parameter(torch.empty((3 * embed_dim, embed_dim), **factory))
            self.register_parameter("q_proj_weight", None)
            self.register_parameter("k_proj_weight", None)
            self.register_parameter("v_proj_weight", None)
        else:
            self.q_proj_weight = nn.Parameter(torch.empty((embed_dim, embed_dim), **factory))
            self.k_proj_weight = nn.Parameter(torch.empty((embed_dim, self.kdim), **factory))
            self.v_proj_weight = nn.Parameter(torch.empty((embed_dim, self.vdim), **factory))
            self.register_parameter("in_proj_weight", None)
        if bias:
            self.in_proj_bias = nn.Parameter(torch.empty(3 * embed_dim, **factory))
        else:
            self.register_parameter("in_proj_bias", None)
        self.out_proj = NonDynamicallyQuantizableLinear(embed_dim, embed_dim, bias=bias,
                                                        **factory)
        if add_bias_kv:
            self.bias_k = nn.Parameter(torch.empty((1, 1, embed_dim), **factory))
            self.bias_v = nn.Parameter(torch.empty((1, 1, embed_dim), **factory))
        else:
            self.bias_k = self.bias_v = None
        self.add_zero_attn = add_zero_attn
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        """torch's init: xavier_uniform_ projections, zero biases, xavier_normal_ bias_k/v."""
        if self._qkv_same_embed_dim:
            xavier_uniform_(self.in_proj_weight)
        else:
            xavier_uniform_(self.q_proj_weight)
            xavier_uniform_(self.k_proj_weight)
            xavier_uniform_(self.v_proj_weight)
        if self.in_proj_bias is not None:
            constant_(self.in_proj_bias, 0.0)
            constant_(self.out_proj.bias, 0.0)
        if self.bias_k is not None:
            xavier_normal_(self.bias_k)
            xavier_normal_(self.bias_v)

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                key_padding_mask: torch.Tensor | None = None, need_weights: bool = True,
                attn_mask: torch.Tensor | None = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        r"""Attention of ``query`` over ``key``/``value``.

        Args:
            query: (L, N, E), or (N, L, E) with ``batch_first``, or (L, E) unbatched.
            key: (S, N, kdim), (N, S, kdim) or (S, kdim).
            value: (S, N, vdim), (N, S, vdim) or (S, vdim).
            key_padding_mask: (N, S), or (S,) unbatched; bool (True = ignore this key) or
                float (added to the scores of that key).
            need_weights: also return the attention weights (computed on a slower explicit
                path; the output itself always comes from the fused kernel).
            attn_mask: (L, S) or (N * num_heads, L, S) ((num_heads, L, S) unbatched); bool
                (True = *not* allowed to attend) or float (added to the scores).
            average_attn_weights: average the returned weights over the heads.
            is_causal: apply the causal mask (query i attends to keys j <= i).

        Returns:
            (attn_output, attn_weights): attn_output has query's layout with E features;
            attn_weights is None unless ``need_weights``, else (N, L, S) averaged or
            (N, num_heads, L, S) per head ((L, S) / (num_heads, L, S) unbatched), where S
            counts the extra ``add_bias_kv``/``add_zero_attn`` positions.
        """
        batched = self._check_inputs(query, key, value, attn_mask, key_padding_mask)
        self_attention, shared_kv = query is key and key is value, key is value
        seq_first = batched and not self.batch_first
        if not batched:  # a batch of one, laid out batch-first
            query, key, value = query.unsqueeze(0), key.unsqueeze(0), value.unsqueeze(0)
        # Project in the input's own layout (no transposed copies), then view as (N, H, L, D).
        q, k, v = self._in_projection(query, key, value, self_attention, shared_kv)
        q, k, v = (self._split_heads(x, seq_first) for x in (q, k, v))
        len_k = k.shape[2]
        k, v = self._append_extra_positions(k, v)
        mask, is_causal = self._attention_mask(attn_mask, key_padding_mask, is_causal, q, len_k,
                                               extra=k.shape[2] - len_k)

        out = scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal,
                                           dropout_p=self.dropout if self.training else 0.0)
        out = F.linear(self._merge_heads(out, seq_first), self.out_proj.weight,
                       self.out_proj.bias)
        out = out if batched else out.squeeze(0)
        if not need_weights:
            return out, None
        weights = attention_probabilities(q, k, mask, is_causal)
        if average_attn_weights:
            weights = weights.mean(dim=1)
        return out, weights if batched else weights.squeeze(0)

    # ---------------------------------------------------------------- layout and projections

    def _in_projection(self, query, key, value, self_attention: bool, shared_kv: bool):
        """q, k, v with E features: one F.linear for self-attention, two for a shared K/V."""
        packed, embed_dim = self._qkv_same_embed_dim, self.embed_dim
        if packed and self_attention:
            return F.linear(query, self.in_proj_weight, self.in_proj_bias).chunk(3, dim=-1)
        biases = ((None,) * 3 if self.in_proj_bias is None
                  else self.in_proj_bias.split(embed_dim))
        if packed and shared_kv:
            bias_kv = None if self.in_proj_bias is None else self.in_proj_bias[embed_dim:]
            k, v = F.linear(key, self.in_proj_weight[embed_dim:], bias_kv).chunk(2, dim=-1)
            return F.linear(query, self.in_proj_weight[:embed_dim], biases[0]), k, v
        weights = (self.in_proj_weight.split(embed_dim) if packed
                   else (self.q_proj_weight, self.k_proj_weight, self.v_proj_weight))
        return tuple(F.linear(x, w, b) for x, w, b in zip((query, key, value), weights, biases,
                                                  strict=True))

    def _split_heads(self, x: torch.Tensor, seq_first: bool) -> torch.Tensor:
        """(L, N, E) if ``seq_first`` else (N, L, E) -> (N, H, L, D), a view."""
        x = x.unflatten(-1, (self.num_heads, self.head_dim))
        return x.permute(1, 2, 0, 3) if seq_first else x.transpose(1, 2)

    def _merge_heads(self, out: torch.Tensor, seq_first: bool) -> torch.Tensor:
        """(N, H, L, D) -> contiguous (L, N, E) if ``seq_first`` else (N, L, E)."""
        return (out.permute(2, 0, 1, 3) if seq_first else out.transpose(1, 2)).flatten(2)

    def _append_extra_positions(self, k: torch.Tensor, v: torch.Tensor):
        """Appends the ``bias_k``/``bias_v`` position, then the zero position, to (N, H, S, D)."""
        batch, heads, _, dim = k.shape
        if self.bias_k is not None:
            k = torch.cat([k, self.bias_k.view(1, heads, 1, dim).expand(batch, -1, -1, -1)], 2)
            v = torch.cat([v, self.bias_v.view(1, heads, 1, dim).expand(batch, -1, -1, -1)], 2)
        if self.add_zero_attn:
            k = torch.cat([k, k.new_zeros(batch, heads, 1, dim)], dim=2)
            v = torch.cat([v, v.new_zeros(batch, heads, 1, dim)], dim=2)
        return k, v

    # ---------------------------------------------------------------- validation and masks

    def _check_inputs(self, query, key, value, attn_mask, key_padding_mask,
                      mask_names=("attn_mask", "key_padding_mask")) -> bool:
        """Validates the inputs; returns whether they are batched.

        ``mask_names`` name the masks in the errors: the Transformer layers pass theirs
        (``tgt_mask``, ``memory_key_padding_mask``, ...), which reach this module renamed.
        """
        for name, x in (("query", query), ("key", key), ("value", value)):
            if not isinstance(x, torch.Tensor):
                raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        if query.dim() not in (2, 3):
            raise ValueError(f"query must be (L, N, E), (N, L, E) or unbatched (L, E), got "
                             f"shape {tuple(query.shape)}")
        for name, x, features in (("query", query, self.embed_dim), ("key", key, self.kdim),
                                  ("value", value, self.vdim)):
            if x.dim() != query.dim():
                raise ValueError(f"{name} must have query's {query.dim()} dimensions, got "
                                 f"shape {tuple(x.shape)}")
            if x.shape[-1] != features:
                what = {"query": "embed_dim", "key": "kdim", "value": "vdim"}[name]
                raise ValueError(f"{name} must have {what}={features} features in its last "
                                 f"dimension, got shape {tuple(x.shape)}")
        if key.shape[:-1] != value.shape[:-1]:
            raise ValueError(f"key and value must have the same sequence and batch sizes, got "
                             f"shapes {tuple(key.shape)} and {tuple(value.shape)}")
        batched = query.dim() == 3
        batch_dim = 0 if self.batch_first else 1
        if batched and key.shape[batch_dim] != query.shape[batch_dim]:
            raise ValueError(f"key must have query's batch size {query.shape[batch_dim]} in "
                             f"dimension {batch_dim}, got shape {tuple(key.shape)}")
        seq_dim = 1 if batched and self.batch_first else 0
        batch = query.shape[batch_dim] if batched else 1
        len_q, len_k = query.shape[seq_dim], key.shape[seq_dim]
        attn_mask_name, key_padding_mask_name = mask_names
        _check_mask(attn_mask, attn_mask_name,
                    ((len_q, len_k), (batch * self.num_heads, len_q, len_k)))
        _check_mask(key_padding_mask, key_padding_mask_name,
                    ((batch, len_k) if batched else (len_k,),))
        return batched

    def _attention_mask(self, attn_mask, key_padding_mask, is_causal, q, len_k, extra):
        """torch's masks -> (mask, is_causal) for fasttx's SDPA, given q (N, H, L, D).

        The mask broadcasts to (N, H, L, S + extra): bool True = may attend, or float added.
        The ``extra`` appended key positions (bias_k, zero attention) stay visible.
        """
        batch, heads, len_q = q.shape[:3]
        merged = None
        if key_padding_mask is not None:
            mask = _visible(key_padding_mask, extra)
            merged = mask.reshape(batch, 1, 1, len_k + extra)  # broadcast: no (N, H, L, S) copy
        if attn_mask is not None:
            mask = _visible(attn_mask, extra)
            if mask.dim() == 3:
                mask = mask.reshape(batch, heads, len_q, len_k + extra)
            merged = _combine(merged, mask, q.dtype)
        if is_causal and extra:
            # Top-left causal over the original keys; the extra positions stay visible.
            causal = torch.ones(len_q, len_k, dtype=torch.bool, device=q.device).tril()
            merged = _combine(merged, F.pad(causal, (0, extra), value=True), q.dtype)
            is_causal = False
        return merged, bool(is_causal)


def _check_mask(mask, name: str, shapes: tuple[tuple[int, ...], ...]) -> None:
    """Checks that ``mask`` is None, or a bool or float tensor of one of ``shapes``."""
    if mask is None:
        return
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or None, got {type(mask).__name__}")
    if mask.dtype != torch.bool and not mask.is_floating_point():
        raise TypeError(f"{name} must be bool or floating point, got {mask.dtype}")
    if tuple(mask.shape) not in shapes:
        expected = " or ".join(str(shape) for shape in shapes)
        raise ValueError(f"{name} must have shape {expected}, got {tuple(mask.shape)}")


def _visible(mask: torch.Tensor, extra: int) -> torch.Tensor:
    """A torch-convention mask (bool True = ignore) -> fasttx's (bool True = may attend).

    Float masks are kept (they are added either way). ``extra`` visible columns are appended.
    """
    is_bool = mask.dtype == torch.bool
    if is_bool:
        mask = ~mask
    return F.pad(mask, (0, extra), value=True if is_bool else 0.0) if extra else mask


def _combine(a: torch.Tensor | None, b: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Both masks at once: logical and of bool masks, else the sum of additive masks."""
    if a is None:
        return b
    if a.dtype == torch.bool and b.dtype == torch.bool:
        return a & b
    return _additive(a, dtype) + _additive(b, dtype)


def _additive(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    if mask.is_floating_point():
        return mask
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(~mask,
                                                                                float("-inf"))
