"""Reference attention over packed variable-length sequences.

Shapes: q (total_q, H, E), k (total_k, Hk, E), v (total_k, Hk, Ev); sequence b owns rows
cu_seqlens_q[b]:cu_seqlens_q[b+1] of q and cu_seqlens_k[b]:cu_seqlens_k[b+1] of k and v.
Each sequence is attended to on its own, exactly as dense attention does
(``fasttx.reference.attention``), causal masks top-left aligned within the sequence.

Dropout counter layout: the dense layout of the padded batch (B, H, max_seqlen_q,
max_seqlen_k), so that element (b, h, i, j) has counter
((b * H + h) * max_seqlen_q + i) * max_seqlen_k + j, and packed and padded attention
drop the same elements.
"""

from __future__ import annotations

import torch

from fasttx.reference.attention import attention_backward, attention_forward


def _sequences(cu_seqlens_q, cu_seqlens_k, heads, max_seqlen_q, max_seqlen_k, dropout_p):
    """(q rows, k rows, dropout counters or None) of each sequence; rows as slices."""
    starts_q, starts_k = cu_seqlens_q.tolist(), cu_seqlens_k.tolist()
    for b in range(len(starts_q) - 1):
        rows_q, rows_k = slice(starts_q[b], starts_q[b + 1]), slice(starts_k[b], starts_k[b + 1])
        counter = None
        if dropout_p > 0.0:
            counter = _dropout_counter(b, heads, rows_q.stop - rows_q.start,
                                       rows_k.stop - rows_k.start, max_seqlen_q,
                                       max_seqlen_k, cu_seqlens_q.device)
        yield rows_q, rows_k, counter


def _to_dense(packed: torch.Tensor) -> torch.Tensor:
    """(L, H, E) rows of one sequence -> (1, H, L, E)."""
    return packed.transpose(0, 1).unsqueeze(0)


def _from_dense(dense: torch.Tensor) -> torch.Tensor:
    return dense.squeeze(0).transpose(0, 1)


def _dropout_counter(b, heads, len_q, len_k, max_seqlen_q, max_seqlen_k, device):
    """Counters of sequence b's (1, H, len_q, len_k) probabilities in the padded layout."""
    h = torch.arange(heads, device=device).view(1, heads, 1, 1)
    i = torch.arange(len_q, device=device).view(1, 1, len_q, 1)
    j = torch.arange(len_k, device=device).view(1, 1, 1, len_k)
    return ((b * heads + h) * max_seqlen_q + i) * max_seqlen_k + j


def varlen_attention_forward(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                             dropout_seed, dropout_p, is_causal, scale):
    """Returns out (total_q, H, Ev) in q's dtype and lse (H, total_q) in fp32."""
    heads = q.shape[1]
    out = q.new_zeros(q.shape[0], heads, v.shape[2])
    lse = q.new_full((heads, q.shape[0]), float("-inf"), dtype=torch.promote_types(
        q.dtype, torch.float32))
    for rows_q, rows_k, counter in _sequences(cu_seqlens_q, cu_seqlens_k, heads,
                                              max_seqlen_q, max_seqlen_k, dropout_p):
        out_b, lse_b = attention_forward(
            _to_dense(q[rows_q]), _to_dense(k[rows_k]), _to_dense(v[rows_k]), None,
            dropout_seed, dropout_p, is_causal, scale, dropout_counter=counter)
        out[rows_q] = _from_dense(out_b)
        lse[:, rows_q] = lse_b[0]
    return out, lse


def varlen_attention_backward(grad_out, q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q,
                              max_seqlen_k, out, lse, dropout_seed, dropout_p, is_causal, scale):
    """Returns dq (total_q, H, E), dk (total_k, Hk, E), dv (total_k, Hk, Ev)."""
    heads = q.shape[1]
    grad_q, grad_k, grad_v = torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
    for rows_q, rows_k, counter in _sequences(cu_seqlens_q, cu_seqlens_k, heads,
                                              max_seqlen_q, max_seqlen_k, dropout_p):
        grads = attention_backward(
            _to_dense(grad_out[rows_q]), _to_dense(q[rows_q]), _to_dense(k[rows_k]),
            _to_dense(v[rows_k]), None, _to_dense(out[rows_q]), lse[:, rows_q].unsqueeze(0),
            dropout_seed, dropout_p, is_causal, scale, False, dropout_counter=counter)
        grad_q[rows_q], grad_k[rows_k], grad_v[rows_k] = (_from_dense(g) for g in grads[:3])
    return grad_q, grad_k, grad_v
