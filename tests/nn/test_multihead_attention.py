"""fasttx.nn.MultiheadAttention against torch.nn.MultiheadAttention.

Each comparison builds torch's module in float64, loads its state_dict into fasttx's with
strict=True, runs both on the same inputs (eval mode; parameters require grad, so torch takes
its regular path, not the native fast path) and compares outputs, attention weights, input
gradients and every parameter gradient.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import fasttx.nn as fnn

E, H, L, S, N = 12, 3, 7, 5, 3
DT = torch.float64
TOL = {"rtol": 1e-7, "atol": 1e-9}

pytestmark = pytest.mark.filterwarnings("ignore:Support for mismatched")


def _randn(*shape, seed=0):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=DT)


def _pair(**kwargs):
    torch.manual_seed(0)
    reference = nn.MultiheadAttention(E, H, dtype=DT, **kwargs).eval()
    module = fnn.MultiheadAttention(E, H, dtype=DT, **kwargs).eval()
    module.load_state_dict(reference.state_dict(), strict=True)
    return reference, module


def _run(module, inputs, **kwargs):
    """Forward + backward on fresh leaf copies of ``inputs`` (tensor identity is kept, so a
    self-attention call stays one).

    Returns (outputs, input grads, parameter grads).
    """
    copies = {}
    for x in inputs:
        copies.setdefault(id(x), x.detach().clone().requires_grad_(True))
    leaves = [copies[id(x)] for x in inputs]
    outputs = [o for o in module(*leaves, **kwargs) if o is not None]
    loss = sum((o * _randn(*o.shape, seed=10 + i)).sum() for i, o in enumerate(outputs))
    loss.backward()
    grads = [leaf.grad for leaf in copies.values()]
    return outputs, grads, {n: p.grad for n, p in module.named_parameters()}


def _assert_matches(reference, module, inputs, reference_kwargs=None, **kwargs):
    expected = _run(reference, inputs, **(kwargs if reference_kwargs is None else reference_kwargs))
    actual = _run(module, inputs, **kwargs)
    for what, want, got in zip(("outputs", "input grads"), expected[:2], actual[:2], strict=True):
        assert len(got) == len(want), what
        for w, g in zip(want, got, strict=True):
            torch.testing.assert_close(g, w, **TOL, msg=lambda m, what=what: f"{what}: {m}")
    assert expected[2].keys() == actual[2].keys()
    for name, want in expected[2].items():
        torch.testing.assert_close(actual[2][name], want, **TOL,
                                   msg=lambda m, name=name: f"{name}: {m}")


def _seq(length, features=E, seed=0, batch_first=False, batched=True):
    if not batched:
        return _randn(length, features, seed=seed)
    return _randn(N, length, features, seed=seed) if batch_first else _randn(length, N, features,
                                                                             seed=seed)


# ------------------------------------------------------------------------- parameters


@pytest.mark.parametrize("kwargs", [{}, {"bias": False}, {"kdim": 5, "vdim": 7},
                                    {"add_bias_kv": True, "add_zero_attn": True}])
def test_parameters_and_init_match_torch(kwargs):
    torch.manual_seed(1)
    reference = nn.MultiheadAttention(E, H, **kwargs)
    torch.manual_seed(1)
    module = fnn.MultiheadAttention(E, H, **kwargs)
    assert list(module.state_dict()) == list(reference.state_dict())
    assert [n for n, _ in module.named_parameters()] == \
           [n for n, _ in reference.named_parameters()]
    for (name, want), got in zip(reference.state_dict().items(), module.state_dict().values(),
                                 strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0, msg=name)


# ------------------------------------------------------------------------- inputs and layouts


@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("kind", ["self", "shared_kv", "separate", "kdim_vdim"])
def test_attention_kinds(kind, batch_first):
    kwargs = {"kdim": 5, "vdim": 7} if kind == "kdim_vdim" else {}
    reference, module = _pair(batch_first=batch_first, **kwargs)
    query = _seq(L, batch_first=batch_first)
    if kind == "self":
        inputs = (query, query, query)
    elif kind == "shared_kv":
        memory = _seq(S, seed=1, batch_first=batch_first)
        inputs = (query, memory, memory)
    else:
        inputs = (query, _seq(S, kwargs.get("kdim", E), 1, batch_first),
                  _seq(S, kwargs.get("vdim", E), 2, batch_first))
    _assert_matches(reference, module, inputs, need_weights=False)


@pytest.mark.parametrize("kwargs", [{"add_bias_kv": True}, {"add_zero_attn": True},
                                    {"add_bias_kv": True, "add_zero_attn": True},
                                    {"bias": False}])
def test_bias_kv_zero_attn_and_no_bias(kwargs):
    reference, module = _pair(**kwargs)
    query, memory = _seq(L), _seq(S, seed=1)
    padding = torch.zeros(N, S, dtype=torch.bool)
    padding[1, 3:] = True
    _assert_matches(reference, module, (query, memory, memory), key_padding_mask=padding,
                    attn_mask=_randn(L, S, seed=3))


@pytest.mark.parametrize("batch_first", [False, True])
def test_unbatched_input(batch_first):
    reference, module = _pair(batch_first=batch_first, add_zero_attn=True)
    query, memory = _seq(L, batched=False), _seq(S, seed=1, batched=False)
    padding = torch.tensor([False, False, False, True, True])
    _assert_matches(reference, module, (query, memory, memory), key_padding_mask=padding,
                    attn_mask=_randn(H, L, S, seed=3) > 1.0)


# ------------------------------------------------------------------------- masks


def _padding(dtype):
    ignore = torch.zeros(N, S, dtype=torch.bool)
    ignore[1, 3:] = True
    ignore[2, 1] = True
    if dtype == torch.bool:
        return ignore
    return torch.zeros(N, S, dtype=DT).masked_fill(ignore, float("-inf")) + _randn(N, S, seed=5)


def _attn_mask(dtype, dims):
    shape = (L, S) if dims == 2 else (N * H, L, S)
    ignore = _randn(*shape, seed=4) > 0.8
    ignore[..., 0] = False  # every query keeps a key
    if dtype == torch.bool:
        return ignore
    return torch.zeros(shape, dtype=DT).masked_fill(ignore, float("-inf")) + _randn(*shape,
                                                                                    seed=6)


@pytest.mark.parametrize("dtype", [torch.bool, DT])
def test_key_padding_mask(dtype):
    reference, module = _pair()
    query, memory = _seq(L), _seq(S, seed=1)
    _assert_matches(reference, module, (query, memory, memory), key_padding_mask=_padding(dtype))


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("dtype", [torch.bool, DT])
def test_attn_mask(dtype, dims):
    reference, module = _pair()
    query, memory = _seq(L), _seq(S, seed=1)
    _assert_matches(reference, module, (query, memory, memory), need_weights=False,
                    attn_mask=_attn_mask(dtype, dims))


@pytest.mark.parametrize("padding_dtype, mask_dtype", [(torch.bool, torch.bool), (DT, DT),
                                                       (torch.bool, DT), (DT, torch.bool)])
def test_both_masks(padding_dtype, mask_dtype):
    reference, module = _pair()
    query, memory = _seq(L), _seq(S, seed=1)
    _assert_matches(reference, module, (query, memory, memory), need_weights=False,
                    key_padding_mask=_padding(padding_dtype),
                    attn_mask=_attn_mask(mask_dtype, 3))


def test_padding_mask_is_not_materialised(monkeypatch):
    seen = []
    original = fnn.attention.scaled_dot_product_attention

    def spy(q, k, v, attn_mask=None, **kwargs):
        seen.append(tuple(attn_mask.shape))
        return original(q, k, v, attn_mask=attn_mask, **kwargs)

    monkeypatch.setattr(fnn.attention, "scaled_dot_product_attention", spy)
    _, module = _pair()
    query = _seq(L)
    module(query, query, query, key_padding_mask=torch.zeros(N, L, dtype=torch.bool))
    assert seen == [(N, 1, 1, L)]


def test_float_mask_gradients():
    reference, module = _pair()
    query, memory = _seq(L), _seq(S, seed=1)
    grads = []
    for mha in (reference, module):
        attn_mask = _randn(L, S, seed=7).requires_grad_(True)
        padding = _randn(N, S, seed=8).requires_grad_(True)
        out, _ = mha(query, memory, memory, attn_mask=attn_mask, key_padding_mask=padding,
                     need_weights=False)
        (out * _randn(*out.shape, seed=9)).sum().backward()
        grads.append((attn_mask.grad, padding.grad))
    for want, got in zip(*grads, strict=True):
        torch.testing.assert_close(got, want, **TOL)


# ------------------------------------------------------------------------- causal


@pytest.mark.parametrize("need_weights", [False, True])
def test_is_causal_with_its_mask(need_weights):
    reference, module = _pair()
    query = _seq(L)
    causal = nn.Transformer.generate_square_subsequent_mask(L, dtype=DT)
    _assert_matches(reference, module, (query, query, query), attn_mask=causal, is_causal=True,
                    need_weights=need_weights, key_padding_mask=None)


@pytest.mark.parametrize("kwargs", [{}, {"add_bias_kv": True, "add_zero_attn": True}])
def test_is_causal_without_mask_applies_causal_mask(kwargs):
    """torch requires attn_mask with is_causal; fasttx applies the causal mask itself."""
    reference, module = _pair(**kwargs)
    query = _seq(L)
    padding = torch.zeros(N, L, dtype=torch.bool)
    padding[0, 5:] = True
    causal = nn.Transformer.generate_square_subsequent_mask(L, dtype=DT)
    _assert_matches(reference, module, (query, query, query), key_padding_mask=padding,
                    is_causal=True,
                    reference_kwargs={"key_padding_mask": padding, "attn_mask": causal})


# ------------------------------------------------------------------------- weights


@pytest.mark.parametrize("average", [True, False])
@pytest.mark.parametrize("batched", [True, False])
def test_need_weights(average, batched):
    reference, module = _pair(add_bias_kv=True)
    query, memory = _seq(L, batched=batched), _seq(S, seed=1, batched=batched)
    padding = torch.zeros(*([N] if batched else []), S, dtype=torch.bool)
    padding[..., 4] = True
    _assert_matches(reference, module, (query, memory, memory), key_padding_mask=padding,
                    need_weights=True, average_attn_weights=average)
    _, weights = module(query, memory, memory, average_attn_weights=average)
    heads = () if average else (H,)
    assert weights.shape == ((N,) if batched else ()) + heads + (L, S + 1)


def test_fully_masked_row_gives_zeros_not_nan():
    _, module = _pair()
    with torch.no_grad():
        module.out_proj.bias.normal_()
    query = _seq(L).requires_grad_(True)
    ignore = torch.zeros(L, L, dtype=torch.bool)
    ignore[2] = True  # query 2 may attend to nothing
    out, weights = module(query, query, query, attn_mask=ignore, average_attn_weights=False)
    (out.sum() + weights.sum()).backward()
    assert torch.isfinite(query.grad).all()
    assert (weights[:, :, 2] == 0).all()
    torch.testing.assert_close(out[2], module.out_proj.bias.expand(N, E).detach())


# ------------------------------------------------------------------------- dropout


def test_dropout_in_training_only():
    torch.manual_seed(0)
    module = fnn.MultiheadAttention(E, H, dropout=0.5, dtype=DT)
    query = _seq(L)
    train = module(query, query, query, need_weights=False)[0]
    torch.manual_seed(3)
    again = module(query, query, query, need_weights=False)[0]
    torch.manual_seed(3)
    replay = module(query, query, query, need_weights=False)[0]
    assert not torch.allclose(train, again)
    torch.testing.assert_close(again, replay, rtol=0, atol=0)
    module.eval()
    first = module(query, query, query, need_weights=False)[0]
    second = module(query, query, query, need_weights=False)[0]
    torch.testing.assert_close(first, second, rtol=0, atol=0)
    assert not torch.allclose(train, first)


# ------------------------------------------------------------------------- bad inputs


@pytest.mark.parametrize("args, match", [((10, 3), "divisible by num_heads"),
                                         ((0, 3), "embed_dim"), ((12, 0), "num_heads")])
def test_bad_constructor_arguments(args, match):
    with pytest.raises(ValueError, match=match):
        fnn.MultiheadAttention(*args)


@pytest.mark.parametrize("case, error, match", [
    ("query_features", ValueError, "query must have embed_dim"),
    ("key_features", ValueError, "key must have kdim"),
    ("query_4d", ValueError, "query must be"),
    ("key_dims", ValueError, "key must have query's 3 dimensions"),
    ("batch", ValueError, "key must have query's batch size"),
    ("value_length", ValueError, "key and value"),
    ("padding_shape", ValueError, "key_padding_mask must have shape"),
    ("mask_shape", ValueError, "attn_mask must have shape"),
    ("mask_dtype", TypeError, "attn_mask must be bool or floating"),
    ("query_type", TypeError, "query must be a torch.Tensor"),
])
def test_bad_forward_inputs(case, error, match):
    _, module = _pair()
    query, memory = _seq(L), _seq(S, seed=1)
    key, value, kwargs = memory, memory, {}
    if case == "query_features":
        query = _randn(L, N, E + 1)
    elif case == "key_features":
        key = _randn(S, N, E - 1)
    elif case == "query_4d":
        query = query[None]
    elif case == "key_dims":
        key = key[:, 0]
    elif case == "batch":
        key = value = memory[:, :2]
    elif case == "value_length":
        value = memory[:-1]
    elif case == "padding_shape":
        kwargs["key_padding_mask"] = torch.zeros(N, S + 1, dtype=torch.bool)
    elif case == "mask_shape":
        kwargs["attn_mask"] = torch.zeros(S, L, dtype=torch.bool)
    elif case == "mask_dtype":
        kwargs["attn_mask"] = torch.zeros(L, S, dtype=torch.int64)
    elif case == "query_type":
        query = query.tolist()
    with pytest.raises(error, match=match):
        module(query, key, value, **kwargs)
