"""CUDA backend of attention over packed variable-length sequences.

The dense attention kernels (``fasttx.cuda.attention``, ``csrc/attention/``) serve packed
batches too: given cu_seqlens, a CTA reads its sequence's row offsets and addresses q, k, v
(total, H, E) with batch stride 0, so no padding is stored or computed. Dropout counters
use the padded (B, H, max_seqlen_q, max_seqlen_k) layout, as the reference does.
"""

from __future__ import annotations

from fasttx.cuda._extension import ops
from fasttx.cuda.attention import unsupported_reason  # the same limits as dense attention

__all__ = ["unsupported_reason", "varlen_attention_backward", "varlen_attention_forward"]


def varlen_attention_forward(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                             dropout_seed, dropout_p, is_causal, scale):
    """As ``fasttx.reference.varlen_attention``: out (total_q, H, Ev), lse (H, total_q) fp32."""
    out, lse = ops().attention_forward(q, k, v, None, cu_seqlens_q, cu_seqlens_k,
                                       int(max_seqlen_q), int(max_seqlen_k), dropout_seed,
                                       float(dropout_p), bool(is_causal), float(scale))
    return out, lse


def varlen_attention_backward(grad_out, q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q,
                              max_seqlen_k, out, lse, dropout_seed, dropout_p, is_causal, scale):
    """Returns dq (total_q, H, E), dk (total_k, Hk, E), dv (total_k, Hk, Ev)."""
    grad_q, grad_k, grad_v, _ = ops().attention_backward(
        grad_out, q, k, v, None, cu_seqlens_q, cu_seqlens_k, int(max_seqlen_q),
        int(max_seqlen_k), out, lse, dropout_seed, float(dropout_p), bool(is_causal),
        float(scale), False)
    return grad_q, grad_k, grad_v
