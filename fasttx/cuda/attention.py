"""CUDA backend of masked scaled-dot-product attention: FlashAttention-2 kernels on mma.sync.

``attention_forward`` / ``attention_backward`` take the reference's arguments
(``fasttx.reference.attention``) and call the extension's ops
``torch.ops.fasttx_cuda.attention_forward`` / ``_backward`` (``csrc/attention/``):

    forward   one CTA per 64/128 query rows of one head: Q resident in shared memory, K/V
              tiles double-buffered with cp.async, S = QK^T and O += PV on tensor cores,
              online softmax in fp32 with exp2; on Hopper the sm_90 kernel where it applies
    backward  delta = rowsum(dO * O); dK/dV per key tile (looping over the query tiles of
              every query head of its group); dQ (and d(attn_mask)) per query tile. No
              atomics: bit-identical run to run

The saved lse is the base-2 log-sum-exp of the base-2 scores, as in the Triton kernels;
only this backend's backward reads it. fp16 and bf16 only (tensor-core operands): fp32
inputs go to the Triton backend under ``auto``.
"""

from __future__ import annotations

import torch

from fasttx.cuda._extension import ops

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16)
SUPPORTED_MASK_DTYPES = (torch.bool, torch.float16, torch.bfloat16, torch.float32)
MAX_HEAD_DIM = 256
MIN_COMPUTE_CAPABILITY = (8, 0)  # mma.sync m16n8k16 with bf16, cp.async


def unsupported_reason(dtype=None, head_dim=None, value_head_dim=None, mask_dtype=None, **_):
    """Why these inputs can't run on the CUDA attention kernels, or None."""
    if dtype is not None and dtype not in SUPPORTED_DTYPES:
        return (f"the cuda attention kernels take float16 or bfloat16 (tensor-core operands), "
                f"got {dtype}")
    for name, size in (("head dim", head_dim), ("value head dim", value_head_dim)):
        if size is not None and size > MAX_HEAD_DIM:
            return f"the cuda attention kernels take a {name} up to {MAX_HEAD_DIM}, got {size}"
    if mask_dtype is not None and mask_dtype not in SUPPORTED_MASK_DTYPES:
        return (f"the cuda attention kernels take a bool, float16, bfloat16 or float32 mask, "
                f"got {mask_dtype}")
    if torch.cuda.is_available():
        capability = torch.cuda.get_device_capability()
        if capability < MIN_COMPUTE_CAPABILITY:
            return (f"the cuda attention kernels need compute capability 8.0 or newer, the "
                    f"current device has {capability[0]}.{capability[1]}")
    return None


def attention_forward(q, k, v, attn_mask, dropout_seed, dropout_p, is_causal, scale):
    """As ``fasttx.reference.attention.attention_forward``: out (B, H, Lq, Ev) and lse
    (B, H, Lq) fp32, the base-2 log-sum-exp of the base-2 scores."""
    out, lse = ops().attention_forward(q, k, v, attn_mask, None, None, q.shape[2], k.shape[2],
                                       dropout_seed, float(dropout_p), bool(is_causal),
                                       float(scale))
    return out, lse


def attention_backward(grad_out, q, k, v, attn_mask, out, lse, dropout_seed, dropout_p,
                       is_causal, scale, mask_needs_grad):
    """As ``fasttx.reference.attention.attention_backward``: dq, dk, dv and d(attn_mask)
    (empty, shape (0,), unless ``mask_needs_grad``)."""
    grad_q, grad_k, grad_v, grad_mask = ops().attention_backward(
        grad_out, q, k, v, attn_mask, None, None, q.shape[2], k.shape[2], out, lse,
        dropout_seed, float(dropout_p), bool(is_causal), float(scale), bool(mask_needs_grad))
    return grad_q, grad_k, grad_v, grad_mask
