"""Loads the compiled extension ``fasttx._C`` behind a guard, and registers its fakes.

A missing extension (a CPU-only install, ``FASTTX_SKIP_CUDA_BUILD=1``) or a broken one
(built against another torch, a missing CUDA library, a failed op registration) never
raises at import: :func:`load_error` returns why, and the backend registry reports the
``cuda`` backend unavailable with that reason.

The fakes (meta implementations) of the extension's ops ``fasttx_cuda::*`` let
``torch.compile`` trace calls to them; their shapes follow the schema comments in
``csrc/ops.cpp``.
"""

from __future__ import annotations

import functools
import importlib

import torch

MODULE = "fasttx._C"
NAMESPACE = "fasttx_cuda"
_BUILD_HINT = ("setup.py builds it where nvcc and a CUDA build of torch exist "
               "(pip install --no-build-isolation -e .) unless FASTTX_SKIP_CUDA_BUILD=1")


@functools.cache
def load_error() -> str | None:
    """None when ``fasttx._C`` loaded (and its fakes are registered), else why it did not."""
    try:
        importlib.import_module(MODULE)
    except ImportError as error:
        return f"the extension fasttx._C is not built or does not load ({error}); {_BUILD_HINT}"
    except Exception as error:  # noqa: BLE001 - a broken build must not break `import fasttx`
        return (f"the extension fasttx._C failed to load ({type(error).__name__}: {error}); "
                f"rebuild it against the installed torch ({torch.__version__})")
    if not hasattr(torch.ops, NAMESPACE) or not hasattr(getattr(torch.ops, NAMESPACE),
                                                        "build_info"):
        return f"the extension fasttx._C loaded but registered no {NAMESPACE} ops"
    register_fakes()
    return None


def ops():
    """``torch.ops.fasttx_cuda`` once the extension is loaded (raises why it is not)."""
    reason = load_error()
    if reason is not None:
        raise RuntimeError(reason)
    return getattr(torch.ops, NAMESPACE)


def build_info() -> dict:
    """What the loaded ``fasttx._C`` was built with, as its ``build_info`` op reports it::

        {"torch": "2.11.0", "cuda": "13.0", "targets": ["sm_80", "sm_90a"],
         "attention_kernels": ["sm80", "sm90a"]}

    ``attention_kernels`` names the attention forward kernels compiled in: ``sm80`` (the
    FlashAttention-2 kernels, every target) and ``sm90a`` (the Hopper wgmma/TMA kernel, only
    with an sm_90a target). Raises why the extension is not loaded.
    """
    return parse_build_info(ops().build_info())


def parse_build_info(text: str) -> dict:
    """Parses "torch 2.11.0; CUDA 13.0; targets sm_80,sm_90a; attention kernels sm80,sm90a"."""
    fields = {}
    for part in text.split(";"):
        name, _, value = part.strip().rpartition(" ")
        fields[name.lower()] = value
    try:
        return {"torch": fields["torch"], "cuda": fields["cuda"],
                "targets": fields["targets"].split(","),
                "attention_kernels": fields["attention kernels"].split(",")}
    except KeyError as missing:
        raise RuntimeError(f"fasttx._C's build_info() lacks {missing}: {text!r} (rebuild it)") \
            from None


def _empty(like: torch.Tensor) -> torch.Tensor:
    return like.new_empty((0,))


def _attention_forward(q, k, v, attn_mask, cu_seqlens_q, cu_seqlens_k, max_seqlen_q,
                       max_seqlen_k, dropout_seed, dropout_p, is_causal, scale):
    out = q.new_empty((*q.shape[:-1], v.shape[-1]))
    if q.dim() == 4:  # dense (B, H, Lq, E)
        lse = q.new_empty(q.shape[:-1], dtype=torch.float32)
    else:             # packed (total_q, H, E)
        lse = q.new_empty((q.shape[1], q.shape[0]), dtype=torch.float32)
    return out, lse


def _attention_backward(grad_out, q, k, v, attn_mask, cu_seqlens_q, cu_seqlens_k, max_seqlen_q,
                        max_seqlen_k, out, lse, dropout_seed, dropout_p, is_causal, scale,
                        mask_needs_grad):
    grad_mask = (q.new_empty((*q.shape[:-1], k.shape[-2]), dtype=attn_mask.dtype)
                 if mask_needs_grad else _empty(q))
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape), grad_mask


def _add_layer_norm_forward(x, residual, weight, bias, eps, dropout_seed, dropout_p):
    rows = x.shape[0]
    stream_dtype = x.dtype if residual is None else residual.dtype
    stats = x.new_empty((rows,), dtype=torch.float32)
    return (x.new_empty(x.shape), x.new_empty(x.shape, dtype=stream_dtype), stats,
            stats.new_empty((rows,)))


def _add_layer_norm_backward(grad_y, grad_residual_out, residual_out, weight, bias, mean, rstd,
                             dropout_seed, dropout_p, has_residual):
    grad_x = grad_y.new_empty(grad_y.shape)
    grad_residual = residual_out.new_empty(residual_out.shape) if has_residual else \
        _empty(grad_y)
    grad_weight = weight.new_empty(weight.shape) if weight is not None else _empty(grad_y)
    grad_bias = bias.new_empty(bias.shape) if bias is not None else _empty(grad_y)
    return grad_x, grad_residual, grad_weight, grad_bias


def _feed_forward_forward(x, w1, b1, w2, b2, activation, dropout_seed, dropout_p):
    return x.new_empty((x.shape[0], w2.shape[0])), x.new_empty((x.shape[0], w1.shape[0]))


def _feed_forward_backward(grad_y, x, w1, b1, w2, b2, saved, activation, dropout_seed,
                           dropout_p):
    def like(tensor):
        return tensor.new_empty(tensor.shape) if tensor is not None else _empty(x)

    return like(x), like(w1), like(b1), like(w2), like(b2)


FAKES = {
    "attention_forward": _attention_forward,
    "attention_backward": _attention_backward,
    "add_layer_norm_forward": _add_layer_norm_forward,
    "add_layer_norm_backward": _add_layer_norm_backward,
    "feed_forward_forward": _feed_forward_forward,
    "feed_forward_backward": _feed_forward_backward,
}


@functools.cache
def register_fakes() -> None:
    """Registers the fake of every ``fasttx_cuda`` op (once; the ops must be defined)."""
    for name, fake in FAKES.items():
        torch.library.register_fake(f"{NAMESPACE}::{name}", fake)
