"""Device functions shared by the attention kernels (forward and backward, dense and varlen).

Index conventions inside every kernel: ``q_idx`` / ``k_idx`` are query and key positions
*within one sequence*, shaped so they broadcast to the score tile at hand ((M, 1) and
(1, N) in the forward and dQ kernels, (1, M) and (N, 1) in the transposed dK/dV kernel),
so one helper serves both orientations.

Scores live in base 2 (``qk * scale * log2(e)``, mask values times log2(e)) so that the
softmax can use ``exp2``. The saved row statistic is in the same base,
lse2 = log2(sum(exp2(scores))), so that the backward's exp2(scores - lse2) repeats the
forward's arithmetic (a row with one allowed key gets probability exactly 1).
"""

from __future__ import annotations

import triton
import triton.language as tl

LOG2E = tl.constexpr(1.4426950408889634)  # globals read inside kernels must be constexprs


@triton.jit
def program_tile(num_rows, num_heads, BLOCK: tl.constexpr):
    """(first row, head, batch) of this program's tile in the 1D grid over
    tiles x heads x batch, tiles fastest (programs sharing a head's keys and values run
    together; one axis has no 65535 limit). Head and batch in int64: the offsets they
    scale can pass 2**31 elements."""
    pid = tl.program_id(0)
    num_tiles = tl.cdiv(num_rows, BLOCK)
    rest = pid // num_tiles
    return (pid % num_tiles) * BLOCK, (rest % num_heads).to(tl.int64), \
        (rest // num_heads).to(tl.int64)


@triton.jit
def sequence_bounds(cu_seqlens_q_ptr, cu_seqlens_k_ptr, batch, len_q, len_k,
                    VARLEN: tl.constexpr):
    """(first query row, query length, first key row, key length) of sequence ``batch``.

    Dense batches: every sequence has the full lengths and starts at row 0 of its batch
    slice. Packed batches: rows cu_seqlens[b]:cu_seqlens[b + 1] of the packed tensors.
    """
    if VARLEN:  # row offsets in int64: packed rows x row stride may pass 2**31
        q_start = tl.load(cu_seqlens_q_ptr + batch)
        seq_len_q = tl.load(cu_seqlens_q_ptr + batch + 1) - q_start
        k_start = tl.load(cu_seqlens_k_ptr + batch)
        seq_len_k = tl.load(cu_seqlens_k_ptr + batch + 1) - k_start
        q_start = q_start.to(tl.int64)
        k_start = k_start.to(tl.int64)
    else:
        q_start = 0
        seq_len_q = len_q
        k_start = 0
        seq_len_k = len_k
    return q_start, seq_len_q, k_start, seq_len_k


@triton.jit
def key_tile_range(start_m, seq_len_q, seq_len_k, key_range_ptr, batch,
                   IS_CAUSAL: tl.constexpr, MASK_PER_KEY: tl.constexpr,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Key tiles that query rows [start_m, start_m + BLOCK_M) may attend to.

    Returns (first, unchecked_end, end): tiles in [first, unchecked_end) lie wholly inside
    the sequence and wholly left of the causal diagonal, so they need no bounds or causal
    checks; tiles in [unchecked_end, end) need them. Skipped entirely: key tiles right of
    the causal diagonal, and for a key-padding mask the tiles outside the batch's
    [first allowed key, last allowed key] (``key_range_ptr``). A program whose rows lie
    past the sequence's end gets an empty range.
    """
    first = 0
    end = seq_len_k
    if MASK_PER_KEY:
        first = tl.load(key_range_ptr + 2 * batch)
        end = tl.minimum(end, tl.load(key_range_ptr + 2 * batch + 1))
    unchecked_end = end
    if IS_CAUSAL:
        end = tl.minimum(end, start_m + BLOCK_M)
        unchecked_end = tl.minimum(end, start_m + 1)
    end = tl.where(start_m < seq_len_q, end, 0)
    first = first // BLOCK_N * BLOCK_N
    unchecked_end = tl.maximum(unchecked_end // BLOCK_N * BLOCK_N, first)
    unchecked_end = tl.minimum(unchecked_end, tl.maximum(end, first))
    return first, unchecked_end, end


@triton.jit
def masked_scores(qk, q_idx, k_idx, mask_base, seq_len_q, seq_len_k, qk_scale,
                  stride_mm, stride_mn, MASK: tl.constexpr, MASK_PER_KEY: tl.constexpr,
                  CAUSAL: tl.constexpr, BOUNDS: tl.constexpr):
    """Base-2 scores of a tile: qk * qk_scale plus the mask, -inf where not allowed.

    qk: fp32 tile of q.k products. mask_base: &mask[b, h, 0, 0] (read unless MASK is
    "none"; a bool mask is read as uint8). MASK_PER_KEY: the mask does not vary along
    queries, so one row of BLOCK_N values serves the whole tile. CAUSAL: apply
    k_idx <= q_idx. BOUNDS: apply k_idx < seq_len_k (keys past the end of the sequence).
    """
    scores = qk * qk_scale
    if MASK != "none":
        if MASK_PER_KEY:
            mask = tl.load(mask_base + k_idx * stride_mn, mask=k_idx < seq_len_k, other=0)
        else:
            in_bounds = (q_idx < seq_len_q) & (k_idx < seq_len_k)
            mask = tl.load(mask_base + q_idx.to(tl.int64) * stride_mm + k_idx * stride_mn,
                           mask=in_bounds, other=0)
        if MASK == "bool":
            scores = tl.where(mask != 0, scores, float("-inf"))
        else:  # float mask, upcast to fp32 and moved to base 2 like the scores; a finite
            # value stays finite (finfo.min * log2(e) would overflow), as it does in torch
            bias = mask.to(tl.float32)
            bias = tl.where(bias == float("-inf"), bias, tl.maximum(bias * LOG2E, -3.4028234e38))
            scores = scores + bias
    if CAUSAL:
        scores = tl.where(k_idx <= q_idx, scores, float("-inf"))
    if BOUNDS:
        scores = tl.where(k_idx < seq_len_k, scores, float("-inf"))
    return scores


@triton.jit
def dropout_keep(seed, counter_base, q_idx, k_idx, len_k, dropout_p):
    """Philox keep decision of the probabilities at (q_idx, k_idx).

    counter = (counter_base + q_idx) * len_k + k_idx with counter_base = (b * H + h) * Lq:
    the dense (B, H, Lq, Lk) layout of ``fasttx.random`` (Lq, Lk the padded lengths for
    packed sequences), in int64 so that large batches don't wrap.
    """
    counter = (counter_base + q_idx.to(tl.int64)) * len_k + k_idx
    return tl.rand(seed, counter) >= dropout_p
