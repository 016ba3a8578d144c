"""Hyper-parameters of the encoder-decoder Transformer and the presets of the paper.

    config = TransformerConfig.base(vocab_size=32000)        # Vaswani et al. (2017), Table 3
    config = TransformerConfig.preset("big", dropout=0.1)    # any field can be overridden
    config = TransformerConfig.tiny()                         # learns the copy task on CPU
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from fasttx import _checks
from fasttx.ops.library import ACTIVATIONS

__all__ = ["PRESETS", "TransformerConfig"]

#: Preset name -> field values. ``base`` and ``big`` are the paper's (Table 3; 37000 is its
#: shared English-German BPE vocabulary). ``tiny`` is sized to learn the copy task of
#: :mod:`fasttx.models.tasks` on one CPU core in ~20 s: 2+2 layers of width 64 are plenty
#: for copying. It has no dropout and no label smoothing: the task draws fresh sequences
#: every step, so there is nothing to over-fit and regularisation only slows learning; the
#: loss can then approach 0; and on CPU the reference backend regenerates every dropout
#: mask elementwise in plain torch (Philox, ~100 passes per mask), which made a tiny step
#: about 5x slower with dropout 0.1 everywhere (measured 2026-11-21 on this project's
#: 2-core CPU machine).
PRESETS: dict[str, dict] = {
    "tiny": dict(vocab_size=16, d_model=64, num_heads=4, d_ff=128, num_encoder_layers=2,
                 num_decoder_layers=2, dropout=0.0, label_smoothing=0.0, max_len=64),
    "base": dict(vocab_size=37000, d_model=512, num_heads=8, d_ff=2048, num_encoder_layers=6,
                 num_decoder_layers=6, dropout=0.1, label_smoothing=0.1, max_len=1024),
    "big": dict(vocab_size=37000, d_model=1024, num_heads=16, d_ff=4096, num_encoder_layers=6,
                num_decoder_layers=6, dropout=0.3, label_smoothing=0.1, max_len=1024),
}


@dataclass
class TransformerConfig:
    """Everything that defines a :class:`~fasttx.models.Seq2SeqTransformer`.

    Attributes:
        vocab_size: size of the vocabulary shared by source and target.
        d_model: width of the residual stream (embeddings, attention and FFN outputs).
        num_heads: attention heads; d_model must be a multiple of it.
        d_ff: hidden width of the position-wise feed-forward network.
        num_encoder_layers, num_decoder_layers: depth of the two stacks.
        dropout: residual dropout (on each sub-layer output before add & norm) and on the
            sums of embeddings and positions (P_drop of the paper).
        attention_dropout: dropout on the attention weights (0 in the paper).
        activation_dropout: dropout on the FFN's hidden activation (0 in the paper).
        label_smoothing: epsilon_ls of the label-smoothed cross-entropy.
        max_len: longest source or target sequence (size of the position table).
        pad_id, bos_id, eos_id: special token ids; padding is masked everywhere.
        activation: FFN activation, "relu" (paper), "gelu" or "gelu_tanh".
        norm_first: False for post-norm (the paper), True for pre-norm.
        layer_norm_eps: epsilon of every LayerNorm.
    """

    vocab_size: int
    d_model: int = 512
    num_heads: int = 8
    d_ff: int = 2048
    num_encoder_layers: int = 6
    num_decoder_layers: int = 6
    dropout: float = 0.1
    attention_dropout: float = 0.0
    activation_dropout: float = 0.0
    label_smoothing: float = 0.1
    max_len: int = 1024
    pad_id: int = 0
    bos_id: int = 1
    eos_id: int = 2
    activation: str = "relu"
    norm_first: bool = False
    layer_norm_eps: float = 1e-5

    def __post_init__(self):
        for name in ("vocab_size", "d_model", "num_heads", "d_ff", "num_encoder_layers",
                     "num_decoder_layers", "max_len"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if self.d_model % self.num_heads:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by num_heads "
                             f"({self.num_heads})")
        if self.max_len < 2:
            raise ValueError(f"max_len must be at least 2 (bos + one token), got {self.max_len}")
        for name in ("dropout", "attention_dropout", "activation_dropout", "label_smoothing"):
            _checks.probability(name, getattr(self, name))
        for name in ("pad_id", "bos_id", "eos_id"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) \
                    or not 0 <= value < self.vocab_size:
                raise ValueError(f"{name} must be a token id in [0, vocab_size="
                                 f"{self.vocab_size}), got {value!r}")
        if self.pad_id in (self.bos_id, self.eos_id):
            raise ValueError(f"pad_id ({self.pad_id}) must differ from bos_id ({self.bos_id}) "
                             f"and eos_id ({self.eos_id}): padding is masked out")
        _checks.choice("activation", self.activation, ACTIVATIONS)
        _checks.flag("norm_first", self.norm_first)
        _checks.positive("layer_norm_eps", self.layer_norm_eps)

    @property
    def head_dim(self) -> int:
        return self.d_model // self.num_heads

    def replace(self, **changes) -> TransformerConfig:
        """A copy with ``changes`` applied (and validated)."""
        return dataclasses.replace(self, **changes)

    @classmethod
    def preset(cls, name: str, **overrides) -> TransformerConfig:
        """The preset ``name`` ("tiny", "base", "big") with ``overrides`` applied."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; the presets are {sorted(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})

    @classmethod
    def tiny(cls, **overrides) -> TransformerConfig:
        """d_model 64, 4 heads, d_ff 128, 2+2 layers, no dropout: the copy-task model."""
        return cls.preset("tiny", **overrides)

    @classmethod
    def base(cls, **overrides) -> TransformerConfig:
        """The paper's base model: d_model 512, 8 heads, d_ff 2048, 6+6 layers, dropout 0.1."""
        return cls.preset("base", **overrides)

    @classmethod
    def big(cls, **overrides) -> TransformerConfig:
        """The paper's big model: d_model 1024, 16 heads, d_ff 4096, 6+6 layers, dropout 0.3."""
        return cls.preset("big", **overrides)
