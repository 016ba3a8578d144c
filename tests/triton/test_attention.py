"""The Triton attention kernels against the float64 reference, under the budget rule.

Without a GPU the kernels run under Triton's interpreter on CPU tensors, in fp32 and fp16
(the interpreter's bf16 dot is wrong: the backend refuses bf16 there) and at small sizes;
the GPU tests run the same checks at realistic sizes in bf16 and fp16.
"""

import contextlib
import math
import zlib

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import fasttx
from benchmarks.static.launches import recorded_launches
from fasttx import random as philox
from fasttx.testing import (
    DEFAULT_FLOOR,
    MASK_KINDS,
    assert_within_budget,
    attention_inputs,
    attention_mask,
    gpu,
    gpu_backends,
    key_padding_mask,
    plain_attention,
    random_tensor,
    requires_triton,
)
from tests.ops.test_attention import VERY_NEGATIVE, check_very_negative_float_mask

pytestmark = requires_triton
triton_attention = pytest.importorskip("fasttx.triton.attention")

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# (batch, heads, kv_heads, len_q, len_k, head_dim, value_dim): Lq = 1, odd lengths, Lq > Lk
# and Lq < Lk, head dims that are not powers of two (and below 16), GQA and MQA.
SHAPES = [
    (1, 1, 1, 1, 1, 16, 16),
    (2, 2, 1, 1, 37, 40, 40),
    (2, 4, 2, 33, 20, 80, 80),
    (1, 2, 1, 19, 50, 8, 12),
    (1, 1, 1, 65, 97, 24, 24),
]


def sdpa(q, k, v, mask, kind, backend, **kwargs):
    return fasttx.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                               is_causal=kind.endswith("causal"),
                                               enable_gqa=True, backend=backend, **kwargs)


def check_within_budget(q, k, v, mask, kind, scale=None, seed=0, backend="triton"):
    """Output and every gradient (float masks included) of the fused kernels against
    the float64 reference, with plain PyTorch in q's dtype as the baseline."""
    dtype = q.dtype
    if mask is not None and mask.is_floating_point():
        mask = mask.to(dtype).requires_grad_(True)
    inputs = [t for t in (q, k, v, mask) if t is not None and t.requires_grad]
    out = sdpa(q, k, v, mask, kind, backend, scale=scale)
    wide = [t.detach().double().requires_grad_(True) for t in inputs]
    wide_mask = wide[3] if len(wide) == 4 else mask
    expected = sdpa(*wide[:3], wide_mask, kind, "reference", scale=scale)
    baseline = plain_attention(q, k, v, mask, kind.endswith("causal"), scale)
    assert out.dtype == dtype and out.is_contiguous()
    assert_within_budget(out, expected, baseline, factor=2.0)

    grad = random_tensor(*out.shape, dtype=dtype, device=q.device, seed=seed + 99)
    got = torch.autograd.grad(out, inputs, grad)
    want = torch.autograd.grad(expected, wide, grad.double())
    base = torch.autograd.grad(baseline, inputs, grad)
    # dS = P (dO.v - rowsum(dO * O)) cancels terms of size |dO||v|: where plain PyTorch's
    # softmax gradient is exact (a row with one allowed key) the kernels' differently
    # ordered sums leave a few units in the last place at that scale.
    floor = max(DEFAULT_FLOOR[dtype],
                4 * torch.finfo(dtype).eps * float(grad.abs().max() * v.detach().abs().max()))
    for name, g, w, b in zip(("dq", "dk", "dv", "dmask"), got, want, base, strict=False):
        assert_within_budget(g, w, b, factor=3.0, floor=floor, name=name)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("mask_kind", MASK_KINDS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_matches_reference_within_budget(shape, mask_kind, dtype):
    batch, heads, kv_heads, len_q, len_k, dim, value_dim = shape
    seed = zlib.crc32(repr((shape, mask_kind)).encode()) % 1000  # reproducible across runs
    q, k, v = attention_inputs(batch, heads, len_q, len_k, dim, kv_heads=kv_heads,
                               value_dim=value_dim, dtype=dtype, device=DEVICE,
                               requires_grad=True, seed=seed)
    mask = attention_mask(mask_kind, batch, heads, len_q, len_k, seed=seed, device=DEVICE)
    check_within_budget(q, k, v, mask, mask_kind, seed=seed)


@pytest.mark.parametrize("mask_kind", ["none", "float+causal"])
def test_custom_scale_and_broadcast_float_mask_gradient(mask_kind):
    q, k, v = attention_inputs(2, 2, 9, 21, 32, dtype=torch.float32, device=DEVICE,
                               requires_grad=True, seed=1)
    mask = None
    if mask_kind != "none":  # (1, 1, Lq, Lk): its gradient sums over batch and heads
        mask = torch.randn(1, 1, 9, 21, device=DEVICE)
    check_within_budget(q, k, v, mask, mask_kind, scale=0.3)


@settings(max_examples=12, deadline=None)
@given(batch=st.integers(1, 2), kv_heads=st.integers(1, 2), groups=st.integers(1, 3),
       len_q=st.integers(1, 40), len_k=st.integers(1, 40), dim=st.integers(1, 48),
       value_dim=st.integers(1, 48), mask_kind=st.sampled_from(MASK_KINDS),
       seed=st.integers(0, 2**16))
def test_random_shapes_within_budget(batch, kv_heads, groups, len_q, len_k, dim, value_dim,
                                     mask_kind, seed):
    q, k, v = attention_inputs(batch, kv_heads * groups, len_q, len_k, dim, kv_heads=kv_heads,
                               value_dim=value_dim, device=DEVICE, requires_grad=True, seed=seed)
    mask = attention_mask(mask_kind, batch, kv_heads * groups, len_q, len_k, seed=seed,
                          device=DEVICE)
    check_within_budget(q, k, v, mask, mask_kind, seed=seed)


def test_fully_masked_rows_give_zeros_and_zero_gradients():
    q, k, v = attention_inputs(3, 2, 17, 23, 16, device=DEVICE, requires_grad=True, seed=2)
    allowed = torch.rand(3, 2, 17, 23, generator=torch.Generator().manual_seed(0)) > 0.5
    allowed[0, :, 3] = False
    allowed[2, 1, 16] = False
    allowed = allowed.to(DEVICE)
    padding = key_padding_mask([0, 5, 23], 23, device=DEVICE)  # batch 0 may attend nothing
    float_mask = torch.zeros(allowed.shape, device=DEVICE).masked_fill(~allowed, -math.inf)
    for mask, may_attend in ((allowed, allowed), (float_mask, allowed), (padding, padding)):
        out = sdpa(q, k, v, mask, "mask", "triton")
        grad_q, grad_k, grad_v = torch.autograd.grad(out.sum(), (q, k, v))
        empty_rows = ~may_attend.expand(3, 2, 17, 23).any(-1)
        assert empty_rows.any()
        for t in (out, grad_q, grad_k, grad_v):
            assert torch.isfinite(t).all()
        assert (out[empty_rows] == 0).all() and (grad_q[empty_rows] == 0).all()
        if mask is padding:
            assert (grad_k[0] == 0).all() and (grad_v[0] == 0).all()


def dropout_inputs(seed):
    q, k, _ = attention_inputs(2, 3, 13, 21, 16, device=DEVICE, seed=seed)
    return q, k, torch.eye(21, device=DEVICE).expand(2, 3, 21, 21)


def kept_probabilities(q, k, seed, p, is_causal=False):
    """softmax(q k^T / sqrt(E)) * keep / (1 - p), from the Philox mask of fasttx.random."""
    identity = torch.eye(k.shape[-2], device=q.device, dtype=torch.float64)
    probs = plain_attention(q.double(), k.double(), identity.expand(*k.shape[:-1], -1),
                            is_causal=is_causal)
    keep = philox.keep_mask(seed, philox.counters(probs.shape, device=q.device), p)
    return probs * keep / (1 - p), keep


@pytest.mark.parametrize("is_causal", [False, True])
def test_dropout_with_identity_values_shows_the_kept_probabilities(is_causal):
    q, k, v = dropout_inputs(3)
    torch.manual_seed(7)
    out = fasttx.scaled_dot_product_attention(q, k, v, dropout_p=0.3, is_causal=is_causal,
                                              backend="triton")
    torch.manual_seed(7)
    expected, keep = kept_probabilities(q, k, philox.draw_seed(DEVICE), 0.3, is_causal)
    assert (out[~keep] == 0).all() and (out[keep & (expected > 0)] > 0).all()
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-6)


def test_dropout_grad_v_is_dropped_probabilities_times_grad_out():
    q, k, _ = dropout_inputs(4)
    v = random_tensor(2, 3, 21, 8, device=DEVICE, seed=5, requires_grad=True)
    torch.manual_seed(8)
    out = fasttx.scaled_dot_product_attention(q, k, v, dropout_p=0.4, backend="triton")
    grad_out = random_tensor(*out.shape, device=DEVICE, seed=6)
    grad_v, = torch.autograd.grad(out, v, grad_out)
    torch.manual_seed(8)
    dropped, _ = kept_probabilities(q, k, philox.draw_seed(DEVICE), 0.4)
    torch.testing.assert_close(grad_v.double(), dropped.transpose(-2, -1) @ grad_out.double(),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mask_kind", ["none", "key_padding+causal", "float"])
def test_dropout_matches_the_reference_under_the_same_seed(mask_kind):
    q, k, v = attention_inputs(2, 4, 24, 30, 16, kv_heads=2, device=DEVICE,
                               requires_grad=True, seed=9)
    mask = attention_mask(mask_kind, 2, 4, 24, 30, seed=9, device=DEVICE)
    results = []
    for backend in ("triton", "reference"):
        torch.manual_seed(11)
        out = sdpa(q, k, v, mask, mask_kind, backend, dropout_p=0.25)
        results.append((out, torch.autograd.grad(out, (q, k, v), torch.ones_like(out))))
    (out, grads), (expected, expected_grads) = results
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    for got, want in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_dropout_is_reproducible_under_manual_seed():
    q, k, v = attention_inputs(1, 2, 16, 16, 16, device=DEVICE, seed=10)
    torch.manual_seed(0)
    first = fasttx.scaled_dot_product_attention(q, k, v, dropout_p=0.5, backend="triton")
    torch.manual_seed(0)
    second = fasttx.scaled_dot_product_attention(q, k, v, dropout_p=0.5, backend="triton")
    third = fasttx.scaled_dot_product_attention(q, k, v, dropout_p=0.5, backend="triton")
    assert torch.equal(first, second) and not torch.equal(first, third)


@pytest.mark.parametrize("blocks", [(16, 32), (32, 16), (16, 64), (64, 64)])
def test_results_do_not_depend_on_the_tiles(blocks):
    """What autotuning may pick changes the summation order, never the result or the
    dropout mask."""
    q, k, v = dropout_inputs(12)
    q, k = (t.requires_grad_(True) for t in (q, k))
    values = random_tensor(2, 3, 21, 8, device=DEVICE, seed=13, requires_grad=True)
    mask = key_padding_mask([21, 9], 21, device=DEVICE)
    outputs, grads = [], []
    for tiles in ((16, 16), blocks):
        with triton_attention.fixed_blocks(*tiles):
            torch.manual_seed(3)
            outputs.append(sdpa(q, k, v, mask, "key_padding+causal", "triton", dropout_p=0.2))
            torch.manual_seed(4)  # unequal tiles through the backward's diagonal logic too
            out = sdpa(q, k, values, mask, "key_padding+causal", "triton", dropout_p=0.2)
            grads.append(torch.autograd.grad(out, (q, k, values), torch.ones_like(out)))
    assert torch.equal(outputs[0] == 0, outputs[1] == 0)
    torch.testing.assert_close(outputs[0], outputs[1], rtol=1e-6, atol=1e-6)
    for first, second in zip(*grads, strict=True):
        torch.testing.assert_close(first, second, rtol=1e-5, atol=1e-5)


@pytest.mark.filterwarnings("ignore:All-NaN slice:RuntimeWarning")  # rows >= 16 see NaN
def test_key_tiles_outside_the_padding_and_right_of_the_diagonal_are_never_read():
    """Padded keys and values full of NaN: the tiles holding only them are skipped."""
    q, k, v = attention_inputs(2, 2, 32, 64, 16, device=DEVICE, seed=13, requires_grad=True)
    mask = key_padding_mask([16, 32], 64, device=DEVICE)
    clean = sdpa(q, k, v, mask, "key_padding", "reference")
    poisoned_k, poisoned_v = k.detach().clone(), v.detach().clone()
    poisoned_k[0, :, 16:], poisoned_v[0, :, 16:] = math.nan, math.nan
    poisoned_k[1, :, 32:], poisoned_v[1, :, 32:] = math.nan, math.nan
    with triton_attention.fixed_blocks(16, 16):
        out = sdpa(q, poisoned_k, poisoned_v, mask, "key_padding", "triton")
        torch.testing.assert_close(out, clean)
        grad_q, = torch.autograd.grad(out.sum(), q)
        assert torch.isfinite(grad_q).all()
        causal_k, causal_v = k.detach().clone(), v.detach().clone()
        causal_k[:, :, 16:], causal_v[:, :, 16:] = math.nan, math.nan  # seen by rows >= 16
        out = sdpa(q, causal_k, causal_v, None, "causal", "triton")
    expected = sdpa(q, k, v, None, "causal", "reference")
    torch.testing.assert_close(out[:, :, :16], expected[:, :, :16])


def test_strided_inputs_are_read_in_place():
    """Head-split views and a broadcast mask reach the kernels without copies."""
    x = random_tensor(2, 11, 3 * 32, device=DEVICE, seed=14, requires_grad=True)
    q, k, v = (t.unflatten(-1, (2, 16)).transpose(1, 2) for t in x.chunk(3, dim=-1))
    mask = key_padding_mask([11, 4], 11, device=DEVICE)
    with recorded_launches(triton_attention) as launches:
        out = sdpa(q, k, v, mask, "key_padding", "triton")
    kind, args, _ = launches[0]
    assert kind == "forward" and args[0].data_ptr() == q.data_ptr()
    assert args[0].stride() == q.stride() and not args[0].is_contiguous()
    assert args[3].stride()[1:3] == (0, 0)  # the mask, broadcast over heads and queries
    expected = sdpa(q, k, v, mask, "key_padding", "reference")
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(torch.autograd.grad(out.sum(), x)[0],
                               torch.autograd.grad(expected.sum(), x)[0])


def test_compiles_fullgraph():
    q, k, v = attention_inputs(2, 2, 9, 12, 16, device=DEVICE, requires_grad=True, seed=15)
    mask = torch.randn(2, 1, 9, 12, device=DEVICE, requires_grad=True)

    def fn(q, k, v, mask):
        return fasttx.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=True,
                                                   backend="triton")

    compiled = torch.compile(fn, backend="aot_eager", fullgraph=True)
    out, expected = compiled(q, k, v, mask), fn(q, k, v, mask)
    torch.testing.assert_close(out, expected)
    for got, want in zip(torch.autograd.grad(out.sum(), (q, k, v, mask)),
                         torch.autograd.grad(expected.sum(), (q, k, v, mask)), strict=True):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("change,word", [
    (dict(dtype=torch.float64), "float64"),
    (dict(dim=264), "head dim"),
])
def test_unsupported_inputs_name_the_property(change, word):
    dtype, dim = change.get("dtype", torch.float32), change.get("dim", 16)
    q, k, v = attention_inputs(1, 1, 2, 2, dim, dtype=dtype, device=DEVICE)
    with pytest.raises(fasttx.BackendUnavailableError, match=word):
        fasttx.scaled_dot_product_attention(q, k, v, backend="triton")


# ---- GPU: realistic sizes in bf16 and fp16 (skipped without a CUDA GPU) ----

GPU_SHAPES = [
    (2, 8, 8, 1000, 1000, 64, 64),
    (2, 8, 2, 1023, 2049, 80, 80),
    (4, 4, 4, 97, 1000, 128, 128),
    (1, 4, 1, 4099, 4099, 96, 96),
    (2, 2, 2, 513, 257, 160, 160),
    (1, 2, 2, 777, 777, 256, 256),
]


@gpu
@pytest.mark.parametrize("backend", gpu_backends)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("mask_kind", ["none", "causal", "key_padding", "key_padding+causal",
                                       "bool", "float"])
@pytest.mark.parametrize("shape", GPU_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_gpu_matches_reference_within_budget(shape, mask_kind, dtype, backend):
    batch, heads, kv_heads, len_q, len_k, dim, value_dim = shape
    q, k, v = attention_inputs(batch, heads, len_q, len_k, dim, kv_heads=kv_heads,
                               value_dim=value_dim, dtype=dtype, device="cuda",
                               requires_grad=True, seed=21)
    mask = attention_mask(mask_kind, batch, heads, len_q, len_k, seed=21, device="cuda")
    check_within_budget(q, k, v, mask, mask_kind, seed=21, backend=backend)


@gpu
@pytest.mark.parametrize("backend", gpu_backends)
@pytest.mark.parametrize("mask_kind", ["none", "key_padding+causal", "float"])
def test_gpu_dropout_drops_the_philox_mask_of_fasttx_random(mask_kind, backend):
    """fp16 with identity values, so that out is the dropped probabilities: zero exactly
    where the counter-based mask drops (the shared counter layout), else P / (1 - p)."""
    q, k, _ = attention_inputs(2, 3, 77, 130, 64, dtype=torch.float16, device="cuda", seed=24)
    v = torch.eye(130, device="cuda", dtype=torch.float16).expand(2, 3, 130, 130)
    mask = attention_mask(mask_kind, 2, 3, 77, 130, seed=24, device="cuda")
    if mask is not None and mask.is_floating_point():
        mask = mask.half()
    torch.manual_seed(12)
    out = sdpa(q, k, v, mask, mask_kind, backend, dropout_p=0.3)
    torch.manual_seed(12)
    seed = philox.draw_seed("cuda")
    wide_mask = mask.double() if mask is not None and mask.is_floating_point() else mask
    probs = plain_attention(q.double(), k.double(), v.double(), wide_mask,
                            is_causal=mask_kind.endswith("causal"))
    keep = philox.keep_mask(seed, philox.counters(probs.shape, device="cuda"), 0.3)
    assert (out[~keep] == 0).all()
    torch.testing.assert_close(out.double(), probs * keep / 0.7, rtol=2e-3, atol=2e-3)


@gpu
def test_gpu_autotuned_tiles_agree_with_fixed_tiles():
    q, k, v = attention_inputs(2, 8, 2048, 2048, 128, dtype=torch.bfloat16, device="cuda",
                               requires_grad=True, seed=22)
    mask = key_padding_mask([2048, 1000], 2048, device="cuda")
    results = []
    for tiles in (None, (64, 64)):
        torch.manual_seed(0)
        with triton_attention.fixed_blocks(*tiles) if tiles else contextlib.nullcontext():
            out = sdpa(q, k, v, mask, "key_padding+causal", "triton", dropout_p=0.1)
            results.append((out, torch.autograd.grad(out.sum(), (q, k, v))))
    (out, grads), (fixed, fixed_grads) = results
    assert torch.equal(out == 0, fixed == 0)
    torch.testing.assert_close(out, fixed, rtol=2e-2, atol=2e-2)
    for got, want in zip(grads, fixed_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=5e-2, atol=5e-2)


@gpu
@pytest.mark.parametrize("backend", gpu_backends)
def test_gpu_memory_is_linear_in_sequence_length(backend):
    """A 32k-token sequence runs forward and backward with no Lq x Lk buffer."""
    length, heads, dim = 32768, 8, 128
    q, k, v = attention_inputs(1, heads, length, length, dim, dtype=torch.bfloat16,
                               device="cuda", requires_grad=True, seed=23)
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    out = fasttx.scaled_dot_product_attention(q, k, v, is_causal=True, backend=backend)
    out.backward(torch.ones_like(out))
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - before
    inputs_bytes = 3 * q.numel() * q.element_size()
    assert peak < 4 * inputs_bytes, f"peak {peak / 2**20:.0f} MiB for {length} tokens"
    assert torch.isfinite(q.grad).all()


@pytest.mark.parametrize("cross", [False, True])
def test_multihead_attention_module_matches_the_reference(cross):
    """fasttx.nn.MultiheadAttention on the Triton kernels: decoder self-attention (padding
    + causal) and cross-attention (source padding), outputs and parameter gradients."""
    torch.manual_seed(0)
    module = fasttx.nn.MultiheadAttention(48, 4, batch_first=True, device=DEVICE)
    target = random_tensor(3, 13, 48, device=DEVICE, seed=30)
    source = random_tensor(3, 17, 48, device=DEVICE, seed=31) if cross else target
    padding = ~key_padding_mask([17, 9, 1] if cross else [13, 9, 1], source.shape[1],
                                device=DEVICE)[:, 0, 0]  # torch's convention: True = pad
    results = []
    for backend in ("triton", "reference"):
        module.zero_grad()
        with fasttx.use_backend(backend):
            out, _ = module(target, source, source, key_padding_mask=padding,
                            need_weights=False, is_causal=not cross,
                            attn_mask=None if cross else torch.ones(13, 13, device=DEVICE,
                                                                    dtype=torch.bool).triu(1))
        out.square().sum().backward()
        results.append((out.detach(), [p.grad.clone() for p in module.parameters()]))
    (out, grads), (expected, expected_grads) = results
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    for got, want in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")  # clamped at once
def test_finite_float_mask_minimum_stays_finite_as_in_torch():
    """finfo.min as the masked value (a common convention): a row masked entirely with it
    averages the values, as torch does, instead of overflowing to -inf."""
    q, k, v = attention_inputs(2, 2, 9, 13, 16, device=DEVICE, seed=16)
    mask = torch.zeros(2, 1, 9, 13, device=DEVICE)
    mask[0, 0, 4] = torch.finfo(torch.float32).min
    mask[1, 0, :, 7:] = torch.finfo(torch.float32).min
    out = sdpa(q, k, v, mask, "float", "triton")
    torch.testing.assert_close(out, torch.nn.functional.scaled_dot_product_attention(
        q, k, v, attn_mask=mask))
    torch.testing.assert_close(out[0, :, 4], v[0].mean(-2))


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")  # clamped at once
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("masked", VERY_NEGATIVE, ids=str)
def test_rows_pushed_far_down_by_a_float_mask_follow_torch(masked, dtype):
    """Forward and gradients; at finfo.min the saved lse can't resolve the row sum, so the
    backward's rebuilt probabilities need the dQ kernel's row scales."""
    check_very_negative_float_mask("triton", masked, dtype, device=DEVICE)


def test_row_offsets_past_32_bits_are_refused_with_the_tensor_named():
    huge = torch.empty(0, device="meta").as_strided((1, 1, 4, 16), (0, 0, 2**30, 1))
    sequences = triton_attention.Sequences(batch=1, len_q=4, len_k=4)
    no_mask = triton_attention.Mask.of(None, huge)
    small = torch.empty(1, 1, 4, 16, device="meta")
    triton_attention._check_row_offsets(sequences, no_mask, q=small, k=small, v=small)
    with pytest.raises(ValueError, match="k: one sequence spans"):
        triton_attention._check_row_offsets(sequences, no_mask, q=small, k=huge, v=small)
