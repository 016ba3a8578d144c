"""fasttx.feed_forward (reference backend) against F.linear compositions."""

import pytest
import torch
import torch.nn.functional as F

import fasttx
from fasttx import random as philox
from fasttx.testing import assert_within_budget, gpu, random_tensor

ACTIVATIONS = {
    "relu": F.relu,
    "gelu": F.gelu,
    "gelu_tanh": lambda a: F.gelu(a, approximate="tanh"),
}


def make_weights(dim, hidden, dim_out, dtype, bias=True, requires_grad=False):
    w1 = random_tensor(hidden, dim, dtype=dtype, seed=11, scale=dim ** -0.5,
                       requires_grad=requires_grad)
    w2 = random_tensor(dim_out, hidden, dtype=dtype, seed=12, scale=hidden ** -0.5,
                       requires_grad=requires_grad)
    b1 = random_tensor(hidden, dtype=dtype, seed=13, requires_grad=requires_grad) if bias else None
    b2 = random_tensor(dim_out, dtype=dtype, seed=14, requires_grad=requires_grad) if bias else None
    return w1, b1, w2, b2


def torch_feed_forward(x, w1, b1, w2, b2, activation, keep=None, p=0.0):
    hidden = ACTIVATIONS[activation](F.linear(x, w1, b1))
    if keep is not None:
        hidden = hidden * keep / (1 - p)
    return F.linear(hidden, w2, b2)


@pytest.mark.parametrize("rows,dim,hidden,dim_out", [(1, 1, 1, 1), (7, 20, 13, 20),
                                                     (97, 8, 30, 5), (1000, 6, 10, 6)])
@pytest.mark.parametrize("activation", list(ACTIVATIONS))
@pytest.mark.parametrize("bias", [True, False])
def test_matches_torch_in_float64(rows, dim, hidden, dim_out, activation, bias):
    x = random_tensor(rows, dim, dtype=torch.float64, seed=1, requires_grad=True)
    weights = make_weights(dim, hidden, dim_out, torch.float64, bias, requires_grad=True)
    y = fasttx.feed_forward(x, *weights, activation=activation)
    expected = torch_feed_forward(x, *weights, activation)
    torch.testing.assert_close(y, expected, rtol=1e-10, atol=1e-10)
    grad = torch.randn_like(y)
    inputs = [x] + [w for w in weights if w is not None]
    for g, w in zip(torch.autograd.grad(y, inputs, grad),
                    torch.autograd.grad(expected, inputs, grad), strict=True):
        torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-9)


def test_leading_dims():
    x = random_tensor(2, 3, 5, 8, dtype=torch.float64, seed=2)
    weights = make_weights(8, 12, 8, torch.float64)
    y = fasttx.feed_forward(x, *weights, activation="gelu")
    assert y.shape == (2, 3, 5, 8)
    torch.testing.assert_close(y, torch_feed_forward(x, *weights, "gelu"))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("activation", list(ACTIVATIONS))
def test_low_precision_within_budget(dtype, activation):
    x = random_tensor(41, 24, dtype=dtype, seed=3)
    weights = make_weights(24, 72, 24, dtype)
    y = fasttx.feed_forward(x, *weights, activation=activation)
    expected = torch_feed_forward(x.double(), *(w.double() for w in weights), activation)
    baseline = torch_feed_forward(x, *weights, activation)
    assert_within_budget(y, expected, baseline)


def test_dropout_mask_is_recoverable():
    x = random_tensor(19, 10, dtype=torch.float64, seed=4, requires_grad=True)
    weights = make_weights(10, 22, 10, torch.float64, requires_grad=True)
    p = 0.4
    torch.manual_seed(5)
    y = fasttx.feed_forward(x, *weights, activation="relu", dropout_p=p)
    torch.manual_seed(5)
    keep = philox.keep_mask(philox.draw_seed("cpu"), philox.counters((19, 22)), p)
    expected = torch_feed_forward(x, *weights, "relu", keep, p)
    torch.testing.assert_close(y, expected)
    inputs = [x, *weights]
    for g, w in zip(torch.autograd.grad(y.sum(), inputs),
                    torch.autograd.grad(expected.sum(), inputs), strict=True):
        torch.testing.assert_close(g, w)


@pytest.mark.parametrize("activation", list(ACTIVATIONS))
def test_gradcheck(activation):
    x = random_tensor(3, 4, dtype=torch.float64, seed=6, requires_grad=True)
    w1, b1, w2, b2 = make_weights(4, 5, 3, torch.float64, requires_grad=True)
    seed = torch.tensor([8])

    def fn(x, w1, b1, w2, b2):
        return torch.ops.fasttx.feed_forward_forward(x, w1, b1, w2, b2, activation, seed, 0.3,
                                                     "reference")[0]

    assert torch.autograd.gradcheck(fn, (x, w1, b1, w2, b2))


def test_autocast_runs_in_the_autocast_dtype():
    x = random_tensor(4, 8, seed=7)
    weights = make_weights(8, 16, 8, torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = fasttx.feed_forward(x, *weights)
    assert y.dtype == torch.bfloat16


@pytest.mark.parametrize("change,error,word", [
    (dict(activation="swish"), ValueError, "activation"),
    (dict(w1=torch.randn(16, 9)), ValueError, "w1"),
    (dict(w2=torch.randn(8, 15)), ValueError, "w2"),
    (dict(b1=torch.randn(15)), ValueError, "b1"),
    (dict(b2=torch.randn(8, 1)), ValueError, "b2"),
    (dict(w1=torch.randn(16, 8, dtype=torch.float64)), TypeError, "w1"),
    (dict(x="tensor"), TypeError, "x"),
    (dict(dropout_p=2), ValueError, "dropout_p"),
    (dict(w2=torch.randn(8, 16, device="meta")), ValueError, "w2"),
])
def test_bad_inputs_name_the_argument(change, error, word):
    args = dict(x=torch.randn(4, 8), w1=torch.randn(16, 8), b1=torch.randn(16),
                w2=torch.randn(8, 16), b2=torch.randn(8))
    args.update(change)
    with pytest.raises(error, match=word):
        fasttx.feed_forward(**args)


@gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_reference_on_gpu_within_budget(dtype):
    x = random_tensor(1000, 200, dtype=dtype, device="cuda", seed=5)
    weights = [w.cuda() for w in make_weights(200, 130, 200, dtype)]
    y = fasttx.feed_forward(x, *weights, activation="gelu_tanh", backend="reference")
    expected = torch_feed_forward(x.double(), *(w.double() for w in weights), "gelu_tanh")
    baseline = torch_feed_forward(x, *weights, "gelu_tanh")
    assert_within_budget(y, expected, baseline)
