"""fasttx: fused Triton and CUDA kernels for the encoder-decoder Transformer.

    fasttx.scaled_dot_product_attention(q, k, v, attn_mask=None, dropout_p=0.0,
                                        is_causal=False, scale=None, enable_gqa=False)
    fasttx.varlen_attention(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k)
    fasttx.add_layer_norm(x, residual, weight, bias, eps=1e-5, dropout_p=0.0)
    fasttx.feed_forward(x, w1, b1, w2, b2, activation="relu", dropout_p=0.0)

Each takes ``backend=`` ("reference" | "triton" | "cuda" | "auto"); ``fasttx.use_backend``
sets the default for a block and ``fasttx.available_backends()`` says what this machine
can run. Modules live in ``fasttx.nn``, the bundled model in ``fasttx.models``;
``fasttx.patch_torch()`` routes ``F.scaled_dot_product_attention`` through fasttx
(``fasttx.is_torch_patched()`` says whether it is in effect).
"""

from fasttx import random  # noqa: I001 - the ops must be registered before nn and models
from fasttx.backends import (
    BackendUnavailableError,
    available_backends,
    current_backend,
    use_backend,
)
from fasttx.ops import add_layer_norm, feed_forward, scaled_dot_product_attention, varlen_attention
from fasttx import models, nn
from fasttx.patching import is_torch_patched, patch_torch, unpatch_torch

__version__ = "0.1.0"

__all__ = [
    "BackendUnavailableError",
    "add_layer_norm",
    "available_backends",
    "current_backend",
    "feed_forward",
    "is_torch_patched",
    "models",
    "nn",
    "patch_torch",
    "random",
    "scaled_dot_product_attention",
    "unpatch_torch",
    "use_backend",
    "varlen_attention",
]
