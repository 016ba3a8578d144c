"""Triton backend of attention over packed variable-length sequences: the launchers.

The dense attention kernels serve packed batches too (``VARLEN``): a program reads its
sequence's row offsets from cu_seqlens and addresses q, k, v (total, H, E) with batch
stride 0, so no padding is stored or computed; a program whose query tile lies past its
sequence's end gets empty loops and stores nothing. Dropout counters use the padded
(B, H, max_seqlen_q, max_seqlen_k) layout, as the reference does.
"""

from __future__ import annotations

import torch

from fasttx.triton.attention import (
    Mask,
    Sequences,
    launch_backward,
    launch_forward,
    unsupported_reason,  # the same limits as dense attention
)

__all__ = ["unsupported_reason", "varlen_attention_backward", "varlen_attention_forward"]


def varlen_attention_forward(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                             dropout_seed, dropout_p, is_causal, scale):
    """As ``fasttx.reference.varlen_attention``: out (total_q, H, Ev), lse (H, total_q) fp32."""
    total_q, heads, _ = q.shape
    # rows outside every sequence (cu_seqlens not reaching total_q) are never written by the
    # kernels: they read out = 0 and lse = -inf, as in the reference
    out = q.new_zeros(total_q, heads, v.shape[-1])
    lse = torch.full((heads, total_q), float("-inf"), device=q.device, dtype=torch.float32)
    seqs = Sequences(cu_seqlens_q.shape[0] - 1, max_seqlen_q, max_seqlen_k, cu_seqlens_q,
                     cu_seqlens_k)
    launch_forward(seqs, q, k, v, Mask.of(None, q), dropout_seed, dropout_p, is_causal, scale,
                   out, lse)
    return out, lse


def varlen_attention_backward(grad_out, q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q,
                              max_seqlen_k, out, lse, dropout_seed, dropout_p, is_causal, scale):
    """Returns dq (total_q, H, E), dk (total_k, Hk, E), dv (total_k, Hk, Ev); zero in rows
    outside every sequence, which the kernels never write."""
    grad_q, grad_k, grad_v = (torch.zeros_like(t, memory_format=torch.contiguous_format)
                              for t in (q, k, v))
    seqs = Sequences(cu_seqlens_q.shape[0] - 1, max_seqlen_q, max_seqlen_k, cu_seqlens_q,
                     cu_seqlens_k)
    launch_backward(seqs, grad_out, q, k, v, Mask.of(None, q), out, lse, dropout_seed,
                    dropout_p, is_causal, scale, grad_q, grad_k, grad_v, None)
    return grad_q, grad_k, grad_v
