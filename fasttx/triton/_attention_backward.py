"""Triton kernels of fused attention, backward: recompute the probabilities from the LSE.

With P = softmax(S) (rebuilt tile by tile from the saved log-sum-exp), K = dropout keep
mask / (1 - p) and delta = rowsum(dO * O):

    dV = (P * K)^T dO        dP = (dO V^T) * K        dS = P * (dP - delta)
    dQ = dS K * scale        dK = dS^T Q * scale      d(mask) = dS

Three kernels, no atomics (so results are bit-identical run to run):
  1. ``attention_backward_preprocess_kernel``: delta per query row.
  2. ``attention_backward_dq_kernel``: one program per query tile; writes dQ and, when a
     float mask needs its gradient, the dS tiles.
  3. ``attention_backward_dkdv_kernel``: one program per key tile of one key/value head;
     it loops over every query tile of every query head sharing that key/value head (GQA
     needs no reduction afterwards) and writes dK and dV once.

Float masks (``MASK == "float"``) can push a whole row to -1e7 or finfo.min, where the
fp32 lse can't resolve log2(row sum): exp2(S - lse) is then off by a common factor per row
(every probability 1 at finfo.min). The dQ kernel sums the rebuilt probabilities of each
row as it walks all its keys, divides dQ by that sum (dS is linear in P) and saves
1 / sum for the dK/dV kernel, so that the backward's P sums to 1 as the forward's does.

Bounds: the dK/dV kernel needs no key-bounds check, since keys past the end only produce
rows of dK/dV that are never stored; padded query rows load q = dO = 0 and lse = +inf,
which makes their probabilities 0. A row with no allowed key has lse = -inf, read as
+inf for the same effect.
"""

from __future__ import annotations

import triton
import triton.language as tl

from fasttx.triton._attention_common import (
    dropout_keep,
    key_tile_range,
    masked_scores,
    program_tile,
    sequence_bounds,
)


@triton.jit
def attention_backward_preprocess_kernel(
    out_ptr,       # (B, H, L, Ev) or packed (total_q, H, Ev) viewed with batch stride 0
    grad_out_ptr,  # same shape as out
    delta_ptr,     # fp32, laid out like the lse: rowsum(dO * O), written
    stride_ob, stride_oh, stride_om, stride_od,
    stride_gb, stride_gh, stride_gm, stride_gd,
    stride_db, stride_dh,
    num_rows, num_heads,
    VALUE_DIM: tl.constexpr, BLOCK_DV: tl.constexpr, BLOCK_M: tl.constexpr,
):
    start_m, head, batch = program_tile(num_rows, num_heads, BLOCK_M)
    rows = start_m + tl.arange(0, BLOCK_M)
    value_dims = tl.arange(0, BLOCK_DV)
    ok = (rows[:, None] < num_rows) & (value_dims[None, :] < VALUE_DIM)
    out = tl.load(out_ptr + batch * stride_ob + head * stride_oh + rows[:, None] * stride_om
                  + value_dims[None, :] * stride_od, mask=ok, other=0.0)
    grad_out = tl.load(grad_out_ptr + batch * stride_gb + head * stride_gh
                       + rows[:, None] * stride_gm + value_dims[None, :] * stride_gd,
                       mask=ok, other=0.0)
    delta = tl.sum(out.to(tl.float32) * grad_out.to(tl.float32), 1)  # fp32 row dot products
    tl.store(delta_ptr + batch * stride_db + head * stride_dh + rows, delta,
             mask=rows < num_rows)


@triton.jit
def load_row_stats(lse_base, delta_base, rows, row_ok):
    """Base-2 lse (+inf for padded rows and rows with no allowed key) and delta of rows."""
    lse = tl.load(lse_base + rows, mask=row_ok, other=float("inf"))
    lse = tl.where(lse == float("-inf"), float("inf"), lse)
    delta = tl.load(delta_base + rows, mask=row_ok, other=0.0)
    return lse, delta


@triton.jit
def _dkdv_query_tiles(
    grad_k, grad_v,      # fp32 accumulators (BLOCK_N, BLOCK_D), (BLOCK_N, BLOCK_DV)
    k, v,                # (BLOCK_N, BLOCK_D), (BLOCK_N, BLOCK_DV): this program's key tile
    q_base, do_base,     # &q[b, h, row 0, 0], &dO[b, h, row 0, 0] of the sequence
    lse_base, delta_base,  # &lse[b, h, row 0], &delta[b, h, row 0]
    row_scale_base,      # &row_scale[b, h, row 0]: 1 / row sums of exp2(S - lse) (float masks)
    mask_base, cols,     # &mask[b, h, 0, 0]; (BLOCK_N,) key positions of the tile
    seed, counter_base, start, stop, seq_len_q, seq_len_k, len_k, qk_scale, dropout_p,
    stride_qm, stride_qd, stride_dom, stride_dod, stride_mm, stride_mn,
    HEAD_DIM: tl.constexpr, VALUE_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_DV: tl.constexpr, BLOCK_M: tl.constexpr, MASK: tl.constexpr,
    MASK_PER_KEY: tl.constexpr, CAUSAL: tl.constexpr, DROPOUT: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    """Adds query tiles [start, stop) of one head to dK, dV, in transposed (key, query) form."""
    dims = tl.arange(0, BLOCK_D)
    value_dims = tl.arange(0, BLOCK_DV)
    for start_m in range(start, stop, BLOCK_M):
        rows = start_m + tl.arange(0, BLOCK_M)
        row_ok = rows < seq_len_q
        q_t = tl.load(q_base + rows[None, :] * stride_qm + dims[:, None] * stride_qd,
                      mask=row_ok[None, :] & (dims[:, None] < HEAD_DIM), other=0.0)
        grad_out = tl.load(do_base + rows[:, None] * stride_dom + value_dims[None, :] * stride_dod,
                           mask=row_ok[:, None] & (value_dims[None, :] < VALUE_DIM), other=0.0)
        lse, delta = load_row_stats(lse_base, delta_base, rows, row_ok)
        scores_t = masked_scores(tl.dot(k, q_t, input_precision=DOT_PRECISION), rows[None, :],
                                 cols[:, None], mask_base, seq_len_q, seq_len_k, qk_scale,
                                 stride_mm, stride_mn, MASK, MASK_PER_KEY, CAUSAL, False)
        probs_t = tl.math.exp2(scores_t - lse[None, :])  # (BLOCK_N, BLOCK_M), fp32
        if MASK == "float":  # normalised by the dQ kernel's row sums
            probs_t *= tl.load(row_scale_base + rows, mask=row_ok, other=0.0)[None, :]
        grad_probs_t = tl.dot(v, tl.trans(grad_out), input_precision=DOT_PRECISION)
        dropped_t = probs_t
        if DROPOUT:
            keep_t = dropout_keep(seed, counter_base, rows[None, :], cols[:, None], len_k,
                                  dropout_p)
            dropped_t = tl.where(keep_t, probs_t * (1.0 / (1.0 - dropout_p)), 0.0)
            grad_probs_t = tl.where(keep_t, grad_probs_t * (1.0 / (1.0 - dropout_p)), 0.0)
        grad_v = tl.dot(dropped_t.to(grad_out.dtype), grad_out, grad_v,
                        input_precision=DOT_PRECISION)
        grad_scores_t = probs_t * (grad_probs_t - delta[None, :])
        grad_k = tl.dot(grad_scores_t.to(q_t.dtype), tl.trans(q_t), grad_k,
                        input_precision=DOT_PRECISION)
    return grad_k, grad_v


@triton.jit
def attention_backward_dkdv_kernel(
    q_ptr, k_ptr, v_ptr,  # as in the forward kernel
    mask_ptr, key_range_ptr, cu_seqlens_q_ptr, cu_seqlens_k_ptr, seed_ptr,  # as forward
    grad_out_ptr,      # (B, H, Lq, Ev) or (total_q, H, Ev): dO
    lse_ptr,           # fp32 (B, H, Lq) or (H, total_q): the forward's base-2 log-sum-exp
    delta_ptr,         # fp32, laid out like lse: rowsum(dO * O)
    row_scale_ptr,     # fp32, laid out like lse: the dQ kernel's 1 / row sums (float masks)
    grad_k_ptr,        # (B, Hk, Lk, E) or (total_k, Hk, E): dK, written
    grad_v_ptr,        # (B, Hk, Lk, Ev) or (total_k, Hk, Ev): dV, written
    stride_qb, stride_qh, stride_qm, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_mb, stride_mh, stride_mm, stride_mn,
    stride_gb, stride_gh, stride_gm, stride_gd,   # grad_out
    stride_lb, stride_lh,                         # lse and delta
    stride_dkb, stride_dkh, stride_dkn, stride_dkd,
    stride_dvb, stride_dvh, stride_dvn, stride_dvd,
    num_kv_heads, group_size, len_q, len_k, qk_scale, scale, dropout_p,
    length_bucket,     # next power of two of the longest length: an autotuning key only
    HEAD_DIM: tl.constexpr, VALUE_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
    MASK: tl.constexpr, MASK_PER_KEY: tl.constexpr, IS_CAUSAL: tl.constexpr,
    DROPOUT: tl.constexpr, VARLEN: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    start_n, kv_head, batch = program_tile(len_k, num_kv_heads, BLOCK_N)
    num_heads = num_kv_heads * group_size
    q_start, seq_len_q, k_start, seq_len_k = sequence_bounds(
        cu_seqlens_q_ptr, cu_seqlens_k_ptr, batch, len_q, len_k, VARLEN)

    cols = start_n + tl.arange(0, BLOCK_N)
    col_ok = cols < seq_len_k
    dims = tl.arange(0, BLOCK_D)
    value_dims = tl.arange(0, BLOCK_DV)
    k = tl.load(k_ptr + batch * stride_kb + kv_head * stride_kh + (k_start + cols[:, None])
                * stride_kn + dims[None, :] * stride_kd,
                mask=col_ok[:, None] & (dims[None, :] < HEAD_DIM), other=0.0)
    v = tl.load(v_ptr + batch * stride_vb + kv_head * stride_vh + (k_start + cols[:, None])
                * stride_vn + value_dims[None, :] * stride_vd,
                mask=col_ok[:, None] & (value_dims[None, :] < VALUE_DIM), other=0.0)
    seed = 0
    if DROPOUT:
        seed = tl.load(seed_ptr)

    # Query tiles that see this key tile: all of them, minus those above the causal
    # diagonal; none when the tile lies past the end or outside a key-padding range.
    live = start_n < seq_len_k
    if MASK_PER_KEY:
        live = live & (start_n + BLOCK_N > tl.load(key_range_ptr + 2 * batch))
        live = live & (start_n < tl.load(key_range_ptr + 2 * batch + 1))
    end = tl.where(live, seq_len_q, 0)
    first = 0
    checked_end = 0
    if IS_CAUSAL:  # tiles starting before the tile's last key straddle the diagonal
        first = start_n // BLOCK_M * BLOCK_M
        checked_end = tl.cdiv(start_n + BLOCK_N - 1, BLOCK_M) * BLOCK_M

    grad_k = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)
    grad_v = tl.zeros((BLOCK_N, BLOCK_DV), dtype=tl.float32)
    for group_head in range(group_size):
        head = kv_head * group_size + group_head
        q_base = q_ptr + batch * stride_qb + head * stride_qh + q_start * stride_qm
        do_base = grad_out_ptr + batch * stride_gb + head * stride_gh + q_start * stride_gm
        stats = batch * stride_lb + head * stride_lh + q_start
        mask_base = mask_ptr + batch * stride_mb + head * stride_mh
        counter_base = (batch * num_heads + head).to(tl.int64) * len_q
        grad_k, grad_v = _dkdv_query_tiles(
            grad_k, grad_v, k, v, q_base, do_base, lse_ptr + stats, delta_ptr + stats,
            row_scale_ptr + stats, mask_base, cols, seed, counter_base, first,
            tl.minimum(checked_end, end), seq_len_q, seq_len_k, len_k, qk_scale, dropout_p,
            stride_qm, stride_qd, stride_gm, stride_gd, stride_mm, stride_mn, HEAD_DIM,
            VALUE_DIM, BLOCK_D, BLOCK_DV, BLOCK_M, MASK, MASK_PER_KEY, IS_CAUSAL, DROPOUT,
            DOT_PRECISION)
        grad_k, grad_v = _dkdv_query_tiles(
            grad_k, grad_v, k, v, q_base, do_base, lse_ptr + stats, delta_ptr + stats,
            row_scale_ptr + stats, mask_base, cols, seed, counter_base,
            tl.maximum(checked_end, first), end, seq_len_q, seq_len_k, len_k, qk_scale, dropout_p,
            stride_qm, stride_qd, stride_gm, stride_gd, stride_mm, stride_mn, HEAD_DIM,
            VALUE_DIM, BLOCK_D, BLOCK_DV, BLOCK_M, MASK, MASK_PER_KEY, False, DROPOUT,
            DOT_PRECISION)

    grad_k = grad_k * scale
    tl.store(grad_k_ptr + batch * stride_dkb + kv_head * stride_dkh + (k_start + cols[:, None])
             * stride_dkn + dims[None, :] * stride_dkd, grad_k,
             mask=col_ok[:, None] & (dims[None, :] < HEAD_DIM))
    tl.store(grad_v_ptr + batch * stride_dvb + kv_head * stride_dvh + (k_start + cols[:, None])
             * stride_dvn + value_dims[None, :] * stride_dvd, grad_v,
             mask=col_ok[:, None] & (value_dims[None, :] < VALUE_DIM))


@triton.jit
def _dq_key_tiles(
    grad_q,              # fp32 accumulator (BLOCK_M, BLOCK_D)
    q, grad_out,         # (BLOCK_M, BLOCK_D), (BLOCK_M, BLOCK_DV): this program's rows
    lse, delta,          # (BLOCK_M,) base-2 lse and delta of the rows
    row_sum,             # (BLOCK_M,) fp32 running sums of exp2(S - lse), for float masks
    k_base, v_base,      # &k[b, kv_head, row 0, 0], &v[b, kv_head, row 0, 0]
    mask_base,           # &mask[b, h, 0, 0]
    grad_mask_base,      # &d(mask)[b, h, 0, 0] of a dense (B, H, Lq, Lk) buffer
    rows, seed, counter_base, start, stop, seq_len_q, seq_len_k, len_k, qk_scale, dropout_p,
    stride_kn, stride_kd, stride_vn, stride_vd, stride_mm, stride_mn, stride_gmm, stride_gmn,
    HEAD_DIM: tl.constexpr, VALUE_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_DV: tl.constexpr, BLOCK_N: tl.constexpr, MASK: tl.constexpr,
    MASK_PER_KEY: tl.constexpr, CAUSAL: tl.constexpr, BOUNDS: tl.constexpr,
    DROPOUT: tl.constexpr, MASK_GRAD: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    """Adds key tiles [start, stop) to dQ (and writes their dS when MASK_GRAD): dS from
    P = exp2(S - lse) as is, their row sums added to ``row_sum`` for float masks."""
    dims = tl.arange(0, BLOCK_D)
    value_dims = tl.arange(0, BLOCK_DV)
    for start_n in range(start, stop, BLOCK_N):
        cols = start_n + tl.arange(0, BLOCK_N)
        key_ok = cols < seq_len_k
        k_t = tl.load(k_base + cols[None, :] * stride_kn + dims[:, None] * stride_kd,
                      mask=key_ok[None, :] & (dims[:, None] < HEAD_DIM), other=0.0)
        v_t = tl.load(v_base + cols[None, :] * stride_vn + value_dims[:, None] * stride_vd,
                      mask=key_ok[None, :] & (value_dims[:, None] < VALUE_DIM), other=0.0)
        scores = masked_scores(tl.dot(q, k_t, input_precision=DOT_PRECISION), rows[:, None],
                               cols[None, :], mask_base, seq_len_q, seq_len_k, qk_scale,
                               stride_mm, stride_mn, MASK, MASK_PER_KEY, CAUSAL, BOUNDS)
        probs = tl.math.exp2(scores - lse[:, None])
        if MASK == "float":
            row_sum += tl.sum(probs, 1)
        grad_probs = tl.dot(grad_out, v_t, input_precision=DOT_PRECISION)
        if DROPOUT:
            keep = dropout_keep(seed, counter_base, rows[:, None], cols[None, :], len_k,
                                dropout_p)
            grad_probs = tl.where(keep, grad_probs * (1.0 / (1.0 - dropout_p)), 0.0)
        grad_scores = probs * (grad_probs - delta[:, None])
        if MASK_GRAD:
            tl.store(grad_mask_base + rows[:, None].to(tl.int64) * stride_gmm
                     + cols[None, :] * stride_gmn,
                     grad_scores, mask=(rows[:, None] < seq_len_q) & key_ok[None, :])
        grad_q = tl.dot(grad_scores.to(k_t.dtype), tl.trans(k_t), grad_q,
                        input_precision=DOT_PRECISION)
    return grad_q, row_sum


@triton.jit
def attention_backward_dq_kernel(
    q_ptr, k_ptr, v_ptr,  # as in the forward kernel
    mask_ptr, key_range_ptr, cu_seqlens_q_ptr, cu_seqlens_k_ptr, seed_ptr,  # as forward
    grad_out_ptr, lse_ptr, delta_ptr,  # as in the dK/dV kernel
    row_scale_ptr,     # fp32, laid out like lse: 1 / row sums of exp2(S - lse), written
                       # (float masks only)
    grad_q_ptr,        # (B, H, Lq, E) or (total_q, H, E): dQ, written
    grad_mask_ptr,     # (B, H, Lq, Lk) dense, zero-filled: dS where allowed (MASK_GRAD only)
    stride_qb, stride_qh, stride_qm, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_mb, stride_mh, stride_mm, stride_mn,
    stride_gb, stride_gh, stride_gm, stride_gd,   # grad_out
    stride_lb, stride_lh,                         # lse and delta
    stride_dqb, stride_dqh, stride_dqm, stride_dqd,
    stride_gmb, stride_gmh, stride_gmm, stride_gmn,
    num_heads, group_size, len_q, len_k, qk_scale, scale, dropout_p,
    length_bucket,     # next power of two of the longest length: an autotuning key only
    HEAD_DIM: tl.constexpr, VALUE_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
    MASK: tl.constexpr, MASK_PER_KEY: tl.constexpr, IS_CAUSAL: tl.constexpr,
    DROPOUT: tl.constexpr, MASK_GRAD: tl.constexpr, VARLEN: tl.constexpr,
    DOT_PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    start_m, head, batch = program_tile(len_q, num_heads, BLOCK_M)
    kv_head = head // group_size
    q_start, seq_len_q, k_start, seq_len_k = sequence_bounds(
        cu_seqlens_q_ptr, cu_seqlens_k_ptr, batch, len_q, len_k, VARLEN)

    rows = start_m + tl.arange(0, BLOCK_M)
    row_ok = rows < seq_len_q
    dims = tl.arange(0, BLOCK_D)
    value_dims = tl.arange(0, BLOCK_DV)
    q = tl.load(q_ptr + batch * stride_qb + head * stride_qh + (q_start + rows[:, None])
                * stride_qm + dims[None, :] * stride_qd,
                mask=row_ok[:, None] & (dims[None, :] < HEAD_DIM), other=0.0)
    grad_out = tl.load(grad_out_ptr + batch * stride_gb + head * stride_gh
                       + (q_start + rows[:, None]) * stride_gm + value_dims[None, :] * stride_gd,
                       mask=row_ok[:, None] & (value_dims[None, :] < VALUE_DIM), other=0.0)
    stats = batch * stride_lb + head * stride_lh + q_start
    lse, delta = load_row_stats(lse_ptr + stats, delta_ptr + stats, rows, row_ok)
    k_base = k_ptr + batch * stride_kb + kv_head * stride_kh + k_start * stride_kn
    v_base = v_ptr + batch * stride_vb + kv_head * stride_vh + k_start * stride_vn
    mask_base = mask_ptr + batch * stride_mb + head * stride_mh
    grad_mask_base = grad_mask_ptr + batch * stride_gmb + head * stride_gmh
    seed = 0
    if DROPOUT:
        seed = tl.load(seed_ptr)
    counter_base = (batch * num_heads + head).to(tl.int64) * len_q

    first, unchecked_end, end = key_tile_range(start_m, seq_len_q, seq_len_k, key_range_ptr,
                                               batch, IS_CAUSAL, MASK_PER_KEY, BLOCK_M, BLOCK_N)
    grad_q = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)
    row_sum = tl.zeros((BLOCK_M,), dtype=tl.float32)
    grad_q, row_sum = _dq_key_tiles(
        grad_q, q, grad_out, lse, delta, row_sum, k_base, v_base, mask_base, grad_mask_base,
        rows, seed, counter_base, first, unchecked_end, seq_len_q, seq_len_k, len_k, qk_scale,
        dropout_p, stride_kn, stride_kd, stride_vn, stride_vd, stride_mm, stride_mn, stride_gmm,
        stride_gmn, HEAD_DIM, VALUE_DIM, BLOCK_D, BLOCK_DV, BLOCK_N, MASK, MASK_PER_KEY,
        False, False, DROPOUT, MASK_GRAD, DOT_PRECISION)
    # edge tiles check bounds too: past-the-end keys could overflow exp2 (k = 0 there)
    grad_q, row_sum = _dq_key_tiles(
        grad_q, q, grad_out, lse, delta, row_sum, k_base, v_base, mask_base, grad_mask_base,
        rows, seed, counter_base, unchecked_end, end, seq_len_q, seq_len_k, len_k, qk_scale,
        dropout_p, stride_kn, stride_kd, stride_vn, stride_vd, stride_mm, stride_mn, stride_gmm,
        stride_gmn, HEAD_DIM, VALUE_DIM, BLOCK_D, BLOCK_DV, BLOCK_N, MASK, MASK_PER_KEY,
        IS_CAUSAL, True, DROPOUT, MASK_GRAD, DOT_PRECISION)

    if MASK == "float":  # normalise P (see the module docstring); rows with no key have P = 0
        row_scale = 1.0 / tl.where(row_sum > 0.0, row_sum, 1.0)
        grad_q = grad_q * row_scale[:, None]
        tl.store(row_scale_ptr + stats + rows, row_scale, mask=row_ok)
    grad_q = grad_q * scale
    tl.store(grad_q_ptr + batch * stride_dqb + head * stride_dqh + (q_start + rows[:, None])
             * stride_dqm + dims[None, :] * stride_dqd, grad_q,
             mask=row_ok[:, None] & (dims[None, :] < HEAD_DIM))
