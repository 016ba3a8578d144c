"""fasttx as a Hugging Face transformers attention backend.

    import fasttx.integrations.transformers as fasttx_hf
    fasttx_hf.register()                      # once, before the model is built
    model = AutoModelForSeq2SeqLM.from_pretrained(name, attn_implementation="fasttx")
    model.set_attn_implementation("fasttx")   # or switch a model that is already built

``register()`` adds :func:`attention_forward` to transformers' ``AttentionInterface`` and,
under the same name, a mask builder to its ``AttentionMaskInterface``: fasttx takes the
masks in SDPA's form (bool, True = may attend; or None with the causal flag where nothing
is padded), except that a padding-only mask (encoder and cross attention) is one row
expanded with stride 0, the key-padding form fasttx's kernels read fastest. Models
that still build their own masks get eager's additive float mask instead, which fasttx
adds to the scores. Encoder, decoder and cross attention, training (attention dropout
from fasttx's Philox stream) and ``generate()`` with the key/value caches all run on
fasttx's kernels; the rest of the model is untouched transformers code, so checkpoints
load unchanged.

Supported: transformers >= 4.53, the release from which BART, mBART, Marian, Pegasus,
M2M100 and Whisper route their attention through ``AttentionInterface`` (tested on
4.57 and the newest 5.x), as do decoder-only models (Mistral, Qwen2 and Phi-3 tested), with
their ``sliding_window``, which transformers folds into the mask it builds (a call without
a mask is accepted only when every key lies inside the window). ``output_attentions=True``
and 4.5x's ``head_mask`` work: the weights come from an explicit, slower path. Options
fasttx has no kernel for (``softcap``, ``s_aux``, ``position_bias``, the paged cache of
continuous batching) raise ``ValueError`` instead of computing something else.

Differences from ``"eager"``: a query row that may attend to no key (a left-padded
decoder position) gives zeros, where eager spreads it evenly over the masked keys;
the returned attention weights are taken before dropout.
"""

from __future__ import annotations

import re

import torch

from fasttx import backends
from fasttx.ops.attention import attention_probabilities, scaled_dot_product_attention

__all__ = ["MIN_VERSION", "attention_forward", "register"]

#: The oldest transformers whose encoder-decoder models call ``AttentionInterface``.
MIN_VERSION = (4, 53)

#: Keyword arguments that change the attention in ways fasttx has no kernel for.
_UNSUPPORTED = ("softcap", "s_aux", "position_bias")


def attention_forward(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor,
                      value: torch.Tensor, attention_mask: torch.Tensor | None,
                      dropout: float = 0.0, scaling: float | None = None,
                      is_causal: bool | None = None, *, backend: str | None = None,
                      **kwargs) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One attention call of a transformers model, on fasttx's fused kernels.

    The signature of transformers' ``AttentionInterface`` functions, with the semantics
    of its ``"sdpa"`` function.

    Args:
        module: the calling attention module (its ``is_causal`` is the default flag).
        query: (B, H, Lq, D).
        key, value: (B, Hk, Lk, D), cached positions included; Hk divides H.
        attention_mask: None, bool (B or 1, 1 or H, Lq, Lk) with True = may attend, or
            an additive float mask of that shape.
        dropout: attention-dropout probability (transformers passes 0.0 in eval mode).
        scaling: score scale, default 1 / sqrt(D).
        is_causal: overrides ``module.is_causal``. The causal mask applies only when no
            ``attention_mask`` is given and Lq > 1 (the mask builder already folded it
            into the mask otherwise); keys beyond Lq are then padding and are dropped.
        backend: the fasttx backend, None for the active default (``fasttx.use_backend``).
        kwargs: ``output_attentions`` and ``head_mask`` (H,) are honoured; so is
            ``sliding_window`` (query i sees keys j > i - window), which must be in
            ``attention_mask`` already unless every key is inside the window; the options
            in ``_UNSUPPORTED`` and a paged ``cache`` raise; others are ignored.

    Returns:
        (out, weights): out (B, Lq, H, D) contiguous; weights (B, H, Lq, Lk) when
        ``output_attentions``, else None.
    """
    for name in _UNSUPPORTED:
        if kwargs.get(name) is not None:  # named, not printed: position_bias is a tensor
            raise ValueError(f"fasttx attention does not support the {name} option, which "
                             f"{type(module).__name__} passes; use attn_implementation="
                             f"'eager' for this model")
    if type(kwargs.get("cache")).__name__ == "PagedAttentionCache":
        raise ValueError("fasttx attention does not support the paged cache of continuous "
                         "batching; use attn_implementation='sdpa' for it")
    len_q = query.shape[2]
    causal = getattr(module, "is_causal", True) if is_causal is None else bool(is_causal)
    causal = causal and attention_mask is None and len_q > 1
    if causal and key.shape[2] > len_q:  # as SDPA: the keys after the queries are padding
        key, value = key[:, :, :len_q], value[:, :, :len_q]
    window = kwargs.get("sliding_window")
    if window is not None and attention_mask is None and max(len_q, key.shape[2]) > window:
        raise ValueError(f"fasttx attention applies sliding_window={window} only through "
                         f"attention_mask, got none for {len_q} queries and {key.shape[2]} "
                         f"keys; pass the mask transformers builds for this model")

    out = scaled_dot_product_attention(
        query, key, value, attn_mask=attention_mask, dropout_p=dropout, is_causal=causal,
        scale=scaling, enable_gqa=key.shape[1] != query.shape[1], backend=backend)
    head_mask = kwargs.get("head_mask")
    if head_mask is not None:  # scaling head h's weights scales its output: (P * m) v = m (P v)
        out = out * head_mask.view(1, -1, 1, 1).to(out.dtype)

    weights = None
    if kwargs.get("output_attentions"):
        weights = attention_probabilities(query, key, attention_mask, causal, scaling)
        if head_mask is not None:
            weights = weights * head_mask.view(1, -1, 1, 1).to(weights.dtype)
    return out.transpose(1, 2).contiguous(), weights


def _import_transformers():
    try:
        import transformers
    except ImportError as error:
        raise ImportError("fasttx.integrations.transformers.register() needs Hugging Face "
                          "transformers: pip install 'transformers>=4.53'") from error
    found = tuple(int(part) for part in re.findall(r"\d+", transformers.__version__)[:2])
    if found < MIN_VERSION:
        raise ImportError(
            f"fasttx needs transformers >= {'.'.join(map(str, MIN_VERSION))} (the release from "
            f"which its encoder-decoder models call AttentionInterface), found "
            f"{transformers.__version__}")
    return transformers


def register(name: str = "fasttx", *, backend: str | None = None) -> str:
    """Registers fasttx attention with transformers as ``attn_implementation=name``.

    Args:
        name: the implementation name models are given; one transformers already has
            ("eager", "sdpa", "flash_attention_2", ...) is refused.
        backend: the fasttx backend every call uses ("reference", "triton", "cuda",
            "auto"); None follows the active default (``fasttx.use_backend``), which
            picks the fastest backend that supports each call.

    Returns:
        ``name``. Registering again (another backend, say) replaces the earlier entry.
    """
    if backend is not None and backend != "auto" and backend not in backends.BACKENDS:
        raise ValueError(f"backend must be one of {('auto',) + backends.BACKENDS} or None, "
                         f"got {backend!r}")
    if not isinstance(name, str) or not name or name == "eager":
        raise ValueError(f"name must be a new implementation name, got {name!r}")
    transformers = _import_transformers()
    from transformers import masking_utils

    existing = transformers.AttentionInterface._global_mapping.get(name)
    if existing is not None and not getattr(existing, "is_fasttx", False):
        raise ValueError(f"name must be a new implementation name, got {name!r}, which "
                         f"transformers already has")

    def fasttx_attention(module, query, key, value, attention_mask, dropout=0.0,
                         scaling=None, is_causal=None, **kwargs):
        return attention_forward(module, query, key, value, attention_mask, dropout,
                                 scaling, is_causal, backend=backend, **kwargs)

    fasttx_attention.is_fasttx = True  # so that registering again may replace it
    transformers.AttentionInterface.register(name, fasttx_attention)
    masking_utils.AttentionMaskInterface.register(name, _mask_builder(masking_utils))
    return name


def _mask_builder(masking_utils):
    """SDPA's mask builder, except that a mask that does not depend on the query (padding
    only: encoder and cross attention) is built for one query and expanded with stride 0,
    which fasttx's kernels read as a key-padding mask (one row per tile, not a tile)."""
    sdpa_mask = masking_utils.ALL_MASK_ATTENTION_FUNCTIONS["sdpa"]
    bidirectional = getattr(masking_utils, "bidirectional_mask_function", None)

    def fasttx_mask(**kwargs):
        if bidirectional is None or kwargs.get("mask_function") is not bidirectional:
            return sdpa_mask(**kwargs)
        mask = sdpa_mask(**{**kwargs, "q_length": 1})
        return None if mask is None else mask.expand(-1, -1, kwargs["q_length"], -1)

    return fasttx_mask
