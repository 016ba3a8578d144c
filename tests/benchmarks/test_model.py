"""The whole-model benchmark module: FLOP count, grids, inputs, providers, a CPU smoke run."""

import math

import pytest
import torch

from benchmarks import harness
from benchmarks import model as bench
from fasttx.models import PRESETS, TransformerConfig

SMOKE_TRAIN, SMOKE_GENERATE = bench.cases("smoke")


def test_train_flops_by_hand():
    config = TransformerConfig(vocab_size=10, d_model=4, num_heads=1, d_ff=8,
                               num_encoder_layers=1, num_decoder_layers=1)
    # batch 2, Ls = 2, Lt = 3; D = 4, F = 8, V = 10
    encoder = 2 * (4 * 2 * 16 + 4 * 2 * 4 + 2 * 2 * 4 * 8)  # projections, attention, FFN
    assert encoder == 576
    decoder = (3 * (4 * 2 * 16          # self-attention projections
                    + 4 * 3 * 4 // 2    # causal attention: half of QK^T and PV
                    + 2 * 2 * 16        # cross-attention Q and output projections
                    + 4 * 2 * 4         # cross attention over Ls = 2 keys
                    + 2 * 2 * 4 * 8)    # FFN
               + 2 * 2 * 2 * 16)        # cross-attention K, V of the 2 source tokens
    assert decoder == 1256
    output = 3 * 2 * 4 * 10
    assert bench.train_flops(config, 2, 2, 3) == 3 * 2 * (576 + 1256 + 240) == 12432
    deeper = config.replace(num_encoder_layers=2, num_decoder_layers=3)
    assert bench.train_flops(deeper, 1, 2, 3) == 3 * (2 * encoder + 3 * decoder + output)


def _by_sweep(profile):
    found = {"train": [], "generate": []}
    for case in bench.cases(profile):
        found[case.sweep].append(case)
    return found["train"], found["generate"]


@pytest.mark.parametrize("profile", harness.PROFILES)
def test_every_profile_has_valid_unique_cases(profile):
    cases = bench.cases(profile)
    assert len({case.id for case in cases}) == len(cases)
    for case in cases:
        assert case.op == bench.OP
        assert (case.sweep, case.mode) in {("train", "fwd_bwd"), ("generate", "fwd")}
        assert case.dtype == ("fp32" if profile == "smoke" else "bf16")
        assert case.tokens == case.shape["batch"] * case.shape.get(
            "tgt_len", case.shape.get("max_new_tokens"))
        if case.sweep == "train":
            config = bench.model_config(case.shape)
            assert case.flops == bench.train_flops(config, case.shape["batch"],
                                                   case.shape["src_len"], case.shape["tgt_len"])
        else:
            assert case.flops is None and "dropout" not in case.shape  # eval: checked
        for plot in bench.PLOTS:
            if case.sweep in plot.sweeps:
                assert plot.x in case.shape and all(key in case.shape for key in plot.panels)
    with pytest.raises(ValueError, match="profile"):
        bench.cases("huge")


def test_full_grid_is_what_the_issue_names():
    train, generate = _by_sweep("full")
    assert {(c.shape["preset"], c.shape["src_len"], c.shape["tgt_len"], c.shape["batch"],
             c.shape["dropout"]) for c in train} == \
        {(preset, length, length, 25000 // length, PRESETS[preset]["dropout"])
         for preset in ("base", "big") for length in (64, 256, 1024)}
    assert {(preset, 0.1 if preset == "base" else 0.3) for preset in ("base", "big")} == \
        {(c.shape["preset"], c.shape["dropout"]) for c in train}
    assert {(c.shape["preset"], c.shape["batch"], c.shape["src_len"],
             c.shape["max_new_tokens"]) for c in generate} == \
        {(preset, batch, 64, 64) for preset in ("base", "big") for batch in (64, 256)}
    assert len(train) == 6 and len(generate) == 4
    full = {case.id for case in bench.cases("full")}
    quick = bench.cases("quick")
    assert {case.id for case in quick} <= full
    assert [(c.sweep, c.shape["preset"], c.shape["batch"]) for c in quick] == \
        [("train", "base", 25000 // 256), ("generate", "base", 64)]


def test_smoke_cases_are_a_tiny_fp32_model():
    config = bench.model_config(SMOKE_TRAIN.shape)
    assert (config.d_model, config.num_heads, config.num_encoder_layers, config.dropout) == \
        (32, 2, 1, 0.0)
    assert SMOKE_TRAIN.shape["batch"] * SMOKE_TRAIN.shape["tgt_len"] <= 16
    assert SMOKE_GENERATE.shape["max_new_tokens"] == 4
    # the full grid's longest target needs L + 1 positions: max_len grows, the rest is the preset
    big = bench.model_config({"preset": "big", "src_len": 1024, "tgt_len": 1024, "dropout": 0.3})
    assert big == TransformerConfig.big(max_len=1025)


def test_inputs_are_padded_sequences_of_half_to_full_length():
    case = bench._train_case("tiny", 64, 16, "fp32")
    src, tgt = bench.make_inputs(case, "cpu", seed=0).inputs
    assert src.shape == (64, 16) and tgt.shape == (64, 17) and src.dtype == torch.int64
    assert (tgt[:, 0] == 1).all()
    for rows in (src, tgt[:, 1:]):
        lengths = (rows != 0).sum(dim=1)
        assert lengths.min() >= 8 and lengths.max() <= 16 and lengths.unique().numel() > 3
        assert (rows[torch.arange(64), lengths - 1] == 2).all()        # eos ends each
        kept = torch.arange(16) < lengths[:, None] - 1
        assert (rows[kept] >= 3).all()                                  # then symbols only
        assert (rows[torch.arange(16) >= lengths[:, None]] == 0).all()  # then padding
    again = bench.make_inputs(case, "cpu", seed=0).inputs
    other = bench.make_inputs(case, "cpu", seed=1).inputs
    assert torch.equal(again[0], src) and not torch.equal(other[0], src)
    src, tgt_in = bench.make_inputs(SMOKE_GENERATE, "cpu", seed=0).inputs
    assert src.shape == (2, 8) and tgt_in.shape == (2, 4)
    assert (tgt_in[:, 0] == 1).all() and (tgt_in[:, 1:] >= 3).all()


@pytest.mark.parametrize("norm_first", [False, True])
def test_torch_transformer_with_copied_weights_is_the_fasttx_model(norm_first):
    config = TransformerConfig.tiny(norm_first=norm_first, activation="gelu",
                                    label_smoothing=0.1)
    fasttx_model = bench.build_model("fasttx-reference", config)
    peer = bench.build_model("torch-transformer", config)
    case = bench._train_case("tiny", 4, 12, "fp32")
    src, tgt = bench.make_inputs(case, "cpu", seed=0).inputs
    with torch.no_grad():
        expected = fasttx_model.logits(src, tgt[:, :-1])
        torch.testing.assert_close(peer.logits(src, tgt[:, :-1]), expected)
        torch.testing.assert_close(peer.loss(src, tgt), fasttx_model.loss(src, tgt))
        own = bench.TorchTransformer(config)  # its own initialisation: a different model
        assert not torch.allclose(own(src, tgt[:, :-1]), expected, atol=1e-2)
    for model in (fasttx_model, peer):
        model.module.eval()
    torch.testing.assert_close(peer.generate(src, 6), fasttx_model.generate(src, 6))


def _fresh_inputs(case):
    return bench.make_inputs(case, "cpu", seed=0)


@pytest.mark.parametrize("name", harness.providers_for(bench, "cpu"))
def test_a_training_step_updates_the_model_and_gives_a_finite_loss(name):
    provider = bench.provider(SMOKE_TRAIN, name, "cpu")
    input_set = _fresh_inputs(SMOKE_TRAIN)
    with torch.no_grad():
        before = provider.call(*input_set.inputs)
    prepare, step = provider.timed
    loss = step(*prepare(input_set))
    assert loss.dim() == 0 and math.isfinite(loss.item()) and loss.item() > 0
    with torch.no_grad():
        after = provider.call(*input_set.inputs)
    assert before.shape == (2, 8, 16)
    assert (after - before).abs().max() > 1e-5  # Adam moved the weights


def test_generation_decodes_the_same_tokens_with_every_cpu_provider():
    input_set = _fresh_inputs(SMOKE_GENERATE)
    tokens = {}
    for name in harness.providers_for(bench, "cpu"):
        prepare, generate = bench.provider(SMOKE_GENERATE, name, "cpu").timed
        tokens[name] = generate(*prepare(input_set))
    expected = tokens["fasttx-reference"]
    assert expected.shape == (2, 1 + 4) and (expected[:, 0] == 1).all()
    assert (expected[:, 1:] != 0).all() and (expected[:, 1:] != 1).all()
    for name, got in tokens.items():
        torch.testing.assert_close(got, expected, msg=name)


def test_compiled_forward_matches_the_reference():  # one compile: the forward alone
    input_set = _fresh_inputs(SMOKE_TRAIN)
    with torch.no_grad():
        expected = bench.provider(SMOKE_TRAIN, "fasttx-reference", "cpu").call(*input_set.inputs)
        compiled = bench.provider(SMOKE_TRAIN, "torch-transformer-compiled", "cpu")
        torch.testing.assert_close(compiled.call(*input_set.inputs), expected,
                                   rtol=1e-4, atol=1e-4)


def test_providers_that_cannot_run_say_why():
    with pytest.raises(harness.Unavailable, match="key/value cache"):
        bench.provider(SMOKE_GENERATE, "torch-transformer-compiled", "cpu")
    with pytest.raises(LookupError, match="provider"):
        bench.provider(SMOKE_TRAIN, "nope", "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(harness.Unavailable, match="fasttx cuda backend: .+"):
            bench.provider(SMOKE_TRAIN, "fasttx-cuda", "cpu")


@pytest.mark.parametrize("case", bench.cases("smoke"), ids=lambda case: case.sweep)
def test_smoke_run_through_the_harness(case):
    prepared = harness.Prepared(bench, case, "cpu")
    assert prepared.oracle == "fasttx-reference"  # dropout 0: every provider is checked
    for name in harness.providers_for(bench, "cpu"):
        row = harness.run_provider(prepared, name)
        assert row["note"] is None, (name, row["note"])
        assert row["median_ms"] > 0 and row["tokens_per_s"] > 0
        assert (row.get("tflops", 0) > 0) == (case.sweep == "train")
    if case.sweep == "generate":  # (compiling the train step is too slow for CPU tests)
        row = harness.run_provider(prepared, "torch-transformer-compiled")
        assert row["median_ms"] is None and row["note"].startswith("skipped: nn.Transformer")
