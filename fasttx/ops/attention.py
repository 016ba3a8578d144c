"""Masked scaled-dot-product attention: custom ops, autograd formula, functional API.

``fasttx::attention_forward`` / ``fasttx::attention_backward`` run the backend named by
their last argument (``fasttx.<backend>.attention``); :func:`scaled_dot_product_attention`
validates the inputs, flattens the batch dimensions, broadcasts the mask, draws the
dropout seed and resolves the backend.
"""

from __future__ import annotations

import math

import torch

from fasttx import _checks
from fasttx import random as philox
from fasttx.backends import op_module, select_backend
from fasttx.ops.library import contiguous, define, dense_like, none_if_empty
from fasttx.reference import attention as reference_attention


@define("attention_forward")
def attention_forward(q, k, v, attn_mask, dropout_seed, dropout_p, is_causal, scale, backend):
    return contiguous(op_module(backend, "attention").attention_forward(
        q, k, v, attn_mask, dropout_seed, dropout_p, is_causal, scale))


@attention_forward.register_fake
def _(q, k, v, attn_mask, dropout_seed, dropout_p, is_causal, scale, backend):
    batch, heads, len_q, _ = q.shape
    out = q.new_empty(batch, heads, len_q, v.shape[-1])
    lse = q.new_empty(batch, heads, len_q, dtype=torch.promote_types(q.dtype, torch.float32))
    return out, lse


@define("attention_backward")
def attention_backward(grad_out, q, k, v, attn_mask, out, lse, dropout_seed, dropout_p,
                       is_causal, scale, mask_needs_grad, backend):
    return contiguous(op_module(backend, "attention").attention_backward(
        grad_out, q, k, v, attn_mask, out, lse, dropout_seed, dropout_p, is_causal, scale,
        mask_needs_grad))


@attention_backward.register_fake
def _(grad_out, q, k, v, attn_mask, out, lse, dropout_seed, dropout_p, is_causal, scale,
      mask_needs_grad, backend):
    grad_mask = dense_like(attn_mask) if mask_needs_grad else q.new_empty((0,))
    return dense_like(q), dense_like(k), dense_like(v), grad_mask


def _setup_context(ctx, inputs, output):
    q, k, v, attn_mask, dropout_seed, dropout_p, is_causal, scale, backend = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, attn_mask, dropout_seed, out, lse)
    ctx.options = (dropout_p, is_causal, scale, backend)


def _backward(ctx, grad_out, _grad_lse):
    q, k, v, attn_mask, dropout_seed, out, lse = ctx.saved_tensors
    dropout_p, is_causal, scale, backend = ctx.options
    mask_needs_grad = attn_mask is not None and ctx.needs_input_grad[3]
    grad_q, grad_k, grad_v, grad_mask = attention_backward(
        grad_out.contiguous(), q, k, v, attn_mask, out, lse, dropout_seed, dropout_p, is_causal,
        scale, mask_needs_grad, backend)
    return grad_q, grad_k, grad_v, none_if_empty(grad_mask), None, None, None, None, None


attention_forward.register_autograd(_backward, setup_context=_setup_context)


def _check_inputs(query, key, value, attn_mask, enable_gqa):
    """Validates the inputs; returns the output's batch dimensions N... (query's, key's and
    value's broadcast together, as torch's SDPA does) and (H, Lq, Lk)."""
    _checks.tensor("query", query, min_dim=3)
    _checks.tensor("key", key, min_dim=3)
    _checks.tensor("value", value, min_dim=3)
    _checks.same_dtype(query=query, key=key, value=value)
    _checks.optional_tensor("attn_mask", attn_mask, dtypes=(torch.bool,) + _checks.FLOATING)
    _checks.same_device(query=query, key=key, value=value, attn_mask=attn_mask)
    heads, len_q, dim = query.shape[-3:]
    if key.dim() != query.dim() or value.dim() != query.dim():
        raise ValueError(
            f"query, key and value must have the same number of dimensions (N..., H, L, E), "
            f"got shapes {tuple(query.shape)}, {tuple(key.shape)}, {tuple(value.shape)}")
    try:
        batch = torch.broadcast_shapes(query.shape[:-3], key.shape[:-3], value.shape[:-3])
    except RuntimeError:
        raise ValueError(
            f"the batch dimensions N... of query, key and value must broadcast together, got "
            f"shapes {tuple(query.shape)}, {tuple(key.shape)}, {tuple(value.shape)}") from None
    kv_heads, len_k = key.shape[-3], key.shape[-2]
    _checks.shape("key", key, (*key.shape[:-3], kv_heads, len_k, dim),
                  "(N..., Hk, Lk, E) with query's E")
    _checks.shape("value", value, (*value.shape[:-3], kv_heads, len_k, value.shape[-1]),
                  "(N..., Hk, Lk, Ev) with key's Hk and Lk")
    # Lq and Lk may be 0 (see _attend_to_no_key); heads and head dims may not.
    _checks.nonempty("query", query, (query.dim() - 3, query.dim() - 1))
    _checks.nonempty("key", key, (key.dim() - 3, key.dim() - 1))
    _checks.nonempty("value", value, (value.dim() - 1,))
    if kv_heads != heads:
        if not enable_gqa:
            raise ValueError(f"key and value must have query's {heads} heads, got {kv_heads} "
                             f"(pass enable_gqa=True for grouped-query attention)")
        if heads % kv_heads:
            raise ValueError(f"with enable_gqa=True the query's heads ({heads}) must be a "
                             f"multiple of the key/value heads ({kv_heads})")
    full = (*batch, heads, len_q, len_k)
    if attn_mask is not None:
        try:
            if torch.broadcast_shapes(attn_mask.shape, full) != torch.Size(full):
                raise RuntimeError
        except RuntimeError:
            raise ValueError(
                f"attn_mask must broadcast to (N..., H, Lq, Lk) = {full}, got shape "
                f"{tuple(attn_mask.shape)}") from None
    return full


def _attend_to_no_key(query, key, value, attn_mask):
    """(N..., H, Lq, Ev) zeros: attention where no key is attended (Lk = 0, every key
    dropped with dropout_p = 1, or nothing to attend from: Lq = 0 or an empty batch).

    Computed as attention over zero keys in plain torch (matmuls with an empty inner
    dimension), so that, as from torch's SDPA, the output is connected to the inputs and
    query, key, value and a float mask each get a zero gradient of their shape.
    """
    groups = query.shape[-3] // key.shape[-3]
    key, value = (t[..., :0, :].repeat_interleave(groups, dim=-3) for t in (key, value))
    scores = query @ key.transpose(-2, -1)  # (N..., H, Lq, 0)
    if attn_mask is not None and attn_mask.is_floating_point():
        scores = scores + attn_mask[..., :0].to(scores.dtype)
    return scores @ value


def scaled_dot_product_attention(query, key, value, attn_mask=None, dropout_p=0.0,
                                 is_causal=False, scale=None, enable_gqa=False, *, backend=None):
    """Fused masked attention, with the contract of ``F.scaled_dot_product_attention``.

    Args:
        query: (N..., H, Lq, E).
        key: (N..., Hk, Lk, E); Hk == H, or a divisor of H with ``enable_gqa=True``.
        value: (N..., Hk, Lk, Ev).
            The batch dimensions N... of query, key and value broadcast together (a key and
            value of batch 1 serve every query batch, expanded with stride 0, no copy). Lq
            and Lk may be 0: Lq = 0 gives an empty output, Lk = 0 zeros.
        attn_mask: None, or broadcastable to (N..., H, Lq, Lk): bool (True = may attend)
            or float (added to the scores; gets a gradient if it requires one).
        dropout_p: dropout probability on the attention weights in [0, 1] (applied whenever
            > 0, as in torch's functional form; pass 0.0 in eval mode); 1 gives zeros.
        is_causal: query i attends to keys j <= i (top-left aligned, also for Lq != Lk);
            combined with ``attn_mask`` when both are given.
        scale: score scale, default 1 / sqrt(E).
        enable_gqa: allow Hk < H (grouped-query attention).
        backend: "reference", "triton", "cuda", "auto", or None for the active default
            (see :func:`fasttx.use_backend`).

    Returns:
        (N..., H, Lq, Ev) in query's dtype. A query row that may attend to no key is zero.

    Steps: scores = q k^T * scale, masks applied (-inf where not allowed), softmax in fp32,
    dropout from a Philox seed drawn from torch's generator (``fasttx.random``), out = P v.
    """
    full = _check_inputs(query, key, value, attn_mask, _checks.flag("enable_gqa", enable_gqa))
    dropout_p = _checks.probability("dropout_p", dropout_p, allow_one=True)
    is_causal = _checks.flag("is_causal", is_causal)
    scale = _checks.optional_number("scale", scale)
    *batch, heads, len_q, len_k = full
    dim = query.shape[-1]
    scale = 1.0 / math.sqrt(dim) if scale is None else scale

    query, key, value = _checks.autocast(query.device, query, key, value)
    mask_dtype = None if attn_mask is None else attn_mask.dtype
    mask_needs_grad = attn_mask is not None and attn_mask.requires_grad
    name = select_backend(
        "attention", query.device, backend, dtype=query.dtype, head_dim=dim,
        value_head_dim=value.shape[-1], mask_dtype=mask_dtype, mask_needs_grad=mask_needs_grad)
    if dropout_p == 1.0 or 0 in full:  # handled here, once for every backend
        return _attend_to_no_key(query, key, value, attn_mask)

    # Broadcast batch dimensions are expanded with stride 0, which the kernels read through
    # their strides; flattening several batch dimensions, some broadcast, may copy instead.
    q = query.expand(*batch, *query.shape[-3:]).reshape(-1, heads, len_q, dim)
    k = key.expand(*batch, *key.shape[-3:]).reshape(-1, *key.shape[-3:])
    v = value.expand(*batch, *value.shape[-3:]).reshape(-1, *value.shape[-3:])
    mask = None
    if attn_mask is not None:  # stride-0 broadcast: a padding mask costs no memory
        mask = attn_mask.expand(full).reshape(-1, heads, len_q, len_k)
    seed = philox.draw_seed(q.device) if dropout_p > 0.0 else None
    out, _ = attention_forward(q, k, v, mask, seed, dropout_p, is_causal, scale, name)
    return out.reshape(*batch, heads, len_q, value.shape[-1])


def attention_probabilities(query, key, attn_mask=None, is_causal=False, scale=None):
    """The attention weights, computed explicitly: a slower path for callers that must
    return them (``MultiheadAttention(need_weights=True)``, Hugging Face's
    ``output_attentions``). Differentiable by plain autograd.

    Args:
        query: (N..., H, Lq, E); key: (N..., Hk, Lk, E) with Hk dividing H.
        attn_mask, is_causal, scale: as in :func:`scaled_dot_product_attention`.

    Returns:
        (N..., H, Lq, Lk) softmax(q k^T * scale + masks) in query's dtype, before any
        dropout; a row that may attend to no key is zero (not NaN). 16-bit inputs are
        upcast to fp32 for the scores and the softmax, as the kernels do, and the weights
        are rounded once at the end.
    """
    scale = 1.0 / math.sqrt(query.shape[-1]) if scale is None else scale
    heads, kv_heads = query.shape[-3], key.shape[-3]
    if kv_heads != heads:  # grouped-query attention: each key head serves H / Hk query heads
        key = key.repeat_interleave(heads // kv_heads, dim=-3)
    # the reference's own scores and softmax, which take any leading dimensions
    scores = reference_attention.masked_scores(query, key, attn_mask, is_causal, scale)
    return reference_attention.probabilities(scores).to(query.dtype)
