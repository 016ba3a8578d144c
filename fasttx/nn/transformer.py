"""Drop-in ``torch.nn`` Transformer modules over fasttx's fused ops.

``TransformerEncoderLayer``, ``TransformerDecoderLayer``, ``TransformerEncoder``,
``TransformerDecoder`` and ``Transformer`` take torch's constructor arguments, have torch's
submodule names (so their state_dict keys are torch's, in torch's order) and torch's forward
signatures. Inside, each layer runs:

* attention through :class:`fasttx.nn.MultiheadAttention`
  (:func:`fasttx.scaled_dot_product_attention`),
* every residual add + dropout + LayerNorm as one :func:`fasttx.add_layer_norm` call
  (``norm1``..``norm3`` are :class:`fasttx.nn.AddLayerNorm`, keys ``weight``/``bias`` like
  ``nn.LayerNorm``),
* the feed-forward network as one :func:`fasttx.feed_forward` call over ``linear1``/``linear2``.

Post-norm (``norm_first=False``, the paper):  x = norm1(x + dropout1(self_attn(x))), ...
Pre-norm (``norm_first=True``):               x = x + dropout1(self_attn(norm1(x))), ...
In pre-norm the add of one sub-layer and the norm of the next are a single fused call
(``add_layer_norm(..., return_residual=True)``); only the last residual add is plain torch.

Differences from torch.nn: no NestedTensor fast path (``enable_nested_tensor`` is accepted and
ignored); ``is_causal=True`` (``tgt_is_causal``) is trusted as torch's hint that the mask is the
causal mask, which is applied without reading the mask, and needs no mask (torch raises); fully
masked query rows give zeros instead of NaN; bad inputs raise ValueError/TypeError; the
activation must be ReLU or GELU (the ones the fused FFN implements).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.init import xavier_uniform_

from fasttx.nn.attention import MultiheadAttention
from fasttx.nn.layers import AddLayerNorm
from fasttx.ops.add_layer_norm import add_layer_norm
from fasttx.ops.feed_forward import feed_forward

__all__ = [
    "Transformer",
    "TransformerDecoder",
    "TransformerDecoderLayer",
    "TransformerEncoder",
    "TransformerEncoderLayer",
]

_STRING_ACTIVATIONS = {"relu": F.relu, "gelu": F.gelu}
_FUNCTIONS = ((F.relu, "relu"), (torch.relu, "relu"), (F.gelu, "gelu"))


def _activation_name(activation) -> str:
    """The fused FFN's name ("relu", "gelu", "gelu_tanh") of a torch activation."""
    if isinstance(activation, nn.ReLU):
        return "relu"
    for function, name in _FUNCTIONS:
        if activation is function:
            return name
    if isinstance(activation, nn.GELU):
        return "gelu_tanh" if activation.approximate == "tanh" else "gelu"
    raise ValueError(f"activation must be 'relu', 'gelu', F.relu, F.gelu, nn.ReLU() or "
                     f"nn.GELU(approximate='none' | 'tanh'), got {activation!r}")


def _resolve_activation(activation):
    """torch's rule (strings become F.relu / F.gelu), checked against the fused FFN."""
    if isinstance(activation, str):
        if activation not in _STRING_ACTIVATIONS:
            raise ValueError(f"activation should be 'relu' or 'gelu', got {activation!r}")
        activation = _STRING_ACTIVATIONS[activation]
    _activation_name(activation)
    return activation


def _dropout_p(dropout: nn.Dropout) -> float:
    return dropout.p if dropout.training else 0.0


class _LayerOps(nn.Module):
    """The fused sub-layer pieces shared by the encoder and decoder layers."""

    def _add_norm(self, norm: AddLayerNorm, x, residual=None, dropout=None,
                  return_residual=False):
        """norm(residual + dropout(x)) in one fasttx.add_layer_norm call (+ the sum if asked)."""
        return add_layer_norm(x, residual, norm.weight, norm.bias, norm.eps,
                              dropout_p=0.0 if dropout is None else _dropout_p(dropout),
                              return_residual=return_residual)

    def _ff_block(self, x: torch.Tensor) -> torch.Tensor:
        """linear2(dropout(activation(linear1(x)))) in one fasttx.feed_forward call."""
        return feed_forward(x, self.linear1.weight, self.linear1.bias, self.linear2.weight,
                            self.linear2.bias, activation=_activation_name(self.activation),
                            dropout_p=_dropout_p(self.dropout))

    def _attend(self, attention: MultiheadAttention, x, memory, attn_mask, key_padding_mask,
                is_causal, mask_names: tuple[str, str]):
        """``attention`` of x over memory; ``mask_names`` are the layer's names of the two
        masks (``tgt_mask``, ``tgt_key_padding_mask``), which the errors use."""
        attention._check_inputs(x, memory, memory, attn_mask, key_padding_mask, mask_names)
        if is_causal:
            # torch's contract: the hint says attn_mask *is* the causal mask. Trusting it, the
            # kernels skip the masked tiles and read the padding as one broadcast row instead
            # of a (N, 1, L, L) merge of both masks.
            attn_mask = None
        return attention(x, memory, memory, attn_mask=attn_mask,
                         key_padding_mask=key_padding_mask, need_weights=False,
                         is_causal=is_causal)[0]

    def _sublayers(self, x, blocks):
        """Runs ``blocks`` — (norm, dropout, fn) with fn(x) the sub-layer — with residuals.

        Post-norm: x = norm(x + dropout(fn(x))) per block. Pre-norm: x = x + dropout(fn(norm(x)))
        where each add is fused with the next block's norm.
        """
        if not self.norm_first:
            for norm, dropout, fn in blocks:
                x = self._add_norm(norm, fn(x), x, dropout)
            return x
        h = self._add_norm(blocks[0][0], x)
        for (_, dropout, fn), (next_norm, _, _) in zip(blocks, blocks[1:], strict=False):
            h, x = self._add_norm(next_norm, fn(h), x, dropout, return_residual=True)
        _, dropout, fn = blocks[-1]
        return x + dropout(fn(h))


class TransformerEncoderLayer(_LayerOps):
    r"""Self-attention + feed-forward, as ``torch.nn.TransformerEncoderLayer``.

    Args:
        d_model: E, the model dimension.
        nhead: attention heads (E divisible by nhead).
        dim_feedforward: F, the hidden size of the feed-forward network.
        dropout: dropout after attention, inside the FFN and on each sub-layer output.
        activation: "relu", "gelu", F.relu, F.gelu, nn.ReLU(), nn.GELU() or
            nn.GELU(approximate="tanh").
        layer_norm_eps: LayerNorm epsilon.
        batch_first: (N, S, E) instead of (S, N, E).
        norm_first: pre-norm instead of post-norm.
        bias: learn biases in the Linear and LayerNorm layers.

    forward(src, src_mask=None, src_key_padding_mask=None, is_causal=False):
        src (S, N, E), (N, S, E) or unbatched (S, E); src_mask (S, S) or (N * nhead, S, S),
        src_key_padding_mask (N, S) or (S,) with torch's conventions (bool True = ignore,
        float added); returns src's shape.
    """

    __constants__ = ["norm_first"]

    def __init__(self, d_model: int, nhead: int, dim_feedforward: int = 2048,
                 dropout: float = 0.1, activation=F.relu, layer_norm_eps: float = 1e-5,
                 batch_first: bool = False, norm_first: bool = False, bias: bool = True,
                 device=None, dtype=None) -> None:
        factory = {"device": device, "dtype": dtype}
        super().__init__()
        self.self_attn = MultiheadAttention(d_model, nhead, dropout=dropout, bias=bias,
                                            batch_first=batch_first, **factory)
        self.linear1 = nn.Linear(d_model, dim_feedforward, bias=bias, **factory)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model, bias=bias, **factory)
        self.norm_first = norm_first
        self.norm1 = AddLayerNorm(d_model, eps=layer_norm_eps, bias=bias, **factory)
        self.norm2 = AddLayerNorm(d_model, eps=layer_norm_eps, bias=bias, **factory)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.activation = _resolve_activation(activation)

    def forward(self, src: torch.Tensor, src_mask: torch.Tensor | None = None,
                src_key_padding_mask: torch.Tensor | None = None,
                is_causal: bool = False) -> torch.Tensor:
        def self_attention(x):
            return self._attend(self.self_attn, x, x, src_mask, src_key_padding_mask, is_causal,
                                ("src_mask", "src_key_padding_mask"))

        return self._sublayers(src, [(self.norm1, self.dropout1, self_attention),
                                     (self.norm2, self.dropout2, self._ff_block)])


class TransformerDecoderLayer(_LayerOps):
    r"""Masked self-attention, cross-attention, feed-forward: ``torch.nn.TransformerDecoderLayer``.

    Arguments as :class:`TransformerEncoderLayer`; adds ``multihead_attn`` (over the memory),
    ``norm3`` and ``dropout3``.

    forward(tgt, memory, tgt_mask=None, memory_mask=None, tgt_key_padding_mask=None,
            memory_key_padding_mask=None, tgt_is_causal=False, memory_is_causal=False):
        tgt (T, N, E) / (N, T, E) / (T, E); memory (S, N, E) / (N, S, E) / (S, E);
        tgt_mask (T, T) or (N * nhead, T, T); memory_mask (T, S) or (N * nhead, T, S);
        tgt_key_padding_mask (N, T); memory_key_padding_mask (N, S). Returns tgt's shape.
    """

    __constants__ = ["norm_first"]

    def __init__(self, d_model: int, nhead: int, dim_feedforward: int = 2048,
                 dropout: float = 0.1, activation=F.relu, layer_norm_eps: float = 1e-5,
                 batch_first: bool = False, norm_first: bool = False, bias: bool = True,
                 device=None, dtype=None) -> None:
        factory = {"device": device, "dtype": dtype}
        super().__init__()
        self.self_attn = MultiheadAttention(d_model, nhead, dropout=dropout, bias=bias,
                                            batch_first=batch_first, **factory)
        self.multihead_attn = MultiheadAttention(d_model, nhead, dropout=dropout, bias=bias,
                                                 batch_first=batch_first, **factory)
        self.linear1 = nn.Linear(d_model, dim_feedforward, bias=bias, **factory)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model, bias=bias, **factory)
        self.norm_first = norm_first
        self.norm1 = AddLayerNorm(d_model, eps=layer_norm_eps, bias=bias, **factory)
        self.norm2 = AddLayerNorm(d_model, eps=layer_norm_eps, bias=bias, **factory)
        self.norm3 = AddLayerNorm(d_model, eps=layer_norm_eps, bias=bias, **factory)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.dropout3 = nn.Dropout(dropout)
        self.activation = _resolve_activation(activation)

    def forward(self, tgt: torch.Tensor, memory: torch.Tensor,
                tgt_mask: torch.Tensor | None = None, memory_mask: torch.Tensor | None = None,
                tgt_key_padding_mask: torch.Tensor | None = None,
                memory_key_padding_mask: torch.Tensor | None = None,
                tgt_is_causal: bool = False, memory_is_causal: bool = False) -> torch.Tensor:
        def self_attention(x):
            return self._attend(self.self_attn, x, x, tgt_mask, tgt_key_padding_mask,
                                tgt_is_causal, ("tgt_mask", "tgt_key_padding_mask"))

        def cross_attention(x):
            return self._attend(self.multihead_attn, x, memory, memory_mask,
                                memory_key_padding_mask, memory_is_causal,
                                ("memory_mask", "memory_key_padding_mask"))

        return self._sublayers(tgt, [(self.norm1, self.dropout1, self_attention),
                                     (self.norm2, self.dropout2, cross_attention),
                                     (self.norm3, self.dropout3, self._ff_block)])


def _causal_hint(mask: torch.Tensor | None, is_causal: bool | None, size: int):
    """torch's causal-mask detection, returning (mask, is_causal) for the layers.

    With ``is_causal=None`` a mask equal to ``generate_square_subsequent_mask(size)`` (in its
    dtype) is detected, and then dropped in favour of ``is_causal=True``: the fused kernels
    skip the masked blocks instead of reading a mask. An explicit hint is passed on as is.

    Under ``torch.compile`` the detection is skipped and the mask kept (applying it gives the
    same result, only slower): comparing its values would make the graph depend on data, a
    graph break that ``fullgraph=True`` refuses. Pass ``is_causal=True`` to get the fast path.
    """
    if is_causal is not None or mask is None:
        return mask, bool(is_causal)
    if torch.compiler.is_compiling():
        return mask, False
    causal = Transformer.generate_square_subsequent_mask(size, device=mask.device,
                                                         dtype=mask.dtype)
    if mask.shape == causal.shape and not mask.requires_grad and bool((mask == causal).all()):
        return None, True
    return mask, False


def _seq_len(x: torch.Tensor, batch_first: bool) -> int:
    return x.shape[0] if x.dim() == 2 or not batch_first else x.shape[1]


def _clones(layer: nn.Module, num_layers: int) -> nn.ModuleList:
    return nn.ModuleList([copy.deepcopy(layer) for _ in range(num_layers)])


class TransformerEncoder(nn.Module):
    r"""A stack of ``num_layers`` deep copies of ``encoder_layer``, then ``norm`` if given.

    As ``torch.nn.TransformerEncoder`` (keys ``layers.<i>.*``, ``norm.*``); ``norm`` is applied
    as given (an :class:`AddLayerNorm` or a plain ``nn.LayerNorm``). ``enable_nested_tensor``
    and ``mask_check`` are accepted and ignored: padding is handled by broadcast masks.

    forward(src, mask=None, src_key_padding_mask=None, is_causal=None): shapes as
    :class:`TransformerEncoderLayer`; ``is_causal=None`` detects a causal ``mask`` (in eager
    mode: under torch.compile the mask is applied as given).
    """

    __constants__ = ["norm"]

    def __init__(self, encoder_layer: nn.Module, num_layers: int, norm: nn.Module | None = None,
                 enable_nested_tensor: bool = True, mask_check: bool = True) -> None:
        super().__init__()
        self.layers = _clones(encoder_layer, num_layers)
        self.num_layers = num_layers
        self.norm = norm
        self.enable_nested_tensor = enable_nested_tensor
        self.use_nested_tensor = False
        self.mask_check = mask_check

    def forward(self, src: torch.Tensor, mask: torch.Tensor | None = None,
                src_key_padding_mask: torch.Tensor | None = None,
                is_causal: bool | None = None) -> torch.Tensor:
        batch_first = self.layers[0].self_attn.batch_first
        mask, is_causal = _causal_hint(mask, is_causal, _seq_len(src, batch_first))
        output = src
        for layer in self.layers:
            output = layer(output, src_mask=mask, src_key_padding_mask=src_key_padding_mask,
                           is_causal=is_causal)
        return output if self.norm is None else self.norm(output)


class TransformerDecoder(nn.Module):
    r"""A stack of ``num_layers`` deep copies of ``decoder_layer``, then ``norm`` if given.

    As ``torch.nn.TransformerDecoder`` (keys ``layers.<i>.*``, ``norm.*``).

    forward(tgt, memory, tgt_mask=None, memory_mask=None, tgt_key_padding_mask=None,
            memory_key_padding_mask=None, tgt_is_causal=None, memory_is_causal=False):
        shapes as :class:`TransformerDecoderLayer`; ``tgt_is_causal=None`` detects a causal
        ``tgt_mask`` (in eager mode: under torch.compile the mask is applied as given).
    """

    __constants__ = ["norm"]

    def __init__(self, decoder_layer: nn.Module, num_layers: int,
                 norm: nn.Module | None = None) -> None:
        super().__init__()
        self.layers = _clones(decoder_layer, num_layers)
        self.num_layers = num_layers
        self.norm = norm

    def forward(self, tgt: torch.Tensor, memory: torch.Tensor,
                tgt_mask: torch.Tensor | None = None, memory_mask: torch.Tensor | None = None,
                tgt_key_padding_mask: torch.Tensor | None = None,
                memory_key_padding_mask: torch.Tensor | None = None,
                tgt_is_causal: bool | None = None, memory_is_causal: bool = False) -> torch.Tensor:
        batch_first = self.layers[0].self_attn.batch_first
        tgt_mask, tgt_is_causal = _causal_hint(tgt_mask, tgt_is_causal,
                                               _seq_len(tgt, batch_first))
        output = tgt
        for layer in self.layers:
            output = layer(output, memory, tgt_mask=tgt_mask, memory_mask=memory_mask,
                           tgt_key_padding_mask=tgt_key_padding_mask,
                           memory_key_padding_mask=memory_key_padding_mask,
                           tgt_is_causal=tgt_is_causal, memory_is_causal=memory_is_causal)
        return output if self.norm is None else self.norm(output)


class Transformer(nn.Module):
    r"""The encoder-decoder Transformer, as ``torch.nn.Transformer``.

    Args: as torch's (d_model=512, nhead=8, num_encoder_layers=6, num_decoder_layers=6,
    dim_feedforward=2048, dropout=0.1, activation=F.relu, custom_encoder=None,
    custom_decoder=None, layer_norm_eps=1e-5, batch_first=False, norm_first=False, bias=True,
    device=None, dtype=None). The encoder and decoder end with an :class:`AddLayerNorm`
    (keys ``encoder.norm.*``, ``decoder.norm.*``). Every matrix is xavier_uniform_-initialised.

    forward(src, tgt, src_mask=None, tgt_mask=None, memory_mask=None, src_key_padding_mask=None,
            tgt_key_padding_mask=None, memory_key_padding_mask=None, src_is_causal=None,
            tgt_is_causal=None, memory_is_causal=False):
        src (S, N, E), tgt (T, N, E) ((N, S, E), (N, T, E) with batch_first; (S, E), (T, E)
        unbatched) -> (T, N, E). Masks as in the layers.
    """

    def __init__(self, d_model: int = 512, nhead: int = 8, num_encoder_layers: int = 6,
                 num_decoder_layers: int = 6, dim_feedforward: int = 2048, dropout: float = 0.1,
                 activation=F.relu, custom_encoder: nn.Module | None = None,
                 custom_decoder: nn.Module | None = None, layer_norm_eps: float = 1e-5,
                 batch_first: bool = False, norm_first: bool = False, bias: bool = True,
                 device=None, dtype=None) -> None:
        factory = {"device": device, "dtype": dtype}
        super().__init__()
        layer_args = (d_model, nhead, dim_feedforward, dropout, activation, layer_norm_eps,
                      batch_first, norm_first, bias)
        if custom_encoder is not None:
            self.encoder = custom_encoder
        else:
            self.encoder = TransformerEncoder(
                TransformerEncoderLayer(*layer_args, **factory), num_encoder_layers,
                AddLayerNorm(d_model, eps=layer_norm_eps, bias=bias, **factory))
        if custom_decoder is not None:
            self.decoder = custom_decoder
        else:
            self.decoder = TransformerDecoder(
                TransformerDecoderLayer(*layer_args, **factory), num_decoder_layers,
                AddLayerNorm(d_model, eps=layer_norm_eps, bias=bias, **factory))
        self._reset_parameters()
        self.d_model = d_model
        self.nhead = nhead
        self.batch_first = batch_first

    def forward(self, src: torch.Tensor, tgt: torch.Tensor, src_mask: torch.Tensor | None = None,
                tgt_mask: torch.Tensor | None = None, memory_mask: torch.Tensor | None = None,
                src_key_padding_mask: torch.Tensor | None = None,
                tgt_key_padding_mask: torch.Tensor | None = None,
                memory_key_padding_mask: torch.Tensor | None = None,
                src_is_causal: bool | None = None, tgt_is_causal: bool | None = None,
                memory_is_causal: bool = False) -> torch.Tensor:
        if src.dim() != tgt.dim():
            raise ValueError(f"src and tgt must both be batched (3-D) or unbatched (2-D), got "
                             f"shapes {tuple(src.shape)} and {tuple(tgt.shape)}")
        batch_dim = 0 if self.batch_first else 1
        if src.dim() == 3 and src.shape[batch_dim] != tgt.shape[batch_dim]:
            raise ValueError(f"src and tgt must have the same batch size (dimension "
                             f"{batch_dim}), got shapes {tuple(src.shape)} and "
                             f"{tuple(tgt.shape)}")
        if src.shape[-1] != self.d_model or tgt.shape[-1] != self.d_model:
            raise ValueError(f"src and tgt must have d_model={self.d_model} features, got "
                             f"shapes {tuple(src.shape)} and {tuple(tgt.shape)}")
        memory = self.encoder(src, mask=src_mask, src_key_padding_mask=src_key_padding_mask,
                              is_causal=src_is_causal)
        return self.decoder(tgt, memory, tgt_mask=tgt_mask, memory_mask=memory_mask,
                            tgt_key_padding_mask=tgt_key_padding_mask,
                            memory_key_padding_mask=memory_key_padding_mask,
                            tgt_is_causal=tgt_is_causal, memory_is_causal=memory_is_causal)

    @staticmethod
    def generate_square_subsequent_mask(sz: int, device=None, dtype=None) -> torch.Tensor:
        """(sz, sz) float causal mask: -inf above the diagonal, 0 elsewhere (as torch's)."""
        return torch.triu(torch.full((sz, sz), float("-inf"), dtype=dtype, device=device),
                          diagonal=1)

    def _reset_parameters(self) -> None:
        for p in self.parameters():
            if p.dim() > 1:
                xavier_uniform_(p)
