"""fasttx.nn Transformer modules against their torch.nn namesakes.

torch's module is built in float64, its state_dict loaded into fasttx's with strict=True;
both run in eval mode (dropout 0.1 is then off) with parameters requiring grad (so torch takes
its regular path) and we compare outputs, input gradients and every parameter gradient.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fasttx.nn as fnn

pytestmark = [pytest.mark.filterwarnings("ignore:enable_nested_tensor is True"),
              pytest.mark.filterwarnings("ignore:Support for mismatched")]

D, H, FF, S, T, N = 12, 3, 20, 7, 5, 3
DT = torch.float64
TOL = {"rtol": 1e-7, "atol": 1e-9}


def _randn(*shape, seed=0):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=DT)


def _seq(length, seed, batch_first=False, batched=True):
    if not batched:
        return _randn(length, D, seed=seed)
    return _randn(N, length, D, seed=seed) if batch_first else _randn(length, N, D, seed=seed)


def _padding(length, batched=True):
    """(N, length) bool, True = padding at the end of sequences 1 and 2."""
    ignore = torch.zeros(N, length, dtype=torch.bool)
    ignore[1, length - 2:] = True
    ignore[2, length - 1:] = True
    return ignore if batched else ignore[1]


def _load(reference: nn.Module, module: nn.Module):
    module.load_state_dict(reference.state_dict(), strict=True)
    return reference.eval(), module.eval()


def _run(module, inputs, kwargs):
    leaves = [x.detach().clone().requires_grad_(True) for x in inputs]
    out = module(*leaves, **kwargs)
    (out * _randn(*out.shape, seed=99)).sum().backward()
    return out, [x.grad for x in leaves], {n: p.grad for n, p in module.named_parameters()}


def _assert_matches(reference, module, inputs, reference_kwargs=None, **kwargs):
    """Same outputs, input gradients and parameter gradients (given the same inputs)."""
    want_out, want_inputs, want_params = _run(
        reference, inputs, kwargs if reference_kwargs is None else reference_kwargs)
    out, got_inputs, got_params = _run(module, inputs, kwargs)
    torch.testing.assert_close(out, want_out, **TOL)
    for want, got in zip(want_inputs, got_inputs, strict=True):
        torch.testing.assert_close(got, want, **TOL)
    assert got_params.keys() == want_params.keys()
    for name, want in want_params.items():
        torch.testing.assert_close(got_params[name], want, **TOL,
                                   msg=lambda m, name=name: f"{name}: {m}")


def _layer_pair(cls_name, seed=0, **kwargs):
    kwargs = {"dim_feedforward": FF, "dtype": DT, **kwargs}
    torch.manual_seed(seed)
    reference = getattr(nn, cls_name)(D, H, **kwargs)
    torch.manual_seed(seed)
    return reference, getattr(fnn, cls_name)(D, H, **kwargs)


def _transformer_pair(**kwargs):
    kwargs = {"num_encoder_layers": 2, "num_decoder_layers": 2, "dim_feedforward": FF,
              "dtype": DT, **kwargs}
    torch.manual_seed(0)
    reference = nn.Transformer(D, H, **kwargs)
    torch.manual_seed(0)
    return reference, fnn.Transformer(D, H, **kwargs)


# ------------------------------------------------------------------------- state_dict keys


@pytest.mark.parametrize("kwargs", [{}, {"norm_first": True, "bias": False},
                                    {"activation": nn.GELU()}])
def test_state_dict_keys_and_init_match_torch(kwargs):
    pairs = [_layer_pair("TransformerEncoderLayer", **kwargs),
             _layer_pair("TransformerDecoderLayer", **kwargs),
             _transformer_pair(**kwargs)]
    encoder = [nn.TransformerEncoder(pairs[0][0], 2, nn.LayerNorm(D)),
               fnn.TransformerEncoder(pairs[0][1], 2, fnn.AddLayerNorm(D))]
    decoder = [nn.TransformerDecoder(pairs[1][0], 2, nn.LayerNorm(D)),
               fnn.TransformerDecoder(pairs[1][1], 2, fnn.AddLayerNorm(D))]
    for reference, module in [*pairs, encoder, decoder]:
        assert list(module.state_dict()) == list(reference.state_dict())
        assert [n for n, _ in module.named_parameters()] == \
               [n for n, _ in reference.named_parameters()]
    for reference, module in pairs:  # same seed, same initialisation
        for (name, want), got in zip(reference.state_dict().items(),
                                     module.state_dict().values(), strict=True):
            torch.testing.assert_close(got, want, rtol=0, atol=0, msg=name)


# ------------------------------------------------------------------------- layers


ACTIVATIONS = ["relu", "gelu", F.gelu, nn.ReLU(), nn.GELU(approximate="tanh")]


@pytest.mark.parametrize("activation", ACTIVATIONS, ids=str)
@pytest.mark.parametrize("norm_first", [False, True])
def test_encoder_layer(norm_first, activation):
    reference, module = _load(*_layer_pair("TransformerEncoderLayer", norm_first=norm_first,
                                           activation=activation))
    src_mask = _randn(S, S, seed=3)
    _assert_matches(reference, module, (_seq(S, 1),), src_mask=src_mask,
                    src_key_padding_mask=_padding(S))


@pytest.mark.parametrize("batched", [True, False])
@pytest.mark.parametrize("batch_first", [False, True])
def test_encoder_layer_layouts(batch_first, batched):
    reference, module = _load(*_layer_pair("TransformerEncoderLayer", batch_first=batch_first,
                                           bias=False))
    _assert_matches(reference, module, (_seq(S, 1, batch_first, batched),),
                    src_key_padding_mask=_padding(S, batched))


@pytest.mark.parametrize("activation", ["relu", "gelu"])
@pytest.mark.parametrize("norm_first", [False, True])
def test_decoder_layer(norm_first, activation):
    reference, module = _load(*_layer_pair("TransformerDecoderLayer", norm_first=norm_first,
                                           activation=activation, batch_first=True))
    causal = nn.Transformer.generate_square_subsequent_mask(T, dtype=DT)
    _assert_matches(reference, module, (_seq(T, 1, True), _seq(S, 2, True)),
                    tgt_mask=causal, tgt_is_causal=True, memory_mask=_randn(T, S, seed=4),
                    tgt_key_padding_mask=_padding(T), memory_key_padding_mask=_padding(S))


def test_decoder_layer_causal_without_mask():
    """torch needs tgt_mask with tgt_is_causal; fasttx applies the causal mask itself."""
    reference, module = _load(*_layer_pair("TransformerDecoderLayer"))
    causal = nn.Transformer.generate_square_subsequent_mask(T, dtype=DT)
    _assert_matches(reference, module, (_seq(T, 1), _seq(S, 2)), tgt_is_causal=True,
                    reference_kwargs={"tgt_mask": causal, "tgt_is_causal": True})


def test_causal_hint_replaces_the_mask(monkeypatch):
    """With tgt_is_causal=True the causal flag and the padding row reach the attention, not
    a merged (N, 1, T, T) mask (torch's hint contract; the result is the same)."""
    reference, module = _load(*_layer_pair("TransformerDecoderLayer"))
    calls = []
    original = fnn.MultiheadAttention.forward

    def spy(self, *args, **kwargs):
        calls.append((kwargs["attn_mask"], kwargs["is_causal"]))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(fnn.MultiheadAttention, "forward", spy)
    causal = nn.Transformer.generate_square_subsequent_mask(T, dtype=DT)
    _assert_matches(reference, module, (_seq(T, 1), _seq(S, 2)), tgt_mask=causal,
                    tgt_is_causal=True, tgt_key_padding_mask=_padding(T))
    assert calls[0] == (None, True) and calls[1] == (None, False)  # self-, cross-attention


# ------------------------------------------------------------------------- stacks


@pytest.mark.parametrize("norm_first", [False, True])
def test_encoder_stack_with_torch_layer_norm(norm_first):
    reference_layer, layer = _layer_pair("TransformerEncoderLayer", norm_first=norm_first)
    final_norm = nn.LayerNorm(D, dtype=DT)
    with torch.no_grad():
        final_norm.weight.normal_()
    reference, module = _load(nn.TransformerEncoder(reference_layer, 2, final_norm),
                              fnn.TransformerEncoder(layer, 2, final_norm))
    assert module.layers[0] is not module.layers[1]
    _assert_matches(reference, module, (_seq(S, 1),), src_key_padding_mask=_padding(S))


@pytest.mark.parametrize("mask_dtype", [DT, torch.bool])
def test_decoder_stack_detects_causal_mask(mask_dtype, monkeypatch):
    reference_layer, layer = _layer_pair("TransformerDecoderLayer")
    reference, module = _load(nn.TransformerDecoder(reference_layer, 2),
                              fnn.TransformerDecoder(layer, 2))
    causal = nn.Transformer.generate_square_subsequent_mask(T, dtype=mask_dtype)
    if mask_dtype == torch.bool:
        causal = causal.bool()
    hints = []
    original = fnn.TransformerDecoderLayer.forward

    def spy(self, *args, **kwargs):
        hints.append((kwargs["tgt_mask"], kwargs["tgt_is_causal"]))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(fnn.TransformerDecoderLayer, "forward", spy)
    _assert_matches(reference, module, (_seq(T, 1), _seq(S, 2)), tgt_mask=causal,
                    memory_key_padding_mask=_padding(S))
    assert hints == [(None, True)] * 2  # the causal mask became the is_causal flag


@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("norm_first", [False, True])
def test_transformer(norm_first, batch_first):
    reference, module = _load(*_transformer_pair(norm_first=norm_first,
                                                 batch_first=batch_first))
    causal = nn.Transformer.generate_square_subsequent_mask(T, dtype=DT)
    _assert_matches(reference, module, (_seq(S, 1, batch_first), _seq(T, 2, batch_first)),
                    tgt_mask=causal, src_key_padding_mask=_padding(S),
                    tgt_key_padding_mask=_padding(T), memory_key_padding_mask=_padding(S))


def test_transformer_unbatched_with_masks():
    reference, module = _load(*_transformer_pair(activation="gelu"))
    _assert_matches(reference, module, (_seq(S, 1, batched=False), _seq(T, 2, batched=False)),
                    src_mask=_randn(S, S, seed=5) > 1.5,
                    tgt_mask=nn.Transformer.generate_square_subsequent_mask(T).bool(),
                    memory_mask=torch.zeros(T, S, dtype=torch.bool),
                    src_key_padding_mask=_padding(S, batched=False))


def test_generate_square_subsequent_mask():
    torch.testing.assert_close(fnn.Transformer.generate_square_subsequent_mask(4, dtype=DT),
                               nn.Transformer.generate_square_subsequent_mask(4, dtype=DT))


# ------------------------------------------------------------------------- fused ops only


def _counting(function, name, calls):
    def counted(*args, **kwargs):
        calls[name] += 1
        return function(*args, **kwargs)
    return counted


def test_hot_ops_go_through_fasttx(monkeypatch):
    import fasttx.nn.attention
    import fasttx.nn.layers
    import fasttx.nn.transformer

    _, model = _transformer_pair(norm_first=True)  # encoder: 2 layers, decoder: 2 layers
    calls = {"scaled_dot_product_attention": 0, "add_layer_norm": 0, "feed_forward": 0}
    for module, name in [(fasttx.nn.attention, "scaled_dot_product_attention"),
                         (fasttx.nn.transformer, "add_layer_norm"),
                         (fasttx.nn.layers, "add_layer_norm"),  # the final norms
                         (fasttx.nn.transformer, "feed_forward")]:
        monkeypatch.setattr(module, name, _counting(getattr(module, name), name, calls))

    class GuardedFunctional:  # torch.nn.functional without the ops fasttx fuses
        def __getattr__(self, name):
            if name in {"scaled_dot_product_attention", "multi_head_attention_forward",
                        "layer_norm", "relu", "gelu", "softmax"}:
                raise AssertionError(f"fasttx.nn called torch's F.{name}")
            return getattr(F, name)

    monkeypatch.setattr(fasttx.nn.attention, "F", GuardedFunctional())
    monkeypatch.setattr(fasttx.nn.transformer, "F", GuardedFunctional())
    model(_seq(S, 1), _seq(T, 2)).sum().backward()
    # attention: 2 + 2 * 2; add & norm (pre-norm: one per sub-layer): 2 * 2 + 2 * 3 + 2 final
    # norms; FFN: 2 + 2
    assert calls == {"scaled_dot_product_attention": 6, "add_layer_norm": 12, "feed_forward": 4}


# ------------------------------------------------------------------------- dropout


def test_dropout_in_training_mode_only():
    _, model = _transformer_pair(dropout=0.3)
    src, tgt = _seq(S, 1), _seq(T, 2)
    torch.manual_seed(1)
    first = model(src, tgt)
    torch.manual_seed(2)
    second = model(src, tgt)
    torch.manual_seed(2)
    replay = model(src, tgt)
    assert not torch.allclose(first, second)
    torch.testing.assert_close(second, replay, rtol=0, atol=0)
    model.eval()
    with torch.no_grad():
        evaluated = model(src, tgt)
        torch.testing.assert_close(model(src, tgt), evaluated, rtol=0, atol=0)
    assert not torch.allclose(first, evaluated)


# ------------------------------------------------------------------------- bad inputs


@pytest.mark.parametrize("activation", ["tanh", F.tanh, nn.SiLU(), torch.sigmoid])
def test_unsupported_activation_raises(activation):
    for cls in (fnn.TransformerEncoderLayer, fnn.TransformerDecoderLayer):
        with pytest.raises(ValueError, match="activation"):
            cls(D, H, activation=activation)
    with pytest.raises(ValueError, match="activation"):
        fnn.Transformer(D, H, 1, 1, FF, activation=activation)


def test_bad_shapes_raise_with_argument_name():
    with pytest.raises(ValueError, match="divisible by num_heads"):
        fnn.TransformerEncoderLayer(10, 3)
    _, model = _transformer_pair()
    src, tgt = _seq(S, 1), _seq(T, 2)
    with pytest.raises(ValueError, match="d_model=12"):
        model(_randn(S, N, D + 1), tgt)
    with pytest.raises(ValueError, match="same batch size"):
        model(src, tgt[:, :2])
    with pytest.raises(ValueError, match="batched"):
        model(src, tgt[:, 0])

    # Each mask is named as the caller passed it, not as MultiheadAttention's attn_mask.
    bad_masks = dict(src_mask=torch.zeros(S, S + 1), tgt_mask=torch.zeros(T - 1, T - 1),
                     memory_mask=torch.zeros(S, T, dtype=torch.bool),
                     src_key_padding_mask=torch.zeros(N, S + 1, dtype=torch.bool),
                     tgt_key_padding_mask=torch.zeros(N, S, dtype=torch.bool),
                     memory_key_padding_mask=torch.zeros(T, dtype=torch.bool))
    for name, mask in bad_masks.items():
        with pytest.raises(ValueError, match=f"^{name} must have shape"):
            model(src, tgt, **{name: mask})
    with pytest.raises(TypeError, match="^tgt_mask must be bool or floating point"):
        model(src, tgt, tgt_mask=torch.zeros(T, T, dtype=torch.int64), tgt_is_causal=True)
