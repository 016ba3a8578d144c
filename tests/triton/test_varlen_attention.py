"""The Triton kernels on packed variable-length sequences: equal to padded attention and
within budget of the float64 reference."""

import contextlib

import pytest
import torch

import fasttx
from fasttx.testing import (
    assert_within_budget,
    gpu,
    gpu_backends,
    key_padding_mask,
    plain_attention,
    random_tensor,
    requires_triton,
)
from tests.ops.test_varlen_attention import pad, unpad

pytestmark = requires_triton
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

CASES = [  # lengths of q, lengths of k, heads, kv_heads, head dim
    ([1], [1], 1, 1, 16),
    ([7, 1, 12], [5, 9, 3], 2, 2, 40),
    ([3, 19, 2, 5], [11, 2, 33, 1], 3, 1, 24),
    ([20, 0, 3], [0, 5, 40], 2, 1, 16),  # empty sequences on either side
]


def packed_inputs(lengths_q, lengths_k, heads, kv_heads, dim, dtype, device=DEVICE, seed=0):
    def pack(lengths, num_heads, offset):
        rows = random_tensor(sum(lengths), num_heads, dim, dtype=dtype, device=device,
                             seed=seed + offset, requires_grad=True)
        cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32,
                          device=device)
        return rows, cu
    (q, cu_q), (k, cu_k), (v, _) = pack(lengths_q, heads, 0), pack(lengths_k, kv_heads, 1), \
        pack(lengths_k, kv_heads, 2)
    return q, k, v, cu_q, cu_k, max(lengths_q), max(lengths_k)


def varlen(q, k, v, cu_q, cu_k, max_q, max_k, backend, **kwargs):
    return fasttx.varlen_attention(q, k, v, cu_q, cu_k, max_q, max_k, backend=backend, **kwargs)


def plain_packed(q, k, v, cu_q, cu_k, is_causal):
    """Plain PyTorch attention sequence by sequence: the baseline of the budget rule."""
    out = []
    for b in range(len(cu_q) - 1):
        rows_q, rows_k = slice(cu_q[b], cu_q[b + 1]), slice(cu_k[b], cu_k[b + 1])
        seq = plain_attention(q[rows_q].transpose(0, 1), k[rows_k].transpose(0, 1),
                              v[rows_k].transpose(0, 1), is_causal=is_causal)
        out.append(seq.transpose(0, 1))
    return torch.cat(out)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("is_causal", [False, True])
@pytest.mark.parametrize("lengths_q,lengths_k,heads,kv_heads,dim", CASES)
def test_matches_reference_within_budget(lengths_q, lengths_k, heads, kv_heads, dim,
                                         is_causal, dtype):
    q, k, v, cu_q, cu_k, max_q, max_k = packed_inputs(lengths_q, lengths_k, heads, kv_heads,
                                                      dim, dtype)
    out = varlen(q, k, v, cu_q, cu_k, max_q, max_k, "triton", is_causal=is_causal)
    wide = [t.detach().double().requires_grad_(True) for t in (q, k, v)]
    expected = varlen(*wide, cu_q, cu_k, max_q, max_k, "reference", is_causal=is_causal)
    baseline = plain_packed(q, k, v, cu_q.tolist(), cu_k.tolist(), is_causal)
    assert_within_budget(out, expected, baseline, factor=2.0)
    grad = random_tensor(*out.shape, dtype=dtype, device=DEVICE, seed=5)
    for name, got, want, base in zip(
            ("dq", "dk", "dv"), torch.autograd.grad(out, (q, k, v), grad),
            torch.autograd.grad(expected, wide, grad.double()),
            torch.autograd.grad(baseline, (q, k, v), grad), strict=True):
        assert_within_budget(got, want, base, factor=3.0, name=name)


@pytest.mark.parametrize("is_causal", [False, True])
def test_packed_equals_padded_with_dropout(is_causal):
    """Same seed, same dropped elements: the packed counters follow the padded layout."""
    lengths_q, lengths_k = [9, 4, 17], [12, 17, 3]
    q, k, v, cu_q, cu_k, max_q, max_k = packed_inputs(lengths_q, lengths_k, 4, 2, 16,
                                                      torch.float32, seed=7)
    torch.manual_seed(5)
    out = varlen(q, k, v, cu_q, cu_k, max_q, max_k, "triton", dropout_p=0.3,
                 is_causal=is_causal)
    torch.manual_seed(5)
    dense = fasttx.scaled_dot_product_attention(
        pad(q, cu_q.cpu(), max_q), pad(k, cu_k.cpu(), max_k), pad(v, cu_k.cpu(), max_k),
        attn_mask=key_padding_mask(lengths_k, max_k, device=DEVICE), dropout_p=0.3,
        is_causal=is_causal, enable_gqa=True, backend="triton")
    expected = unpad(dense, lengths_q)
    torch.testing.assert_close(out, expected)
    grad = random_tensor(*out.shape, device=DEVICE, seed=8)
    for got, want in zip(torch.autograd.grad(out, (q, k, v), grad),
                         torch.autograd.grad(expected, (q, k, v), grad), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


@gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("is_causal", [False, True])
@pytest.mark.parametrize("backend", gpu_backends)
def test_gpu_matches_reference_within_budget(backend, is_causal, dtype):
    generator = torch.Generator().manual_seed(0)
    lengths_q = torch.randint(1, 2049, (8,), generator=generator).tolist()
    lengths_k = torch.randint(1, 2049, (8,), generator=generator).tolist()
    q, k, v, cu_q, cu_k, max_q, max_k = packed_inputs(lengths_q, lengths_k, 8, 2, 128, dtype,
                                                      device="cuda")
    out = varlen(q, k, v, cu_q, cu_k, max_q, max_k, backend, is_causal=is_causal)
    wide = [t.detach().double().requires_grad_(True) for t in (q, k, v)]
    expected = varlen(*wide, cu_q, cu_k, max_q, max_k, "reference", is_causal=is_causal)
    baseline = plain_packed(q, k, v, cu_q.tolist(), cu_k.tolist(), is_causal)
    assert_within_budget(out, expected, baseline, factor=2.0)
    grad = torch.randn_like(out)
    for name, got, want, base in zip(
            ("dq", "dk", "dv"), torch.autograd.grad(out, (q, k, v), grad),
            torch.autograd.grad(expected, wide, grad.double()),
            torch.autograd.grad(baseline, (q, k, v), grad), strict=True):
        assert_within_budget(got, want, base, factor=3.0, name=name)


@contextlib.contextmanager
def nan_filled_empty_tensors():
    """torch.empty fills floating-point tensors with NaN (deterministic mode's option)."""
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    was_filling = torch.utils.deterministic.fill_uninitialized_memory
    torch.use_deterministic_algorithms(True)
    torch.utils.deterministic.fill_uninitialized_memory = True
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(was_deterministic)
        torch.utils.deterministic.fill_uninitialized_memory = was_filling


def test_rows_outside_every_sequence_are_zero_as_in_the_reference():
    """Called as an op with cu_seqlens ending before the last rows (the public function
    refuses that), the kernels never visit those rows: out 0, lse -inf, gradients 0, as in
    the reference. Uninitialised memory is filled with NaN here, so a row left unwritten
    fails."""
    from fasttx.ops.varlen_attention import varlen_attention_backward, varlen_attention_forward

    q, k, v, cu_q, cu_k, max_q, max_k = packed_inputs([3, 4], [5, 2], 2, 1, 16, torch.float32)
    q, k, v = (torch.cat([t.detach(), torch.randn(3, *t.shape[1:])]) for t in (q, k, v))
    grad = random_tensor(*q.shape, device=DEVICE, seed=3)
    results = {}
    with nan_filled_empty_tensors():
        for backend in ("triton", "reference"):
            out, lse = varlen_attention_forward(q, k, v, cu_q, cu_k, max_q, max_k, None, 0.0,
                                                True, 0.25, backend)
            grads = varlen_attention_backward(grad, q, k, v, cu_q, cu_k, max_q, max_k, out, lse,
                                              None, 0.0, True, 0.25, backend)
            results[backend] = (out, lse, *grads)
    for name, got, want in zip(("out", "lse", "dq", "dk", "dv"), results["triton"],
                               results["reference"], strict=True):
        if name != "lse":  # each backend keeps its own log-sum-exp (the Triton one, base 2)
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5, msg=name)
    out, lse, grad_q, grad_k, grad_v = results["triton"]
    assert (out[7:] == 0).all() and torch.isneginf(lse[:, 7:]).all()
    assert torch.isfinite(lse[:, :7]).all()
    assert (grad_q[7:] == 0).all() and (grad_k[7:] == 0).all() and (grad_v[7:] == 0).all()
