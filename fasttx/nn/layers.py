"""Modules over the fused add + LayerNorm and feed-forward ops."""

from __future__ import annotations

import torch
from torch import nn

from fasttx import _checks
from fasttx.ops.add_layer_norm import add_layer_norm
from fasttx.ops.feed_forward import feed_forward
from fasttx.ops.library import ACTIVATIONS


class AddLayerNorm(nn.Module):
    """``LayerNorm(residual + Dropout(x))`` in one fused op.

    Takes ``nn.LayerNorm``'s arguments in its order (``normalized_shape`` must be the last
    dimension), plus the keyword ``dropout``; parameters ``weight`` and ``bias`` (D,) have
    nn.LayerNorm's names, so a LayerNorm's state_dict loads as is. Dropout (on x) is
    applied in training mode only.

    forward(x, residual=None, return_residual=False):
        x, residual (..., D) -> y (..., D), or (y, s) with s = residual + dropout(x).
    """

    def __init__(self, normalized_shape, eps: float = 1e-5, elementwise_affine: bool = True,
                 bias: bool = True, device=None, dtype=None, *, dropout: float = 0.0):
        super().__init__()
        if isinstance(normalized_shape, (tuple, list, torch.Size)):
            if len(normalized_shape) != 1:
                raise ValueError("AddLayerNorm normalises over the last dimension only: "
                                 f"normalized_shape must be an int, got {normalized_shape}")
            normalized_shape = normalized_shape[0]
        self.normalized_shape = (int(normalized_shape),)
        self.eps = _checks.positive("eps", eps)
        self.dropout = _checks.probability("dropout", dropout)
        factory = {"device": device, "dtype": dtype}
        self.weight = (nn.Parameter(torch.ones(normalized_shape, **factory))
                       if elementwise_affine else None)
        self.bias = (nn.Parameter(torch.zeros(normalized_shape, **factory))
                     if elementwise_affine and bias else None)

    def forward(self, x, residual=None, return_residual=False):
        return add_layer_norm(x, residual, self.weight, self.bias, self.eps,
                              dropout_p=self.dropout if self.training else 0.0,
                              return_residual=return_residual)

    def extra_repr(self) -> str:
        return f"{self.normalized_shape}, eps={self.eps}, dropout={self.dropout}"


class FeedForward(nn.Module):
    """``linear2(Dropout(act(linear1(x))))`` in one fused op.

    Submodules ``linear1`` (D -> F) and ``linear2`` (F -> D) keep nn.TransformerEncoderLayer's
    parameter names. Dropout (on the hidden activation) is applied in training mode only.

    forward(x): (..., D) -> (..., D).
    """

    def __init__(self, d_model: int, dim_feedforward: int, dropout: float = 0.0,
                 activation: str = "relu", bias: bool = True, device=None, dtype=None):
        super().__init__()
        _checks.choice("activation", activation, ACTIVATIONS)
        self.linear1 = nn.Linear(d_model, dim_feedforward, bias=bias, device=device, dtype=dtype)
        self.linear2 = nn.Linear(dim_feedforward, d_model, bias=bias, device=device, dtype=dtype)
        self.dropout = _checks.probability("dropout", dropout)
        self.activation = activation

    def forward(self, x):
        return feed_forward(x, self.linear1.weight, self.linear1.bias, self.linear2.weight,
                            self.linear2.bias, activation=self.activation,
                            dropout_p=self.dropout if self.training else 0.0)

    def extra_repr(self) -> str:
        return f"activation={self.activation!r}, dropout={self.dropout}"
