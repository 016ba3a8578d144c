"""torch.compile(fullgraph=True) traces through every functional op (reference backend)."""

import pytest
import torch

import fasttx
from fasttx.testing import attention_inputs, key_padding_mask, random_tensor


def attention_call():
    q, k, v = attention_inputs(2, 4, 5, 7, 8, kv_heads=2, requires_grad=True, seed=1)
    mask = key_padding_mask([7, 3], 7)
    return (lambda q, k, v: fasttx.scaled_dot_product_attention(
        q, k, v, attn_mask=mask, is_causal=True, enable_gqa=True)), (q, k, v)


def attention_dropout_call():
    q, k, v = attention_inputs(1, 2, 6, 6, 8, requires_grad=True, seed=2)
    return (lambda q, k, v: fasttx.scaled_dot_product_attention(q, k, v, dropout_p=0.2)), (q, k, v)


def varlen_call():
    q, k, v = (random_tensor(9, 2, 8, seed=i, requires_grad=True) for i in range(3))
    cu = torch.tensor([0, 4, 9], dtype=torch.int32)
    return (lambda q, k, v: fasttx.varlen_attention(q, k, v, cu, cu, 5, 5, is_causal=True)), \
        (q, k, v)


def add_layer_norm_call():
    x, r = (random_tensor(3, 5, 16, seed=i, requires_grad=True) for i in range(2))
    w, b = torch.ones(16, requires_grad=True), torch.zeros(16, requires_grad=True)
    return (lambda x, r, w, b: fasttx.add_layer_norm(x, r, w, b, dropout_p=0.1,
                                                     return_residual=True)), (x, r, w, b)


def feed_forward_call():
    x = random_tensor(3, 5, 16, seed=1, requires_grad=True)
    w1, w2 = random_tensor(24, 16, seed=2, requires_grad=True), random_tensor(16, 24, seed=3,
                                                                              requires_grad=True)
    b1, b2 = torch.zeros(24, requires_grad=True), torch.zeros(16, requires_grad=True)
    return (lambda *args: fasttx.feed_forward(*args, activation="gelu")), (x, w1, b1, w2, b2)


CALLS = [attention_call, attention_dropout_call, varlen_call, add_layer_norm_call,
         feed_forward_call]


@pytest.mark.parametrize("make_call", CALLS, ids=lambda f: f.__name__)
def test_fullgraph_compile_matches_eager(make_call):
    torch._dynamo.reset()
    fn, inputs = make_call()
    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    torch.manual_seed(0)
    eager_out = fn(*inputs)
    torch.manual_seed(0)
    compiled_out = compiled(*inputs)
    eager_out = eager_out if isinstance(eager_out, tuple) else (eager_out,)
    compiled_out = compiled_out if isinstance(compiled_out, tuple) else (compiled_out,)
    # the seed is drawn from the same generator in both, so dropout masks agree too
    for got, want in zip(compiled_out, eager_out, strict=True):
        torch.testing.assert_close(got, want)
    sum(o.sum() for o in compiled_out).backward()
    assert all(t.grad is not None and torch.isfinite(t.grad).all() for t in inputs)


def test_inductor_compiles_the_attention_op():
    torch._dynamo.reset()
    fn, inputs = attention_call()
    compiled = torch.compile(fn, fullgraph=True)
    torch.testing.assert_close(compiled(*inputs), fn(*inputs))
