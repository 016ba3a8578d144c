"""torch.compile(fullgraph=True) traces through every functional op (reference backend).

Each call is compiled with aot_eager (dynamo + AOTAutograd over the fake implementations)
and with inductor, on contiguous and on strided inputs (the head-split views a model
passes), forward and backward, and compared with eager.
"""

import pytest
import torch

import fasttx
from fasttx.testing import attention_inputs, key_padding_mask, random_tensor


def heads_view(x, heads):
    """(B, L, H*D) -> (B, H, L, D) as a strided view, as attention modules produce."""
    batch, length, width = x.shape
    return x.view(batch, length, heads, width // heads).transpose(1, 2)


def attention_call(strided):
    if strided:
        q, k, v = (random_tensor(2, 5, 16, seed=i, requires_grad=True) for i in range(3))
        mask = torch.randn(2, 1, 5, 5).transpose(-1, -2).requires_grad_(True)
        return (lambda q, k, v, m: fasttx.scaled_dot_product_attention(
            heads_view(q, 2), heads_view(k, 2), heads_view(v, 2), attn_mask=m,
            is_causal=True)), (q, k, v, mask)
    q, k, v = attention_inputs(2, 4, 5, 7, 8, kv_heads=2, requires_grad=True, seed=1)
    mask = key_padding_mask([7, 3], 7)
    return (lambda q, k, v: fasttx.scaled_dot_product_attention(
        q, k, v, attn_mask=mask, is_causal=True, enable_gqa=True)), (q, k, v)


def attention_dropout_call(strided):
    q, k, v = attention_inputs(1, 2, 6, 6, 8, requires_grad=True, seed=2)
    if strided:
        q = q.detach().transpose(-1, -2).contiguous().transpose(-1, -2).requires_grad_(True)
    return (lambda q, k, v: fasttx.scaled_dot_product_attention(q, k, v, dropout_p=0.2)), (q, k, v)


def varlen_call(strided):
    q, k, v = (random_tensor(9, 2, 8, seed=i, requires_grad=True) for i in range(3))
    cu = torch.tensor([0, 4, 9], dtype=torch.int32)
    if strided:
        return (lambda q, k, v: fasttx.varlen_attention(q.transpose(1, 2).transpose(1, 2)[:, :, :],
                                                        k[:, :, :], v, cu, cu, 5, 5)), (q, k, v)
    return (lambda q, k, v: fasttx.varlen_attention(q, k, v, cu, cu, 5, 5, is_causal=True)), \
        (q, k, v)


def add_layer_norm_call(strided):
    x, r = (random_tensor(3, 5, 16, seed=i, requires_grad=True) for i in range(2))
    w, b = torch.ones(16, requires_grad=True), torch.zeros(16, requires_grad=True)
    if strided:
        x, r = (random_tensor(16, 7, seed=i, requires_grad=True) for i in range(2))
        return (lambda x, r, w, b: fasttx.add_layer_norm(x.t(), r.t(), w, b, dropout_p=0.1,
                                                         return_residual=True)), (x, r, w, b)
    return (lambda x, r, w, b: fasttx.add_layer_norm(x, r, w, b, dropout_p=0.1,
                                                     return_residual=True)), (x, r, w, b)


def feed_forward_call(strided):
    x = random_tensor(3, 5, 16, seed=1, requires_grad=True)
    w1, w2 = random_tensor(24, 16, seed=2, requires_grad=True), random_tensor(16, 24, seed=3,
                                                                              requires_grad=True)
    b1, b2 = torch.zeros(24, requires_grad=True), torch.zeros(16, requires_grad=True)
    if strided:
        x = random_tensor(16, 6, seed=1, requires_grad=True)
        w1t = random_tensor(16, 24, seed=2, requires_grad=True)
        return (lambda x, w1t, b1, w2, b2: fasttx.feed_forward(
            x.t(), w1t.t(), b1, w2, b2, activation="gelu_tanh", dropout_p=0.3)), \
            (x, w1t, b1, w2, b2)
    return (lambda *args: fasttx.feed_forward(*args, activation="gelu")), (x, w1, b1, w2, b2)


CALLS = [attention_call, attention_dropout_call, varlen_call, add_layer_norm_call,
         feed_forward_call]


def run_with_grads(fn, inputs, seed=0):
    """Outputs and input gradients of sum(outputs) (dropout seeded by ``seed``)."""
    inputs = [t.detach().clone().requires_grad_(t.requires_grad) for t in inputs]
    torch.manual_seed(seed)
    outputs = fn(*inputs)
    outputs = outputs if isinstance(outputs, tuple) else (outputs,)
    differentiable = [t for t in inputs if t.requires_grad]
    grads = torch.autograd.grad(sum((o * o).sum() for o in outputs), differentiable)
    return [o.detach() for o in outputs], grads


# Calls whose dropout mask differs under inductor, which lowers the seed's randint to its
# own generator (still seeded by torch.manual_seed, but not eager's stream).
DROPOUT_CALLS = {attention_dropout_call, add_layer_norm_call}


@pytest.mark.parametrize("strided", [False, True], ids=["contiguous", "strided"])
@pytest.mark.parametrize("compiler", ["aot_eager", "inductor"])
@pytest.mark.parametrize("make_call", CALLS, ids=lambda f: f.__name__)
def test_fullgraph_compile_matches_eager(make_call, compiler, strided):
    torch._dynamo.reset()
    fn, inputs = make_call(strided)
    eager_out, eager_grads = run_with_grads(fn, inputs)
    compiled = torch.compile(fn, fullgraph=True, backend=compiler)
    compiled_out, compiled_grads = run_with_grads(compiled, inputs)
    uses_dropout = make_call in DROPOUT_CALLS or (make_call is feed_forward_call and strided)
    if compiler == "inductor" and uses_dropout:
        assert all(torch.isfinite(g).all() for g in compiled_grads)
        return
    for got, want in zip(compiled_out + list(compiled_grads), eager_out + list(eager_grads),
                         strict=True):
        torch.testing.assert_close(got, want)


def test_dynamic_shapes_compile_once_per_feature_size():
    torch._dynamo.reset()
    compiled = torch.compile(
        lambda x, w: fasttx.add_layer_norm(x, None, w, None), fullgraph=True, dynamic=True,
        backend="aot_eager")
    for rows, dim in [(3, 8), (5, 8), (4, 12)]:
        x, w = random_tensor(rows, dim, seed=rows), torch.ones(dim)
        torch.testing.assert_close(compiled(x, w), fasttx.add_layer_norm(x, None, w, None))
    q, k, v = attention_inputs(1, 2, 5, 6, 8, seed=3)
    attention = torch.compile(lambda q, k, v: fasttx.scaled_dot_product_attention(q, k, v),
                              fullgraph=True, dynamic=True, backend="aot_eager")
    torch.testing.assert_close(attention(q, k, v), fasttx.scaled_dot_product_attention(q, k, v))


def test_compiled_transformer_layer_trains_like_eager():
    torch._dynamo.reset()
    torch.manual_seed(0)
    layer = fasttx.nn.TransformerEncoderLayer(16, 2, dim_feedforward=24, dropout=0.0,
                                              batch_first=True)
    src = random_tensor(3, 7, 16, seed=4)
    padding = torch.zeros(3, 7, dtype=torch.bool)
    padding[1, 4:] = True
    eager = layer(src, src_key_padding_mask=padding)
    eager_grads = torch.autograd.grad(eager.square().sum(), list(layer.parameters()))
    compiled = torch.compile(layer, fullgraph=True)
    out = compiled(src, src_key_padding_mask=padding)
    grads = torch.autograd.grad(out.square().sum(), list(layer.parameters()))
    torch.testing.assert_close(out, eager)
    for got, want in zip(grads, eager_grads, strict=True):
        torch.testing.assert_close(got, want)
