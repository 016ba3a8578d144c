"""TransformerConfig: the paper's presets and validation."""

import dataclasses

import pytest

from fasttx.models import PRESETS, TransformerConfig


def test_base_preset_has_the_papers_sizes():
    c = TransformerConfig.base(vocab_size=32000)
    assert (c.d_model, c.num_heads, c.d_ff) == (512, 8, 2048)
    assert (c.num_encoder_layers, c.num_decoder_layers) == (6, 6)
    assert (c.dropout, c.label_smoothing, c.norm_first, c.activation) == (0.1, 0.1, False, "relu")
    assert c.vocab_size == 32000 and c.head_dim == 64


def test_big_preset_has_the_papers_sizes():
    c = TransformerConfig.big()
    assert (c.d_model, c.num_heads, c.d_ff) == (1024, 16, 4096)
    assert (c.num_encoder_layers, c.num_decoder_layers) == (6, 6)
    assert (c.dropout, c.label_smoothing) == (0.3, 0.1)


def test_tiny_preset_is_small():
    c = TransformerConfig.tiny()
    assert (c.d_model, c.num_heads, c.d_ff, c.num_encoder_layers, c.num_decoder_layers) \
        == (64, 4, 128, 2, 2)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_by_name_with_overrides(name):
    c = TransformerConfig.preset(name, vocab_size=100, norm_first=True)
    assert c == getattr(TransformerConfig, name)(vocab_size=100, norm_first=True)
    assert c.vocab_size == 100 and c.norm_first


def test_unknown_preset_lists_the_presets():
    with pytest.raises(ValueError, match="huge.*base.*big.*tiny"):
        TransformerConfig.preset("huge")


@pytest.mark.parametrize("changes, field", [
    (dict(d_model=100, num_heads=8), "d_model"),
    (dict(d_model=0), "d_model"),
    (dict(num_heads=-1), "num_heads"),
    (dict(d_ff=2.5), "d_ff"),
    (dict(num_encoder_layers=0), "num_encoder_layers"),
    (dict(num_decoder_layers=True), "num_decoder_layers"),
    (dict(vocab_size=0), "vocab_size"),
    (dict(max_len=1), "max_len"),
    (dict(dropout=1.0), "dropout"),
    (dict(attention_dropout=-0.1), "attention_dropout"),
    (dict(activation_dropout="0.1"), "activation_dropout"),
    (dict(label_smoothing=1.5), "label_smoothing"),
    (dict(pad_id=16), "pad_id"),
    (dict(eos_id=-1), "eos_id"),
    (dict(pad_id=1, bos_id=1), "pad_id"),
    (dict(activation="swish"), "activation"),
    (dict(norm_first="yes"), "norm_first"),
    (dict(layer_norm_eps=0.0), "layer_norm_eps"),
])
def test_validation_names_the_field(changes, field):
    # ValueError for a bad value, TypeError for a bad type (as fasttx's ops raise)
    with pytest.raises((ValueError, TypeError), match=field):
        TransformerConfig.tiny(**changes)


def test_replace_validates():
    c = TransformerConfig.tiny()
    assert c.replace(dropout=0.2).dropout == 0.2
    with pytest.raises(ValueError, match="num_heads"):
        c.replace(num_heads=3)
    assert dataclasses.asdict(c)["d_model"] == 64
