"""Triton kernel of fused attention, forward: FlashAttention-2 tiling, online softmax.

One program computes BLOCK_M query rows of one (sequence, head). It walks the key tiles
those rows may attend to, keeping per row the running max ``m`` and sum ``l`` of the base-2
exponentials in fp32, rescales its fp32 accumulator whenever the max grows, and finishes
with out = acc / l and the base-2 log-sum-exp lse2 = m + log2 l. Dropout zeroes probabilities in the
accumulator only (``l`` is the undropped sum) with the Philox mask of ``fasttx.random``;
nothing of size Lq x Lk is ever written.

Dense and packed (varlen) batches share the kernel: a dense tensor is addressed through its
(batch, head, row, dim) strides, a packed one with batch stride 0 and row offsets from
cu_seqlens (``VARLEN``).
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
def _forward_key_tiles(
    acc, row_max, row_sum,  # running state: fp32 (BLOCK_M, BLOCK_DV), (BLOCK_M,), (BLOCK_M,)
    q,                      # (BLOCK_M, BLOCK_D) query tile, input dtype
    k_base, v_base,         # &k[b, kv_head, row 0, 0], &v[b, kv_head, row 0, 0] of the sequence
    mask_base,              # &mask[b, h, 0, 0]
    rows,                   # (BLOCK_M,) query positions within the sequence
    seed, counter_base,     # Philox seed and (b * H + h) * Lq for the dropout counters
    start, stop, seq_len_q, seq_len_k, len_k, qk_scale, dropout_p,
    stride_kn, stride_kd, stride_vn, stride_vd, stride_mm, stride_mn,
    HEAD_DIM: tl.constexpr, VALUE_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_DV: tl.constexpr, BLOCK_N: tl.constexpr, MASK: tl.constexpr,
    MASK_PER_KEY: tl.constexpr, CAUSAL: tl.constexpr, BOUNDS: tl.constexpr,
    DROPOUT: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    """Folds key tiles [start, stop) into the running softmax state."""
    dims = tl.arange(0, BLOCK_D)
    value_dims = tl.arange(0, BLOCK_DV)
    for start_n in range(start, stop, BLOCK_N):
        cols = start_n + tl.arange(0, BLOCK_N)
        key_ok = cols < seq_len_k
        k_t = tl.load(k_base + cols[None, :] * stride_kn + dims[:, None] * stride_kd,
                      mask=key_ok[None, :] & (dims[:, None] < HEAD_DIM), other=0.0)
        qk = tl.dot(q, k_t, input_precision=DOT_PRECISION)  # fp32 accumulation
        scores = masked_scores(qk, rows[:, None], cols[None, :], mask_base, seq_len_q,
                               seq_len_k, qk_scale, stride_mm, stride_mn, MASK, MASK_PER_KEY,
                               CAUSAL, BOUNDS)
        new_max = tl.maximum(row_max, tl.max(scores, 1))
        # a row that has seen no allowed key yet keeps max -inf: shift by 0, not by -inf
        shift = tl.where(new_max == float("-inf"), 0.0, new_max)
        probs = tl.math.exp2(scores - shift[:, None])
        correction = tl.math.exp2(row_max - shift)
        row_sum = row_sum * correction + tl.sum(probs, 1)
        if DROPOUT:
            keep = dropout_keep(seed, counter_base, rows[:, None], cols[None, :], len_k,
                                dropout_p)
            probs = tl.where(keep, probs, 0.0)
        v = tl.load(v_base + cols[:, None] * stride_vn + value_dims[None, :] * stride_vd,
                    mask=key_ok[:, None] & (value_dims[None, :] < VALUE_DIM), other=0.0)
        acc = acc * correction[:, None]
        acc = tl.dot(probs.to(v.dtype), v, acc, input_precision=DOT_PRECISION)
        row_max = new_max
    return acc, row_max, row_sum


@triton.jit
def attention_forward_kernel(
    q_ptr,             # (B, H, Lq, E), or packed (total_q, H, E): queries, any strides
    k_ptr,             # (B, Hk, Lk, E), or packed (total_k, Hk, E): keys
    v_ptr,             # (B, Hk, Lk, Ev), or packed (total_k, Hk, Ev): values
    mask_ptr,          # (B, H, Lq, Lk) bool-as-uint8 or float, stride 0 where broadcast
    key_range_ptr,     # int32 (B, 2): first and last+1 allowed key (MASK_PER_KEY only)
    cu_seqlens_q_ptr,  # int32 (B + 1,): packed query row offsets (VARLEN only)
    cu_seqlens_k_ptr,  # int32 (B + 1,): packed key row offsets (VARLEN only)
    seed_ptr,          # int64 (1,): Philox seed (DROPOUT only)
    out_ptr,           # (B, H, Lq, Ev) or (total_q, H, Ev): output, written
    lse_ptr,           # fp32 (B, H, Lq) or (H, total_q): base-2 row log-sum-exp, written
    stride_qb, stride_qh, stride_qm, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_mb, stride_mh, stride_mm, stride_mn,
    stride_ob, stride_oh, stride_om, stride_od,
    stride_lb, stride_lh,
    num_heads,         # H
    group_size,        # H // Hk: query heads per key/value head
    len_q, len_k,      # dense lengths (varlen: the max lengths, for the dropout layout)
    qk_scale,          # scale * log2(e)
    dropout_p,
    length_bucket,     # next power of two of the longest length: an autotuning key only
    HEAD_DIM: tl.constexpr, VALUE_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,  # head dims padded to powers of two
    MASK: tl.constexpr,  # "none" | "bool" | "float"
    MASK_PER_KEY: tl.constexpr, IS_CAUSAL: tl.constexpr, DROPOUT: tl.constexpr,
    VARLEN: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    start_m, head, batch = program_tile(len_q, num_heads, BLOCK_M)
    q_start, seq_len_q, k_start, seq_len_k = sequence_bounds(
        cu_seqlens_q_ptr, cu_seqlens_k_ptr, batch, len_q, len_k, VARLEN)
    kv_head = head // group_size

    rows = start_m + tl.arange(0, BLOCK_M)
    row_ok = rows < seq_len_q
    dims = tl.arange(0, BLOCK_D)
    q_base = q_ptr + batch * stride_qb + head * stride_qh + q_start * stride_qm
    q = tl.load(q_base + rows[:, None] * stride_qm + dims[None, :] * stride_qd,
                mask=row_ok[:, None] & (dims[None, :] < HEAD_DIM), other=0.0)
    k_base = k_ptr + batch * stride_kb + kv_head * stride_kh + k_start * stride_kn
    v_base = v_ptr + batch * stride_vb + kv_head * stride_vh + k_start * stride_vn
    mask_base = mask_ptr + batch * stride_mb + head * stride_mh
    seed = 0
    if DROPOUT:
        seed = tl.load(seed_ptr)
    counter_base = (batch * num_heads + head).to(tl.int64) * len_q

    acc = tl.zeros((BLOCK_M, BLOCK_DV), dtype=tl.float32)
    row_max = tl.full((BLOCK_M,), float("-inf"), dtype=tl.float32)
    row_sum = tl.zeros((BLOCK_M,), dtype=tl.float32)
    first, unchecked_end, end = key_tile_range(start_m, seq_len_q, seq_len_k, key_range_ptr,
                                               batch, IS_CAUSAL, MASK_PER_KEY, BLOCK_M, BLOCK_N)
    # Two passes over the key tiles: the bulk without per-element bounds or causal checks,
    # then the few tiles on the diagonal or past the sequence's end with them.
    acc, row_max, row_sum = _forward_key_tiles(
        acc, row_max, row_sum, q, k_base, v_base, mask_base, rows, seed, counter_base,
        first, unchecked_end, seq_len_q, seq_len_k, len_k, qk_scale, dropout_p,
        stride_kn, stride_kd, stride_vn, stride_vd, stride_mm, stride_mn,
        HEAD_DIM, VALUE_DIM, BLOCK_D, BLOCK_DV, BLOCK_N, MASK, MASK_PER_KEY,
        False, False, DROPOUT, DOT_PRECISION)
    acc, row_max, row_sum = _forward_key_tiles(
        acc, row_max, row_sum, q, k_base, v_base, mask_base, rows, seed, counter_base,
        unchecked_end, end, seq_len_q, seq_len_k, len_k, qk_scale, dropout_p,
        stride_kn, stride_kd, stride_vn, stride_vd, stride_mm, stride_mn,
        HEAD_DIM, VALUE_DIM, BLOCK_D, BLOCK_DV, BLOCK_N, MASK, MASK_PER_KEY,
        IS_CAUSAL, True, DROPOUT, DOT_PRECISION)

    # A row that may attend to no key has sum 0: it gets zeros and lse2 = -inf.
    attended = row_sum > 0.0
    safe_sum = tl.where(attended, row_sum, 1.0)
    out = acc / safe_sum[:, None]
    if DROPOUT:
        out = out * (1.0 / (1.0 - dropout_p))
    lse = tl.where(attended, row_max + tl.math.log2(safe_sum), float("-inf"))

    value_dims = tl.arange(0, BLOCK_DV)
    out_base = out_ptr + batch * stride_ob + head * stride_oh + q_start * stride_om
    tl.store(out_base + rows[:, None] * stride_om + value_dims[None, :] * stride_od, out,
             mask=row_ok[:, None] & (value_dims[None, :] < VALUE_DIM))
    tl.store(lse_ptr + batch * stride_lb + head * stride_lh + q_start + rows, lse, mask=row_ok)
