"""fasttx.scaled_dot_product_attention (reference backend) against torch's SDPA in float64."""

import math
import zlib

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import fasttx
from fasttx import random as philox
from fasttx.ops.attention import attention_probabilities
from fasttx.testing import (
    MASK_KINDS,
    assert_within_budget,
    attention_inputs,
    attention_mask,
    gpu,
    plain_attention,
    random_tensor,
)

# (batch, heads, kv_heads, len_q, len_k, head_dim, value_dim): odd sizes, Lq = 1, Lq != Lk,
# head dims that are not powers of two, GQA and MQA.
SHAPES = [
    (1, 1, 1, 1, 1, 8, 8),
    (2, 3, 3, 7, 7, 40, 40),
    (3, 2, 2, 1, 97, 16, 16),
    (2, 4, 2, 13, 5, 24, 24),
    (1, 4, 1, 9, 17, 8, 12),
    (2, 2, 2, 33, 20, 80, 80),
]


def torch_sdpa(q, k, v, mask, is_causal, **kwargs):
    """torch's SDPA, with mask + causal folded into one mask (older torch rejects both)."""
    if mask is not None and is_causal:
        allowed = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool, device=q.device).tril()
        mask = mask & allowed if mask.dtype == torch.bool else mask.masked_fill(~allowed, -math.inf)
        is_causal = False
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal,
                                          enable_gqa=k.shape[-3] != q.shape[-3], **kwargs)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("mask_kind", MASK_KINDS)
def test_matches_torch_in_float64(shape, mask_kind):
    batch, heads, kv_heads, len_q, len_k, dim, value_dim = shape
    q, k, v = attention_inputs(batch, heads, len_q, len_k, dim, kv_heads=kv_heads,
                               value_dim=value_dim, dtype=torch.float64, requires_grad=True,
                               seed=zlib.crc32(repr((shape, mask_kind)).encode()) % 1000)
    mask = attention_mask(mask_kind, batch, heads, len_q, len_k)
    if mask is not None and mask.is_floating_point():
        mask.requires_grad_(True)
    causal = mask_kind.endswith("causal")
    out = fasttx.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal,
                                              enable_gqa=True, backend="reference")
    expected = torch_sdpa(q, k, v, mask, causal)
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-12)

    grad = torch.randn_like(out)
    inputs = [q, k, v] + ([mask] if mask is not None and mask.requires_grad else [])
    grads = torch.autograd.grad(out, inputs, grad)
    expected_grads = torch.autograd.grad(expected, inputs, grad)
    for name, got, want in zip(["dq", "dk", "dv", "dmask"], grads, expected_grads, strict=False):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-11, msg=name)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("mask_kind", MASK_KINDS)
def test_attention_probabilities_are_the_weights_the_op_applies(shape, mask_kind):
    """The explicit weights path (need_weights, output_attentions): probabilities @ v is the
    op's output, so scale, masks, causality and grouped-query heads agree; rows sum to 1, or
    to 0 where no key is allowed."""
    batch, heads, kv_heads, len_q, len_k, dim, value_dim = shape
    q, k, v = attention_inputs(batch, heads, len_q, len_k, dim, kv_heads=kv_heads,
                               value_dim=value_dim, dtype=torch.float64, seed=len_q + len_k)
    mask = attention_mask(mask_kind, batch, heads, len_q, len_k, seed=3)
    causal = mask_kind.endswith("causal")
    weights = attention_probabilities(q, k, mask, causal, scale=0.7)
    out = fasttx.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal,
                                              scale=0.7, enable_gqa=True, backend="reference")
    values = v.repeat_interleave(heads // kv_heads, dim=-3)
    torch.testing.assert_close(weights @ values, out, rtol=1e-10, atol=1e-12)
    sums = weights.sum(-1)
    assert torch.all(((sums - 1).abs() < 1e-12) | (sums == 0))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("mask_kind", ["none", "bool+causal", "float"])
def test_attention_probabilities_keep_16_bit_scores_in_fp32(dtype, mask_kind):
    """16-bit weights are the fp32 computation rounded once (the scores and the softmax are
    not rounded to 16 bits on the way, which cost several times torch's error)."""
    q, k, _ = attention_inputs(2, 4, 9, 13, 24, kv_heads=2, dtype=dtype, seed=11)
    mask = attention_mask(mask_kind, 2, 4, 9, 13)
    causal = mask_kind.endswith("causal")
    low_mask = mask.to(dtype) if mask is not None and mask.is_floating_point() else mask
    weights = attention_probabilities(q, k, low_mask, causal, scale=0.9)
    wide_mask = low_mask.float() if low_mask is not None and low_mask.is_floating_point() \
        else low_mask
    expected = attention_probabilities(q.float(), k.float(), wide_mask, causal, scale=0.9)
    assert weights.dtype == dtype
    torch.testing.assert_close(weights, expected.to(dtype), rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("mask_kind", ["none", "bool+causal", "float"])
def test_low_precision_within_budget(dtype, mask_kind):
    """The reference in low precision is at least as close to fp64 as torch's own SDPA."""
    q, k, v = attention_inputs(2, 3, 19, 23, 40, dtype=dtype, seed=5)
    mask = attention_mask(mask_kind, 2, 3, 19, 23)
    causal = mask_kind.endswith("causal")
    low_mask = mask.to(dtype) if mask is not None and mask.is_floating_point() else mask
    out = fasttx.scaled_dot_product_attention(q, k, v, attn_mask=low_mask, is_causal=causal)
    q64, k64, v64 = (t.double() for t in (q, k, v))
    mask64 = mask.double() if mask is not None and mask.is_floating_point() else mask
    expected = torch_sdpa(q64, k64, v64, mask64, causal)
    baseline = torch_sdpa(q, k, v, low_mask, causal)
    assert out.dtype == dtype
    assert_within_budget(out, expected, baseline, factor=2.0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("mask_kind", ["none", "float", "bool+causal"])
def test_low_precision_error_is_no_worse_than_torch_sdpa(dtype, mask_kind):
    """The reference is the oracle and the CPU path: in fp16/bf16 its error against float64
    is torch's SDPA's in the same dtype (within 1.2x; gradients 1.5x), which rounding
    q k^T or the probabilities to the input dtype would break (up to 3-5x)."""
    seed = zlib.crc32(repr((dtype, mask_kind)).encode()) % 1000
    q, k, v = attention_inputs(2, 4, 19, 37, 72, kv_heads=2, dtype=dtype, seed=seed,
                               requires_grad=True)
    mask = attention_mask(mask_kind, 2, 4, 19, 37, seed=seed)
    causal = mask_kind.endswith("causal")
    low_mask = mask.to(dtype) if mask is not None and mask.is_floating_point() else mask
    wide = [t.detach().double().requires_grad_(True) for t in (q, k, v)]
    out = fasttx.scaled_dot_product_attention(q, k, v, attn_mask=low_mask, is_causal=causal,
                                              enable_gqa=True, backend="reference")
    expected = torch_sdpa(*wide, low_mask if mask is None or mask.dtype == torch.bool
                          else low_mask.double(), causal)
    baseline = torch_sdpa(q, k, v, low_mask, causal)
    assert_within_budget(out, expected, baseline, factor=1.2, floor=0.0)
    grad = random_tensor(*out.shape, dtype=dtype, seed=seed + 1)
    for name, got, want, base in zip(
            ("dq", "dk", "dv"), torch.autograd.grad(out, (q, k, v), grad),
            torch.autograd.grad(expected, wide, grad.double()),
            torch.autograd.grad(baseline, (q, k, v), grad), strict=True):
        assert_within_budget(got, want, base, factor=1.5, floor=0.0, name=name)


# What padding masks fill in: -1e4, HF's finfo(fp16).min (~ -6e4), -1e7, finfo(fp32).min;
# -inf for contrast (a row masked entirely with -inf reads zeros).
VERY_NEGATIVE = [-1e4, -6e4, -1e7, torch.finfo(torch.float32).min, -math.inf]


def check_very_negative_float_mask(backend, masked, dtype, device="cpu"):
    """Rows whose scores a float mask pushes wholly or partly to ``masked`` (fp32 mask):
    output and gradients (the mask's too) against the float64 softmax, within the budget of
    torch's SDPA (forward) and of torch's softmax autograd in fp32 (gradients: torch's SDPA
    itself loses them at finfo.min), each rounded to ``dtype``. softmax is shift-invariant,
    so a row pushed uniformly down still sums to 1: the values' average once the mask
    drowns the scores, never their sum."""
    seed = zlib.crc32(repr((backend, masked, dtype)).encode()) % 1000
    q, k, v = attention_inputs(2, 2, 5, 11, 16, dtype=dtype, device=device, seed=seed,
                               requires_grad=True)
    mask = random_tensor(2, 1, 5, 11, device=device, seed=seed + 3)
    mask[0, :, 1] = masked        # a whole row
    mask[0, :, 3, :6] = masked    # part of a row
    mask[1, :, :, 7:] = masked    # padding keys
    mask[1, :, 4] = masked
    inputs = (q, k, v, mask.requires_grad_(True))
    out = fasttx.scaled_dot_product_attention(q, k, v, attn_mask=mask, backend=backend)
    wide = [t.detach().double().requires_grad_(True) for t in inputs]
    expected = plain_attention(*wide)
    assert_within_budget(out, expected, F.scaled_dot_product_attention(q, k, v, attn_mask=mask))
    upcast = [t.detach().float().requires_grad_(True) for t in inputs]
    baseline = plain_attention(*upcast)
    grad = random_tensor(*out.shape, dtype=dtype, device=device, seed=seed + 4)
    floor = 4 * torch.finfo(dtype).eps * float(grad.abs().max() * v.detach().abs().max())
    for name, got, want, base in zip(
            ("dq", "dk", "dv", "dmask"), torch.autograd.grad(out, inputs, grad),
            torch.autograd.grad(expected, wide, grad.double()),
            torch.autograd.grad(baseline, upcast, grad.float()), strict=True):
        assert_within_budget(got, want, base.to(got.dtype), factor=3.0, floor=floor, name=name)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("masked", VERY_NEGATIVE, ids=str)
def test_rows_pushed_far_down_by_a_float_mask_follow_torch(masked, dtype):
    check_very_negative_float_mask("reference", masked, dtype)


def test_leading_batch_dims_and_unbatched():
    q, k, v = (random_tensor(2, 3, 4, 5, 8, dtype=torch.float64, seed=i) for i in range(3))
    mask = torch.rand(3, 1, 5, 5, generator=torch.Generator().manual_seed(1)) > 0.5
    out = fasttx.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, attn_mask=mask))
    out3 = fasttx.scaled_dot_product_attention(q[0, 0], k[0, 0], v[0, 0], is_causal=True)
    torch.testing.assert_close(out3, F.scaled_dot_product_attention(q[0, 0], k[0, 0], v[0, 0],
                                                                    is_causal=True))


def test_custom_scale_and_numpy_scalars():
    q, k, v = attention_inputs(2, 2, 6, 9, 16, dtype=torch.float64, seed=3)
    out = fasttx.scaled_dot_product_attention(q, k, v, scale=np.float32(0.37),
                                              dropout_p=np.float32(0.0))
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, scale=0.37))


def test_strided_inputs():
    """Head-split views and a transposed float mask, as attention modules pass them (the ops'
    opcheck on such inputs is in tests/ops/test_library.py)."""
    x = random_tensor(2, 5, 3 * 16, dtype=torch.float64, seed=13, requires_grad=True)
    q, k, v = (t.unflatten(-1, (2, 8)).transpose(1, 2) for t in x.chunk(3, dim=-1))
    mask = torch.randn(2, 1, 5, 5, dtype=torch.float64).transpose(-1, -2).requires_grad_(True)
    assert not q.is_contiguous()
    out = fasttx.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    torch.testing.assert_close(out, expected)
    for got, want in zip(torch.autograd.grad(out.sum(), (x, mask)),
                         torch.autograd.grad(expected.sum(), (x, mask)), strict=True):
        torch.testing.assert_close(got, want)


def test_autocast_casts_low_precision_inputs_but_not_float64():
    q32, k32, v32 = attention_inputs(1, 2, 4, 4, 8, seed=14)
    q64, k64, v64 = (t.double() for t in (q32, k32, v32))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert fasttx.scaled_dot_product_attention(q32, k32, v32).dtype == torch.bfloat16
        assert fasttx.scaled_dot_product_attention(q64, k64, v64).dtype == torch.float64


def test_fully_masked_rows_give_zeros_and_zero_grads():
    q, k, v = attention_inputs(2, 2, 5, 6, 8, dtype=torch.float64, requires_grad=True, seed=4)
    mask = torch.ones(2, 2, 5, 6, dtype=torch.bool)
    mask[0, :, 1] = False
    mask[1, 1, 4] = False
    float_mask = torch.zeros(2, 2, 5, 6, dtype=torch.float64).masked_fill(~mask, -math.inf)
    for attn_mask in (mask, float_mask):
        out = fasttx.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        assert torch.isfinite(out).all()
        assert (out[0, :, 1] == 0).all() and (out[1, 1, 4] == 0).all()
        grad_q, = torch.autograd.grad(out.sum(), q)
        assert torch.isfinite(grad_q).all()
        assert (grad_q[0, :, 1] == 0).all()


def test_causal_with_more_queries_than_keys_is_top_left():
    q, k, v = attention_inputs(1, 1, 6, 3, 8, dtype=torch.float64, seed=6)
    out = fasttx.scaled_dot_product_attention(q, k, v, is_causal=True)
    # query 0 sees only key 0; queries 2.. see every key
    torch.testing.assert_close(out[0, 0, 0], v[0, 0, 0])
    full = F.scaled_dot_product_attention(q, k, v)
    torch.testing.assert_close(out[0, 0, 2:], full[0, 0, 2:])


def _dropout_expected(q, k, v, seed, p):
    probs = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]), dim=-1)
    keep = philox.keep_mask(seed, philox.counters(probs.shape), p)
    return (probs * keep / (1 - p)) @ v, keep


def test_dropout_uses_the_recoverable_philox_mask():
    q, k, v = attention_inputs(2, 3, 11, 13, 8, dtype=torch.float64, requires_grad=True, seed=7)
    p = 0.3
    torch.manual_seed(1234)
    out = fasttx.scaled_dot_product_attention(q, k, v, dropout_p=p)
    torch.manual_seed(1234)
    seed = philox.draw_seed("cpu")
    expected, keep = _dropout_expected(q, k, v, seed, p)
    torch.testing.assert_close(out, expected)
    assert abs(1 - keep.double().mean().item() - p) < 0.05
    grad = torch.randn_like(out)
    for got, want in zip(torch.autograd.grad(out, (q, k, v), grad),
                         torch.autograd.grad(expected, (q, k, v), grad), strict=True):
        torch.testing.assert_close(got, want)


def test_dropout_reproducible_under_manual_seed():
    q, k, v = attention_inputs(1, 2, 8, 8, 8, seed=8)
    torch.manual_seed(0)
    first = fasttx.scaled_dot_product_attention(q, k, v, dropout_p=0.5)
    torch.manual_seed(0)
    second = fasttx.scaled_dot_product_attention(q, k, v, dropout_p=0.5)
    third = fasttx.scaled_dot_product_attention(q, k, v, dropout_p=0.5)
    assert torch.equal(first, second)
    assert not torch.equal(first, third)


def test_dropout_with_identity_values_shows_kept_probabilities():
    q, k, _ = attention_inputs(1, 1, 4, 6, 8, dtype=torch.float64, seed=9)
    v = torch.eye(6, dtype=torch.float64)[None, None]
    torch.manual_seed(3)
    out = fasttx.scaled_dot_product_attention(q, k, v, dropout_p=0.4)
    probs = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(8), -1)
    dropped = out == 0
    assert dropped.any() and not dropped.all()
    torch.testing.assert_close(out[~dropped], probs[~dropped] / 0.6)


@pytest.mark.parametrize("mask_kind", ["none", "float+causal"])
def test_gradcheck_with_dropout(mask_kind):
    q, k, v = attention_inputs(1, 2, 3, 4, 5, kv_heads=1, dtype=torch.float64,
                               requires_grad=True, seed=10)
    mask = attention_mask(mask_kind, 1, 2, 3, 4)
    if mask is not None:
        mask = mask.expand(1, 2, 3, 4).clone().requires_grad_(True)
    seed = torch.tensor([77])

    def fn(q, k, v, mask):
        return torch.ops.fasttx.attention_forward(q, k, v, mask, seed, 0.25,
                                                  mask_kind.endswith("causal"), 0.5,
                                                  "reference")[0]

    assert torch.autograd.gradcheck(fn, (q, k, v, mask))


BAD_INPUTS = [
    (dict(query=torch.randn(2, 3)), ValueError, "query"),
    (dict(query=[1.0]), TypeError, "query"),
    (dict(query=torch.nested.nested_tensor([torch.randn(3, 4, 8), torch.randn(3, 2, 8)])),
     TypeError, "query must be a dense"),
    (dict(attn_mask=torch.ones(4, 4).to_sparse()), TypeError, "attn_mask must be a dense"),
    (dict(key=torch.randn(2, 3, 4, 9)), ValueError, "key"),
    (dict(value=torch.randn(2, 3, 5, 8)), ValueError, "value"),
    (dict(key=torch.randn(2, 3, 4, 8, dtype=torch.float64)), TypeError, "key"),
    (dict(query=torch.randint(0, 3, (2, 3, 4, 8))), TypeError, "query"),
    (dict(attn_mask=torch.ones(2, 3, 4, 5, dtype=torch.bool)), ValueError, "attn_mask"),
    (dict(attn_mask=torch.ones(4, dtype=torch.int64)), TypeError, "attn_mask"),
    (dict(dropout_p=1.5), ValueError, "dropout_p"),
    (dict(key=torch.randn(3, 3, 4, 8), value=torch.randn(3, 3, 4, 8)), ValueError, "broadcast"),
    (dict(key=torch.randn(2, 1, 4, 8), value=torch.randn(2, 1, 4, 8)), ValueError, "enable_gqa"),
    (dict(key=torch.randn(2, 2, 4, 8), value=torch.randn(2, 2, 4, 8), enable_gqa=True),
     ValueError, "multiple"),
    (dict(backend="fastest"), ValueError, "backend"),
    (dict(key=torch.randn(2, 3, 4, 8, device="meta")), ValueError, "key"),
    (dict(value=torch.randn(2, 3, 4, 0)), ValueError, "value"),
    (dict(is_causal="no"), TypeError, "is_causal"),
    (dict(enable_gqa=1), TypeError, "enable_gqa"),
    (dict(scale="a"), TypeError, "scale"),
    (dict(attn_mask=torch.ones(4, 4, dtype=torch.bool, device="meta")), ValueError, "attn_mask"),
]


@pytest.mark.parametrize("overrides,error,word", BAD_INPUTS)
def test_bad_inputs_name_the_argument(overrides, error, word):
    args = dict(query=torch.randn(2, 3, 4, 8), key=torch.randn(2, 3, 4, 8),
                value=torch.randn(2, 3, 4, 8))
    args.update(overrides)
    with pytest.raises(error, match=word):
        fasttx.scaled_dot_product_attention(**args)


@pytest.mark.parametrize("autocast", [False, True])
def test_meta_tensors_give_the_output_shape(autocast):
    """Meta tensors (shape inference, FLOP counting) run on the ops' fakes; autocast, which
    torch does not apply to them, leaves them as they are (torch's matmul does too)."""
    q, k, v = (torch.empty(2, 4, 5, 8, device="meta"), torch.empty(2, 2, 7, 8, device="meta"),
               torch.empty(2, 2, 7, 6, device="meta"))
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        out = fasttx.scaled_dot_product_attention(q, k, v, enable_gqa=True)
    assert out.device.type == "meta" and out.shape == (2, 4, 5, 6) and out.dtype == q.dtype


@settings(max_examples=30, deadline=None)
@given(batch=st.integers(1, 3), kv_heads=st.integers(1, 3), groups=st.integers(1, 3),
       len_q=st.integers(1, 20), len_k=st.integers(1, 20), dim=st.integers(1, 24),
       value_dim=st.integers(1, 24), mask_kind=st.sampled_from(MASK_KINDS),
       seed=st.integers(0, 2**16))
def test_random_shapes_match_torch(batch, kv_heads, groups, len_q, len_k, dim, value_dim,
                                   mask_kind, seed):
    heads = kv_heads * groups
    q, k, v = attention_inputs(batch, heads, len_q, len_k, dim, kv_heads=kv_heads,
                               value_dim=value_dim, dtype=torch.float64, seed=seed)
    mask = attention_mask(mask_kind, batch, heads, len_q, len_k, seed=seed)
    causal = mask_kind.endswith("causal")
    out = fasttx.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal,
                                              enable_gqa=True)
    torch.testing.assert_close(out, torch_sdpa(q, k, v, mask, causal), rtol=1e-10, atol=1e-12)


@gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("mask_kind", ["none", "key_padding", "bool+causal"])
def test_reference_on_gpu_within_budget(dtype, mask_kind):
    q, k, v = attention_inputs(4, 8, 257, 513, 80, kv_heads=4, dtype=dtype, device="cuda",
                               requires_grad=True, seed=12)
    mask = attention_mask(mask_kind, 4, 8, 257, 513)
    mask = None if mask is None else mask.cuda()
    causal = mask_kind.endswith("causal")
    out = fasttx.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal,
                                              enable_gqa=True, backend="reference")
    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
    expected = torch_sdpa(q64, k64, v64, mask, causal)
    baseline = torch_sdpa(q, k, v, mask, causal)
    assert_within_budget(out, expected, baseline, factor=2.0)
    grad = torch.randn_like(out)
    got = torch.autograd.grad(out, (q, k, v), grad)
    want = torch.autograd.grad(expected, (q64, k64, v64), grad.double())
    base = torch.autograd.grad(baseline, (q, k, v), grad)
    for name, g, w, b in zip(("dq", "dk", "dv"), got, want, base, strict=True):
        assert_within_budget(g, w, b, factor=3.0, name=name)
