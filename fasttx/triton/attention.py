"""Triton backend of masked scaled-dot-product attention: the launchers.

``attention_forward`` / ``attention_backward`` take the reference's arguments
(``fasttx.reference.attention``) and run the FlashAttention-2-style kernels of
``_attention_forward`` and ``_attention_backward``; ``varlen_attention`` reuses the same
launch functions for packed batches.

What the launchers decide:
- the mask kind, a compile-time constant: "none", "bool" (read as uint8, no copy) or
  "float"; a mask that does not vary over heads and queries (a key-padding mask, stride 0
  after broadcasting) is read one key row per tile, and the range of keys it allows in
  each batch is computed once so that the kernels skip the key tiles outside it;
- the tile sizes: autotuned on a GPU per (head dims, mask kind, causal, dropout, dtypes,
  length bucket) from configs for Hopper or for Ampere (with ``FASTTX_TRITON_AUTOTUNE=0``
  the first of them that fits); fixed small tiles under the Triton interpreter; any fixed
  tiles inside :func:`fixed_blocks` (tests use it to check that results don't depend on
  the tiles);
- the fp32 dot precision: tf32 only when torch allows it for fp32 matmuls.

q, k, v, the mask and dO are read through their strides (no copies); outputs are
allocated contiguous.
"""

from __future__ import annotations

import contextlib
import dataclasses

import torch
import triton

from fasttx.triton._attention_backward import (
    attention_backward_dkdv_kernel,
    attention_backward_dq_kernel,
    attention_backward_preprocess_kernel,
)
from fasttx.triton._attention_common import LOG2E
from fasttx.triton._attention_forward import attention_forward_kernel
from fasttx.triton._settings import (
    autotuning,
    first_fitting_config,
    fp32_dot_precision,
    interpreter_dtype_reason,
    interpreting,
)

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MAX_HEAD_DIM = 256

# (BLOCK_M, BLOCK_N, num_warps, num_stages) per architecture. The forward and dQ kernels
# keep BLOCK_M query rows resident and stream BLOCK_N keys; the dK/dV kernel keeps BLOCK_N
# keys resident and streams BLOCK_M queries, so it favours the transposed shapes. Chosen
# from ptxas's resource usage, compiled ahead of time for sm_90 (`python -m benchmarks
# static`, benchmarks/results/static/): every Hopper config uses warpgroup MMA (wgmma)
# for 16-bit inputs, which 32 x 32 tiles on 4 warps do not (they fall back to mma.sync and
# are Ampere-only), and runs its loops without register spills except where
# ``spill_free`` says.
_CONFIGS = {
    "forward": {
        "hopper": [(128, 128, 8, 3), (128, 64, 8, 3), (128, 64, 8, 4), (128, 32, 8, 3),
                   (64, 64, 4, 3), (64, 64, 4, 2), (64, 32, 4, 2)],
        "ampere": [(128, 64, 8, 3), (128, 32, 8, 3), (64, 64, 4, 3), (64, 32, 4, 2)],
    },
    "dkdv": {
        "hopper": [(32, 128, 8, 2), (16, 128, 8, 2), (32, 64, 8, 2), (16, 64, 8, 2)],
        "ampere": [(32, 128, 8, 2), (32, 64, 8, 2), (16, 64, 8, 2), (32, 32, 4, 2)],
    },
    "dq": {
        "hopper": [(128, 64, 8, 3), (128, 32, 8, 3), (64, 64, 8, 3), (64, 32, 4, 2)],
        "ampere": [(128, 32, 8, 3), (64, 64, 8, 3), (64, 32, 4, 2), (32, 32, 4, 2)],
    },
}

# when no listed config fits the shared memory (large fp32 tiles on a smaller GPU)
_SMALLEST_CONFIG = (32, 32, 4, 1)
_AUTOTUNE_KEY = ["HEAD_DIM", "VALUE_DIM", "MASK", "MASK_PER_KEY", "IS_CAUSAL", "DROPOUT",
                 "VARLEN", "length_bucket"]  # the autotuner adds every tensor's dtype
_INTERPRETER_BLOCKS = {"BLOCK_M": 16, "BLOCK_N": 16}
_fixed_blocks: dict[str, int] | None = None


def spill_free(kind, block_m, block_n, meta) -> bool:
    """False for a tile whose loops spill registers on sm_90 for a launch with these
    meta-parameters (its compile-time flags), as ptxas and the SASS of the static report's
    headline launches show under Triton 3.6 or 3.9: the 128 x 128 forward with dropout
    (8-33 spill instructions in its loops), and the 128 x 64 dQ with dropout above head dim
    64 (4). Other tiles at 255 registers spill a few bytes only outside their loops, once
    per program (the d128 forward's 128 x 128 with a mask or causal, say): they stay, for
    their fewer instructions per score."""
    if not meta["DROPOUT"]:
        return True
    if kind == "forward":
        return (block_m, block_n) != (128, 128)
    wide_head = max(meta["BLOCK_D"], meta["BLOCK_DV"]) > 64
    return not (kind == "dq" and wide_head and (block_m, block_n) == (128, 64))


def _shared_memory(kind, block_m, block_n, stages, element_size, block_d, block_dv,
                   mask_element_size=0):
    """Bytes of shared memory a config needs: the resident tile, ``stages`` buffers of the
    streamed tiles, and for a mask read tile by tile (``mask_element_size`` > 0) its
    pipelined tiles. At or above what ptxas reports for 16-bit inputs on sm_90 (the tests
    check it); fp32 full-precision dot products can need more, and the autotuner skips a
    config that still does not fit."""
    width = block_d + block_dv
    resident = {"forward": block_m * block_d, "dq": block_m * width, "dkdv": block_n * width}
    streamed = block_m if kind == "dkdv" else block_n
    mask_tiles = (stages - 1) * block_m * block_n * mask_element_size
    return element_size * (resident[kind] + stages * streamed * width) + mask_tiles


def _prune(kind):
    """Keeps the configs of this GPU's architecture whose tiles fit its shared memory, and on
    Hopper those whose loops run without spills (``spill_free``)."""

    def prune(configs, named_args, **kwargs):
        properties = torch.cuda.get_device_properties(named_args["q_ptr"].device)
        hopper = properties.major >= 9
        wanted = set(_CONFIGS[kind]["hopper" if hopper else "ampere"])
        budget = getattr(properties, "shared_memory_per_block_optin", 101376)
        element_size = named_args["q_ptr"].element_size()
        mask_tiled = kwargs["MASK"] != "none" and not kwargs["MASK_PER_KEY"]
        mask_size = named_args["mask_ptr"].element_size() if mask_tiled else 0
        kept = [c for c in configs
                if (c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.num_warps, c.num_stages) in wanted
                and _shared_memory(kind, c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.num_stages,
                                   element_size, kwargs["BLOCK_D"], kwargs["BLOCK_DV"],
                                   mask_size) <= budget
                and (not hopper or spill_free(kind, c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"],
                                              kwargs))]
        if kept:
            return kept
        block_m, block_n, warps, stages = _SMALLEST_CONFIG  # e.g. fp32, head dim 256
        return [triton.Config({"BLOCK_M": block_m, "BLOCK_N": block_n}, num_warps=warps,
                              num_stages=stages)]
    return prune


def _autotuned(kernel, kind):
    configs = {cfg for arch in _CONFIGS[kind].values() for cfg in arch}
    return triton.autotune(
        configs=[triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=s)
                 for m, n, w, s in sorted(configs)],
        key=_AUTOTUNE_KEY, prune_configs_by={"early_config_prune": _prune(kind)})(kernel)


_KERNELS = {
    "forward": (attention_forward_kernel, _autotuned(attention_forward_kernel, "forward")),
    "dkdv": (attention_backward_dkdv_kernel,
             _autotuned(attention_backward_dkdv_kernel, "dkdv")),
    "dq": (attention_backward_dq_kernel, _autotuned(attention_backward_dq_kernel, "dq")),
}


@contextlib.contextmanager
def fixed_blocks(block_m: int, block_n: int):
    """Runs every attention kernel with these tiles instead of autotuning (for tests)."""
    global _fixed_blocks
    previous, _fixed_blocks = _fixed_blocks, {"BLOCK_M": block_m, "BLOCK_N": block_n}
    try:
        yield
    finally:
        _fixed_blocks = previous


def _launch(kind, grid, *args, **meta):
    """Runs kernel ``kind`` autotuned, or with fixed tiles: inside fixed_blocks, under the
    interpreter, or with autotuning off (the architecture's first config that fits)."""
    plain, tuned = _KERNELS[kind]
    blocks = _fixed_blocks or (_INTERPRETER_BLOCKS if interpreting() else None)
    if blocks is None and not autotuning():
        blocks = untuned_config(kind, *args, **meta)
    if blocks is None:
        tuned[grid](*args, **meta)
    else:
        plain[grid](*args, **meta, **blocks)


def untuned_config(kind, *args, **meta) -> dict:
    """The launch options of kernel ``kind`` with autotuning off: the first config listed
    for this GPU's architecture that fits (as the autotuner's pruning decides)."""
    configs = [triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=s)
               for arch in ("hopper", "ampere") for m, n, w, s in _CONFIGS[kind][arch]]
    return first_fitting_config(_prune(kind), configs, _KERNELS[kind][0], args, meta)


def unsupported_reason(dtype=None, head_dim=None, value_head_dim=None, device=None, **_):
    """Why these inputs can't run on the Triton kernels, or None."""
    if dtype is not None and dtype not in SUPPORTED_DTYPES:
        return f"the triton attention kernels take float16, bfloat16 or float32, got {dtype}"
    reason = interpreter_dtype_reason("triton attention", dtype, device)  # q k^T, P v
    if reason is not None:
        return reason
    for name, size in (("head dim", head_dim), ("value head dim", value_head_dim)):
        if size is not None and size > MAX_HEAD_DIM:
            return f"the triton attention kernels take a {name} up to {MAX_HEAD_DIM}, got {size}"
    return None


@dataclasses.dataclass(frozen=True)
class Sequences:
    """How the kernels address a batch: dense (B, H, L, E) tensors, or packed (total, H, E)
    ones with cu_seqlens (then len_q/len_k are the longest lengths)."""

    batch: int
    len_q: int
    len_k: int
    cu_seqlens_q: torch.Tensor | None = None
    cu_seqlens_k: torch.Tensor | None = None

    @property
    def packed(self) -> bool:
        return self.cu_seqlens_q is not None

    def strides(self, tensor):
        """(batch, head, row, dim) strides of a q/k/v-like tensor."""
        if self.packed:
            return 0, tensor.stride(1), tensor.stride(0), tensor.stride(2)
        return tensor.stride()

    def stat_strides(self, stats):
        """(batch, head) strides of the lse/delta rows (rows are contiguous)."""
        return (0, stats.stride(0)) if self.packed else stats.stride()[:2]

    def cu_seqlens(self, placeholder):
        if self.packed:
            return self.cu_seqlens_q, self.cu_seqlens_k
        return placeholder, placeholder


@dataclasses.dataclass(frozen=True)
class Mask:
    """The attention mask as the kernels read it."""

    kind: str                  # "none" | "bool" | "float"
    per_key: bool              # constant over heads and queries: a key-padding mask
    tensor: torch.Tensor       # the mask (bool viewed as uint8), or a placeholder
    strides: tuple             # (batch, head, query, key), 0 where broadcast
    key_range: torch.Tensor    # int32 (B, 2) allowed-key range per batch, or a placeholder

    @classmethod
    def of(cls, attn_mask, placeholder):
        if attn_mask is None:
            return cls("none", False, placeholder, (0, 0, 0, 0), placeholder)
        batch, heads, len_q, len_k = attn_mask.shape
        per_key = ((heads == 1 or attn_mask.stride(1) == 0)
                   and (len_q == 1 or attn_mask.stride(2) == 0))
        key_range = _allowed_key_range(attn_mask[:, 0, 0, :]) if per_key else placeholder
        if attn_mask.dtype == torch.bool:
            return cls("bool", per_key, attn_mask.view(torch.uint8), attn_mask.stride(),
                       key_range)
        return cls("float", per_key, attn_mask, attn_mask.stride(), key_range)


def _allowed_key_range(rows):
    """int32 (B, 2): first allowed key and one past the last, per row of a (B, Lk) mask."""
    allowed = rows if rows.dtype == torch.bool else ~torch.isneginf(rows)
    positions = torch.arange(rows.shape[1], device=rows.device, dtype=torch.int32)
    first = torch.where(allowed, positions, rows.shape[1]).amin(1)
    last = torch.where(allowed, positions + 1, 0).amax(1)
    return torch.stack([first, last], 1).to(torch.int32)


def _meta(q, k, v, mask, seqs, is_causal, dropout_p):
    """Compile-time constants and the autotuning key shared by the kernels."""
    dim, value_dim = k.shape[-1], v.shape[-1]
    return dict(
        HEAD_DIM=dim, VALUE_DIM=value_dim,
        BLOCK_D=max(16, triton.next_power_of_2(dim)),
        BLOCK_DV=max(16, triton.next_power_of_2(value_dim)),
        MASK=mask.kind, MASK_PER_KEY=mask.per_key, IS_CAUSAL=is_causal,
        DROPOUT=dropout_p > 0.0, VARLEN=seqs.packed,
        DOT_PRECISION=fp32_dot_precision(q.dtype),
    )


def _check_row_offsets(seqs, mask, **tensors):
    """Offsets within one sequence are 32-bit in the kernels (batch and head offsets are
    64-bit): refuse the rare layout where a row offset would pass 2**31 elements."""
    rows = {"q": seqs.len_q, "k": seqs.len_k, "v": seqs.len_k}
    limits = [(name, rows.get(name, seqs.len_q) * seqs.strides(t)[2])
              for name, t in tensors.items()]
    if mask.kind != "none":
        limits.append(("attn_mask", seqs.len_q * mask.strides[2] + seqs.len_k * mask.strides[3]))
    for name, extent in limits:
        if extent >= 2**31:
            raise ValueError(f"{name}: one sequence spans {extent} elements through its row "
                             f"stride; the triton attention kernels address up to 2**31 - 1 "
                             f"within a sequence (make the tensor contiguous, or split it)")


def launch_forward(seqs, q, k, v, mask, dropout_seed, dropout_p, is_causal, scale, out, lse):
    """Writes out and lse for dense or packed q, k, v (see :class:`Sequences`)."""
    _check_row_offsets(seqs, mask, q=q, k=k, v=v)
    heads, kv_heads = q.shape[1], k.shape[1]  # dense (B, H, L, E) and packed (total, H, E)
    cu_q, cu_k = seqs.cu_seqlens(q)
    meta = _meta(q, k, v, mask, seqs, is_causal, dropout_p)
    grid = lambda m: (triton.cdiv(seqs.len_q, m["BLOCK_M"]) * heads * seqs.batch,)  # noqa: E731
    _launch(
        "forward", grid, q, k, v, mask.tensor, mask.key_range, cu_q, cu_k,
        q if dropout_seed is None else dropout_seed, out, lse,
        *seqs.strides(q), *seqs.strides(k), *seqs.strides(v), *mask.strides, *seqs.strides(out),
        *seqs.stat_strides(lse), heads, heads // kv_heads, seqs.len_q, seqs.len_k,
        scale * LOG2E.value, dropout_p, triton.next_power_of_2(max(seqs.len_q, seqs.len_k)),
        **meta)


def attention_forward(q, k, v, attn_mask, dropout_seed, dropout_p, is_causal, scale):
    """As ``fasttx.reference.attention.attention_forward``: out (B, H, Lq, Ev), lse fp32."""
    batch, heads, len_q, _ = q.shape
    out = q.new_empty(batch, heads, len_q, v.shape[-1])
    lse = torch.empty(batch, heads, len_q, device=q.device, dtype=torch.float32)
    seqs = Sequences(batch, len_q, k.shape[2])
    launch_forward(seqs, q, k, v, Mask.of(attn_mask, q), dropout_seed, dropout_p, is_causal,
                   scale, out, lse)
    return out, lse


def launch_backward(seqs, grad_out, q, k, v, mask, out, lse, dropout_seed, dropout_p, is_causal,
                    scale, grad_q, grad_k, grad_v, grad_mask):
    """Writes dq, dk, dv (and dS into grad_mask when it is not None) for dense or packed
    inputs; grad_mask must be a zero-filled dense (B, H, Lq, Lk) tensor."""
    _check_row_offsets(seqs, mask, q=q, k=k, v=v, grad_out=grad_out)  # dS rows are int64
    heads, kv_heads = q.shape[1], k.shape[1]
    cu_q, cu_k = seqs.cu_seqlens(q)
    seed = q if dropout_seed is None else dropout_seed
    meta = _meta(q, k, v, mask, seqs, is_causal, dropout_p)
    rows = q.shape[0] if seqs.packed else seqs.len_q
    delta = torch.empty_like(lse)
    # float masks only: 1 / row sums of the rebuilt probabilities, from the dQ kernel
    row_scale = torch.empty_like(lse) if mask.kind == "float" else lse
    batches = 1 if seqs.packed else seqs.batch  # packed rows form one sequence here
    attention_backward_preprocess_kernel[(triton.cdiv(rows, 64) * heads * batches,)](
        out, grad_out, delta, *seqs.strides(out), *seqs.strides(grad_out),
        *seqs.stat_strides(delta), rows, heads, VALUE_DIM=meta["VALUE_DIM"],
        BLOCK_DV=meta["BLOCK_DV"], BLOCK_M=64)

    shared = (q, k, v, mask.tensor, mask.key_range, cu_q, cu_k, seed, grad_out, lse, delta,
              row_scale)
    strides = (*seqs.strides(q), *seqs.strides(k), *seqs.strides(v), *mask.strides,
               *seqs.strides(grad_out), *seqs.stat_strides(lse))
    sizes = (heads // kv_heads, seqs.len_q, seqs.len_k, scale * LOG2E.value, scale, dropout_p,
             triton.next_power_of_2(max(seqs.len_q, seqs.len_k)))
    mask_grad = grad_mask is not None
    # dQ first: for float masks it writes the row scales that dK/dV read
    _launch("dq", lambda m: (triton.cdiv(seqs.len_q, m["BLOCK_M"]) * heads * seqs.batch,),
            *shared, grad_q, grad_mask if mask_grad else q, *strides, *seqs.strides(grad_q),
            *(grad_mask.stride() if mask_grad else (0, 0, 0, 0)), heads, *sizes,
            MASK_GRAD=mask_grad, **meta)
    if mask_grad:  # the dS tiles were written before their row sums were known
        grad_mask.mul_(row_scale.unsqueeze(-1))
    _launch("dkdv", lambda m: (triton.cdiv(seqs.len_k, m["BLOCK_N"]) * kv_heads * seqs.batch,),
            *shared, grad_k, grad_v, *strides, *seqs.strides(grad_k), *seqs.strides(grad_v),
            kv_heads, *sizes, **meta)


def attention_backward(grad_out, q, k, v, attn_mask, out, lse, dropout_seed, dropout_p,
                       is_causal, scale, mask_needs_grad):
    """As ``fasttx.reference.attention.attention_backward``: dq, dk, dv, d(attn_mask)."""
    batch, heads, len_q, _ = q.shape
    grad_q, grad_k, grad_v = (torch.empty_like(t, memory_format=torch.contiguous_format)
                              for t in (q, k, v))
    grad_mask = None
    if mask_needs_grad:
        grad_mask = torch.zeros(batch, heads, len_q, k.shape[2], dtype=attn_mask.dtype,
                                device=q.device)
    seqs = Sequences(batch, len_q, k.shape[2])
    launch_backward(seqs, grad_out, q, k, v, Mask.of(attn_mask, q), out, lse, dropout_seed,
                    dropout_p, is_causal, scale, grad_q, grad_k, grad_v, grad_mask)
    return grad_q, grad_k, grad_v, grad_mask if mask_needs_grad else q.new_empty((0,))
