"""Attention over packed variable-length sequences: custom ops, autograd, functional API."""

from __future__ import annotations

import math
import numbers
import weakref

import torch

from fasttx import _checks
from fasttx import random as philox
from fasttx.backends import op_module, select_backend
from fasttx.ops.library import contiguous, define, dense_like


@define("varlen_attention_forward")
def varlen_attention_forward(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                             dropout_seed, dropout_p, is_causal, scale, backend):
    return contiguous(op_module(backend, "varlen_attention").varlen_attention_forward(
        q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_seed,
        dropout_p, is_causal, scale))


@varlen_attention_forward.register_fake
def _(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_seed, dropout_p,
      is_causal, scale, backend):
    total_q, heads, _ = q.shape
    lse_dtype = torch.promote_types(q.dtype, torch.float32)
    return q.new_empty(total_q, heads, v.shape[-1]), q.new_empty(heads, total_q, dtype=lse_dtype)


@define("varlen_attention_backward")
def varlen_attention_backward(grad_out, q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q,
                              max_seqlen_k, out, lse, dropout_seed, dropout_p, is_causal, scale,
                              backend):
    return contiguous(op_module(backend, "varlen_attention").varlen_attention_backward(
        grad_out, q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, out, lse,
        dropout_seed, dropout_p, is_causal, scale))


@varlen_attention_backward.register_fake
def _(grad_out, q, k, v, *args):
    return dense_like(q), dense_like(k), dense_like(v)


def _setup_context(ctx, inputs, output):
    (q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_seed, dropout_p,
     is_causal, scale, backend) = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, cu_seqlens_q, cu_seqlens_k, dropout_seed, out, lse)
    ctx.options = (max_seqlen_q, max_seqlen_k, dropout_p, is_causal, scale, backend)


def _backward(ctx, grad_out, _grad_lse):
    q, k, v, cu_seqlens_q, cu_seqlens_k, dropout_seed, out, lse = ctx.saved_tensors
    max_seqlen_q, max_seqlen_k, dropout_p, is_causal, scale, backend = ctx.options
    grad_q, grad_k, grad_v = varlen_attention_backward(
        grad_out.contiguous(), q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
        out, lse, dropout_seed, dropout_p, is_causal, scale, backend)
    return (grad_q, grad_k, grad_v) + (None,) * 9


varlen_attention_forward.register_autograd(_backward, setup_context=_setup_context)


# cu_seqlens tensors whose values passed the check: id -> (weak reference, version, total,
# max_seqlen). A model calls every layer's attention with the same prefix sums: on a GPU
# their values (a device sync to read) are checked once per tensor, not once per call.
# Inference tensors count no versions (an in-place change would go unseen): never kept.
_checked_cu_seqlens: dict[int, tuple] = {}


def _already_checked(cu_seqlens, total, max_seqlen) -> bool:
    entry = _checked_cu_seqlens.get(id(cu_seqlens))
    return entry is not None and entry[0]() is cu_seqlens and entry[1:] == (
        cu_seqlens._version, total, max_seqlen)


def _remember_checked(cu_seqlens, total, max_seqlen) -> None:
    if cu_seqlens.is_inference():
        return
    key = id(cu_seqlens)
    forget = lambda _: _checked_cu_seqlens.pop(key, None)  # noqa: E731 - when it is freed
    _checked_cu_seqlens[key] = (weakref.ref(cu_seqlens, forget), cu_seqlens._version, total,
                                max_seqlen)


def _check_cu_seqlens(name, cu_seqlens, total, max_seqlen, max_name):
    """Checks the prefix sums (already checked to be 1-D int32 tensors): shape always,
    values outside torch.compile (on a GPU a device sync, once per tensor: see
    _checked_cu_seqlens)."""
    if cu_seqlens.shape[0] < 2:
        raise ValueError(f"{name} must have shape (B + 1,) with B >= 1, got "
                         f"{tuple(cu_seqlens.shape)}")
    if isinstance(max_seqlen, bool) or not isinstance(max_seqlen, numbers.Integral):
        raise TypeError(f"{max_name} must be an int, got {type(max_seqlen).__name__}")
    if max_seqlen < 1:
        raise ValueError(f"{max_name} must be a positive int, got {max_seqlen!r}")
    if (torch.compiler.is_compiling() or cu_seqlens.is_meta or (
            not cu_seqlens.is_inference() and _already_checked(cu_seqlens, total, max_seqlen))):
        return
    starts = cu_seqlens.tolist()
    lengths = [b - a for a, b in zip(starts, starts[1:], strict=False)]
    if starts[0] != 0 or min(lengths) < 0 or starts[-1] != total:
        raise ValueError(f"{name} must rise from 0 to the number of packed rows ({total}), "
                         f"got {starts}")
    if max(lengths) > max_seqlen:
        raise ValueError(f"{max_name} ({max_seqlen}) is less than the longest sequence in "
                         f"{name} ({max(lengths)})")
    _remember_checked(cu_seqlens, total, max_seqlen)


def varlen_attention(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, *,
                     dropout_p=0.0, is_causal=False, scale=None, backend=None):
    """Attention over packed sequences of different lengths, computing no padding.

    Args:
        q: (total_q, H, E), the queries of all sequences one after another.
        k: (total_k, Hk, E) with Hk dividing H (grouped-query attention when Hk < H).
        v: (total_k, Hk, Ev).
        cu_seqlens_q, cu_seqlens_k: int32 (B + 1,) prefix sums of the lengths, from 0 to
            total_q / total_k; sequence b is rows cu[b]:cu[b+1]. On the device of q.
        max_seqlen_q, max_seqlen_k: the longest lengths (ints), for the kernels' grids.
            cu_seqlens' values are checked against them and the totals on every device
            (on a GPU a device sync, once per cu_seqlens tensor as long as it is not
            modified); under torch.compile only their shapes are checked.
        dropout_p, is_causal, scale, backend: as in :func:`scaled_dot_product_attention`;
            ``is_causal`` is top-left aligned within each sequence.

    Returns:
        (total_q, H, Ev) in q's dtype; sequence b's rows attend only to sequence b's keys.
    """
    _checks.tensor("q", q, dim=3)
    _checks.tensor("k", k, dim=3)
    _checks.tensor("v", v, dim=3)
    _checks.same_dtype(q=q, k=k, v=v)
    _checks.tensor("cu_seqlens_q", cu_seqlens_q, dim=1, dtypes=(torch.int32,))
    _checks.tensor("cu_seqlens_k", cu_seqlens_k, dim=1, dtypes=(torch.int32,))
    device = _checks.same_device(q=q, k=k, v=v, cu_seqlens_q=cu_seqlens_q,
                                 cu_seqlens_k=cu_seqlens_k)
    total_q, heads, dim = q.shape
    total_k, kv_heads, _ = k.shape
    _checks.shape("k", k, (total_k, kv_heads, dim), "(total_k, Hk, E) with q's E")
    _checks.shape("v", v, (total_k, kv_heads, v.shape[-1]),
                  "(total_k, Hk, Ev) with k's total_k and Hk")
    _checks.nonempty("q", q, (1, 2))
    _checks.nonempty("k", k, (1,))
    _checks.nonempty("v", v, (2,))
    if heads % kv_heads:
        raise ValueError(f"k's heads ({kv_heads}) must divide q's heads ({heads})")
    _check_cu_seqlens("cu_seqlens_q", cu_seqlens_q, total_q, max_seqlen_q, "max_seqlen_q")
    _check_cu_seqlens("cu_seqlens_k", cu_seqlens_k, total_k, max_seqlen_k, "max_seqlen_k")
    if cu_seqlens_q.shape != cu_seqlens_k.shape:
        raise ValueError(f"cu_seqlens_q and cu_seqlens_k must both have shape (B + 1,), got "
                         f"{tuple(cu_seqlens_q.shape)} and {tuple(cu_seqlens_k.shape)}")
    dropout_p = _checks.probability("dropout_p", dropout_p)
    is_causal = _checks.flag("is_causal", is_causal)
    scale = _checks.optional_number("scale", scale)
    scale = 1.0 / math.sqrt(dim) if scale is None else scale
    q, k, v = _checks.autocast(device, q, k, v)
    seed = philox.draw_seed(device) if dropout_p > 0.0 else None
    name = select_backend("varlen_attention", device, backend, dtype=q.dtype, head_dim=dim,
                          value_head_dim=v.shape[-1])
    out, _ = varlen_attention_forward(q, k, v, cu_seqlens_q, cu_seqlens_k, int(max_seqlen_q),
                                      int(max_seqlen_k), seed, dropout_p, is_causal, scale, name)
    return out
