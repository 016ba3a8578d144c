"""Reference masked scaled-dot-product attention (dense batches).

Shapes: q (B, H, Lq, E); k (B, Hk, Lk, E); v (B, Hk, Lk, Ev) with H a multiple of Hk
(grouped-query attention repeats each key/value head H/Hk times); attn_mask None or
broadcast to (B, H, Lq, Lk), bool (True = may attend) or float (added to the scores).

Forward, step by step (16-bit inputs are upcast to fp32 first, as the kernels' dot
products accumulate and keep their results in fp32):
    scores = q @ k^T * scale                       (B, H, Lq, Lk), fp32
    scores += attn_mask  or  scores[~attn_mask] = -inf
    scores[j > i] = -inf            if is_causal (top-left aligned)
    probs = softmax(scores, -1), 0 on a row with no key (all -inf)
    lse = logsumexp(scores, -1)                    (B, H, Lq), -inf on such rows
    probs = probs * keep / (1 - p)  with keep from Philox(seed, counter)
    out = probs @ v                                (B, H, Lq, Ev)

Dropout counter layout: element (b, h, i, j) of the (B, H, Lq, Lk) probabilities has
counter ((b * H + h) * Lq + i) * Lk + j.
"""

from __future__ import annotations

import torch

from fasttx.reference._common import accumulation_dtype, dropout_scale


def repeat_kv_heads(kv: torch.Tensor, num_heads: int) -> torch.Tensor:
    """(B, Hk, L, E) -> (B, H, L, E), each key/value head serving H/Hk query heads."""
    groups = num_heads // kv.shape[1]
    return kv if groups == 1 else kv.repeat_interleave(groups, dim=1)


def sum_kv_heads(grad: torch.Tensor, num_kv_heads: int) -> torch.Tensor:
    """(B, H, L, E) -> (B, Hk, L, E): the adjoint of :func:`repeat_kv_heads`."""
    batch, heads, length, dim = grad.shape
    if heads == num_kv_heads:
        return grad
    return grad.view(batch, num_kv_heads, heads // num_kv_heads, length, dim).sum(2)


def masked_scores(q, k, attn_mask, is_causal, scale):
    """scores = q @ k^T * scale with every mask applied, in the accumulation dtype."""
    acc = accumulation_dtype(q.dtype)
    # Upcast before the product: a 16-bit matmul would round every score to q's dtype
    # (up to 5x torch's error in bf16), where the kernels keep their fp32 accumulators.
    scores = torch.matmul(q.to(acc), k.to(acc).transpose(-2, -1)) * scale
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attn_mask, float("-inf"))
        else:
            scores = scores + attn_mask.to(acc)
    if is_causal:
        len_q, len_k = scores.shape[-2:]
        future = torch.ones(len_q, len_k, dtype=torch.bool, device=q.device).triu(1)
        scores = scores.masked_fill(future, float("-inf"))
    return scores


def probabilities(scores: torch.Tensor) -> torch.Tensor:
    """softmax rows of (..., Lk) scores; a row that may attend to nothing gets zeros.

    torch.softmax subtracts each row's max before exp (softmax is shift-invariant), so a row
    that a float mask pushes uniformly to -1e4, -1e7 or finfo.min keeps its weights summing
    to 1 (the values' average at finfo.min, as in torch); exp(scores - logsumexp) would
    not, since the log-sum-exp can't resolve log(Lk) at such magnitudes.
    """
    empty_row = torch.isneginf(scores).all(-1, keepdim=True)
    return torch.softmax(scores.masked_fill(empty_row, 0.0), dim=-1).masked_fill(empty_row, 0.0)


def attention_forward(q, k, v, attn_mask, dropout_seed, dropout_p, is_causal, scale,
                      dropout_counter=None):
    """Returns out (B, H, Lq, Ev) in q's dtype and lse (B, H, Lq) in fp32 (fp64 for fp64).

    ``dropout_counter`` overrides the counter layout (used by varlen attention).
    """
    heads = q.shape[1]
    k, v = repeat_kv_heads(k, heads), repeat_kv_heads(v, heads)
    scores = masked_scores(q, k, attn_mask, is_causal, scale)
    lse = torch.logsumexp(scores, dim=-1)
    probs = probabilities(scores)
    keep_scale = dropout_scale(probs.shape, dropout_seed, dropout_p, q.device, dropout_counter)
    if keep_scale is not None:
        probs = probs * keep_scale
    out = torch.matmul(probs, v.to(probs.dtype)).to(v.dtype)  # fp32 probabilities and sums
    return out, lse


def attention_backward(grad_out, q, k, v, attn_mask, out, lse, dropout_seed, dropout_p,
                       is_causal, scale, mask_needs_grad, dropout_counter=None):
    """Returns dq, dk, dv and d(attn_mask) (the gradient of the scores; empty if not asked).

    Recomputes the probabilities with the forward's softmax (the fused kernels rebuild them
    from the saved log-sum-exp instead); ``lse`` gives the accumulation dtype:
        dV = P_drop^T dO
        dP = (dO V^T) * keep / (1 - p)
        dS = P * (dP - rowsum(dO * O))
        dQ = dS K * scale,  dK = dS^T Q * scale
    """
    heads, kv_heads = q.shape[1], k.shape[1]
    acc = lse.dtype
    k_rep, v_rep = repeat_kv_heads(k, heads), repeat_kv_heads(v, heads)
    probs = probabilities(masked_scores(q, k_rep, attn_mask, is_causal, scale))
    keep_scale = dropout_scale(probs.shape, dropout_seed, dropout_p, q.device, dropout_counter)
    probs_dropped = probs if keep_scale is None else probs * keep_scale

    grad_out_acc = grad_out.to(acc)
    grad_v = torch.matmul(probs_dropped.transpose(-2, -1), grad_out_acc)
    grad_probs = torch.matmul(grad_out_acc, v_rep.to(acc).transpose(-2, -1))
    if keep_scale is not None:
        grad_probs = grad_probs * keep_scale
    row_dot = (grad_out_acc * out.to(acc)).sum(-1, keepdim=True)
    grad_scores = probs * (grad_probs - row_dot)
    grad_q = torch.matmul(grad_scores, k_rep.to(acc)) * scale
    grad_k = torch.matmul(grad_scores.transpose(-2, -1), q.to(acc)) * scale

    grad_mask = grad_scores if mask_needs_grad else grad_scores.new_empty((0,))
    return (
        grad_q.to(q.dtype),
        sum_kv_heads(grad_k, kv_heads).to(k.dtype),
        sum_kv_heads(grad_v, kv_heads).to(v.dtype),
        grad_mask.to(attn_mask.dtype) if mask_needs_grad else grad_mask,
    )
