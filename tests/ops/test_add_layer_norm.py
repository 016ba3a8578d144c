"""fasttx.add_layer_norm (reference backend) against F.layer_norm compositions."""

import pytest
import torch
import torch.nn.functional as F

import fasttx
from fasttx import random as philox
from fasttx.testing import assert_within_budget, gpu, random_tensor

SHAPES = [(1, 1), (7, 5), (3, 97, 33), (1000, 12), (2, 4099)]


def torch_add_layer_norm(x, residual, weight, bias, eps, keep=None, p=0.0):
    dropped = x if keep is None else x * keep / (1 - p)
    summed = dropped if residual is None else residual + dropped
    return F.layer_norm(summed, summed.shape[-1:], weight, bias, eps), summed


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("with_residual", [True, False])
@pytest.mark.parametrize("affine", ["weight+bias", "weight", "none"])
def test_matches_torch_in_float64(shape, with_residual, affine):
    dim = shape[-1]
    x = random_tensor(*shape, dtype=torch.float64, seed=1, requires_grad=True)
    residual = random_tensor(*shape, dtype=torch.float64, seed=2, requires_grad=True) \
        if with_residual else None
    weight = random_tensor(dim, dtype=torch.float64, seed=3, requires_grad=True) \
        if affine != "none" else None
    bias = random_tensor(dim, dtype=torch.float64, seed=4, requires_grad=True) \
        if affine == "weight+bias" else None
    y, s = fasttx.add_layer_norm(x, residual, weight, bias, eps=1e-5, return_residual=True)
    y_ref, s_ref = torch_add_layer_norm(x, residual, weight, bias, 1e-5)
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(s, s_ref)
    # the residual stream also receives a gradient (pre-norm stacks use it)
    grad_y, grad_s = torch.randn_like(y), torch.randn_like(s)
    inputs = [t for t in (x, residual, weight, bias) if t is not None]
    got = torch.autograd.grad((y, s), inputs, (grad_y, grad_s))
    want = torch.autograd.grad((y_ref, s_ref), inputs, (grad_y, grad_s))
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-9)


def test_without_return_residual_gradients_match():
    x, residual = (random_tensor(5, 16, dtype=torch.float64, seed=i, requires_grad=True)
                   for i in range(2))
    weight = random_tensor(16, dtype=torch.float64, seed=3, requires_grad=True)
    y = fasttx.add_layer_norm(x, residual, weight, None)
    y_ref, _ = torch_add_layer_norm(x, residual, weight, None, 1e-5)
    for g, w in zip(torch.autograd.grad(y.sum(), (x, residual, weight)),
                    torch.autograd.grad(y_ref.sum(), (x, residual, weight)), strict=True):
        torch.testing.assert_close(g, w)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_low_precision_within_budget(dtype):
    x, residual = (random_tensor(33, 257, dtype=dtype, seed=i, scale=3.0) for i in range(2))
    weight, bias = (random_tensor(257, dtype=dtype, seed=i) for i in (3, 4))
    y = fasttx.add_layer_norm(x, residual, weight, bias)
    expected, _ = torch_add_layer_norm(*(t.double() for t in (x, residual, weight, bias)), 1e-5)
    baseline, _ = torch_add_layer_norm(x, residual, weight, bias, 1e-5)
    assert y.dtype == dtype
    assert_within_budget(y, expected, baseline)


def test_mixed_residual_dtype_keeps_the_stream_dtype():
    x = random_tensor(4, 8, dtype=torch.bfloat16, seed=1)
    residual = random_tensor(4, 8, dtype=torch.float32, seed=2)
    y, s = fasttx.add_layer_norm(x, residual, None, None, return_residual=True)
    assert y.dtype == torch.bfloat16 and s.dtype == torch.float32


def test_dropout_mask_is_recoverable_and_scaled():
    x, residual = (random_tensor(37, 64, dtype=torch.float64, seed=i, requires_grad=True)
                   for i in range(2))
    weight, bias = (random_tensor(64, dtype=torch.float64, seed=i) for i in (3, 4))
    p = 0.25
    torch.manual_seed(42)
    y, s = fasttx.add_layer_norm(x, residual, weight, bias, dropout_p=p, return_residual=True)
    torch.manual_seed(42)
    keep = philox.keep_mask(philox.draw_seed("cpu"), philox.counters(x.shape), p)
    y_ref, s_ref = torch_add_layer_norm(x, residual, weight, bias, 1e-5, keep, p)
    torch.testing.assert_close(s, s_ref)
    torch.testing.assert_close(y, y_ref)
    # kept elements are scaled by 1 / (1 - p); dropped ones leave the residual alone
    torch.testing.assert_close((s - residual)[keep], x[keep] / (1 - p))
    assert torch.equal((s - residual)[~keep], torch.zeros_like(x[~keep]))
    assert abs(1 - keep.double().mean().item() - p) < 0.03
    for g, w in zip(torch.autograd.grad(y.sum(), (x, residual)),
                    torch.autograd.grad(y_ref.sum(), (x, residual)), strict=True):
        torch.testing.assert_close(g, w)


def test_gradcheck_with_dropout():
    x, residual = (random_tensor(3, 6, dtype=torch.float64, seed=i, requires_grad=True)
                   for i in range(2))
    weight, bias = (random_tensor(6, dtype=torch.float64, seed=i, requires_grad=True)
                    for i in (3, 4))
    seed = torch.tensor([9])

    def fn(x, residual, weight, bias):
        return torch.ops.fasttx.add_layer_norm_forward(x, residual, weight, bias, 1e-5, seed,
                                                       0.3, "reference")[:2]

    assert torch.autograd.gradcheck(fn, (x, residual, weight, bias))


@pytest.mark.parametrize("change,error,word", [
    (dict(x=[1.0]), TypeError, "x"),
    (dict(residual=torch.randn(4, 9)), ValueError, "residual"),
    (dict(weight=torch.randn(9)), ValueError, "weight"),
    (dict(bias=torch.randn(2, 8)), ValueError, "bias"),
    (dict(x=torch.randint(0, 2, (4, 8))), TypeError, "x"),
    (dict(eps=0.0), ValueError, "eps"),
    (dict(dropout_p=-0.1), ValueError, "dropout_p"),
    (dict(x=torch.randn(4, 0), residual=None, weight=None, bias=None), ValueError, "x"),
    (dict(residual=torch.randn(4, 8, device="meta")), ValueError, "residual"),
    (dict(return_residual=1), TypeError, "return_residual"),
    (dict(return_residual="no"), TypeError, "return_residual"),
    (dict(return_residual=torch.tensor(True)), TypeError, "return_residual"),
])
def test_bad_inputs_name_the_argument(change, error, word):
    args = dict(x=torch.randn(4, 8), residual=torch.randn(4, 8), weight=torch.ones(8),
                bias=torch.zeros(8))
    args.update(change)
    with pytest.raises(error, match=word):
        fasttx.add_layer_norm(**args)


def test_module_refuses_a_non_bool_return_residual():
    """The nn module forwards return_residual to the functional API, which checks it."""
    norm = fasttx.nn.AddLayerNorm(8)
    with pytest.raises(TypeError, match="return_residual"):
        norm(torch.randn(4, 8), torch.randn(4, 8), return_residual="yes")


@gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_reference_on_gpu_within_budget(dtype):
    x, residual = (random_tensor(4099, 1000, dtype=dtype, device="cuda", seed=i, scale=2.0)
                   for i in range(2))
    weight, bias = (random_tensor(1000, dtype=dtype, device="cuda", seed=i) for i in (3, 4))
    y = fasttx.add_layer_norm(x, residual, weight, bias, backend="reference")
    expected, _ = torch_add_layer_norm(*(t.double() for t in (x, residual, weight, bias)), 1e-5)
    baseline, _ = torch_add_layer_norm(x, residual, weight, bias, 1e-5)
    assert_within_budget(y, expected, baseline)


# ---- ill-conditioned statistics: constant rows, rows far from zero ----

def constant_rows(dim, dtype, *, seed, with_residual=True):
    """x (9, dim) and a residual (or None), each constant along every row (values from 0.1
    to 1e4, most with an inexact fp32 mean of D copies), so that s is too; weight, bias (dim,)."""
    scales = torch.tensor([0.1, 1 / 3, 1.0, -7.3, 30.0, 1e2, -1e3, 1e4, 0.0],
                          dtype=torch.float64)
    values = scales * (1 + random_tensor(9, dtype=torch.float64, seed=seed, scale=0.1))

    def rows_of(row_values):
        return row_values.to(dtype).unsqueeze(-1).expand(9, dim).contiguous()

    x = rows_of(values * 0.37 if with_residual else values)
    residual = rows_of(values) if with_residual else None
    weight, bias = (random_tensor(dim, dtype=dtype, seed=seed + i) for i in (1, 2))
    return x, residual, weight, bias


@pytest.mark.parametrize("eps", [1e-5, 1e-12])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("dim,with_residual", [(37, True), (257, False), (1000, True)])
def test_constant_rows_give_exactly_the_bias(dim, with_residual, dtype, eps):
    """As F.layer_norm: s - mean is exactly 0, so y is the bias whatever eps (BERT's 1e-12
    would otherwise magnify an ulp of the mean a millionfold)."""
    x, residual, weight, bias = constant_rows(dim, dtype, seed=dim, with_residual=with_residual)
    y = fasttx.add_layer_norm(x, residual, weight, bias, eps, backend="reference")
    assert_within_budget(y, bias.expand_as(y), floor=0.0, name="y")


def ill_conditioned_rows(shape, *, seed, offset=1e4):
    """x, residual (fp32) whose sum is offset + noise of std 1 (mean / std ~ 1e4), weight and
    bias (D,), all leaves that require grad."""
    x = random_tensor(*shape, seed=seed, scale=0.6, requires_grad=True)
    residual = (random_tensor(*shape, dtype=torch.float64, seed=seed + 1, scale=0.8) + offset)
    weight, bias = (random_tensor(shape[-1], seed=seed + i, requires_grad=True) for i in (2, 3))
    return x, residual.float().requires_grad_(True), weight, bias


@pytest.mark.parametrize("eps", [1e-5, 1e-12])
@pytest.mark.parametrize("shape", [(61, 77), (3, 7, 300)], ids=str)
def test_ill_conditioned_rows_within_budget(shape, eps):
    """Rows of mean / std ~ 1e4 (a large residual stream): y and every gradient against the
    float64 F.layer_norm, plain F.layer_norm in fp32 as the baseline."""
    inputs = ill_conditioned_rows(shape, seed=sum(shape))
    wide = [t.detach().double().requires_grad_(True) for t in inputs]
    y = fasttx.add_layer_norm(*inputs, eps, backend="reference")
    expected, _ = torch_add_layer_norm(*wide, eps)
    baseline, _ = torch_add_layer_norm(*inputs, eps)
    assert_within_budget(y, expected, baseline, name="y")
    grad = random_tensor(*shape, seed=5)
    for name, got, want, base in zip(
            ("dx", "dresidual", "dweight", "dbias"), torch.autograd.grad(y, inputs, grad),
            torch.autograd.grad(expected, wide, grad.double()),
            torch.autograd.grad(baseline, inputs, grad), strict=True):
        assert_within_budget(got, want, base, factor=3.0, name=name)
