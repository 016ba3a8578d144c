"""The drop-in benchmark module (benchmarks/dropin.py): grids, FLOP count, inputs, shared
weights, the training steps, the Marian providers through the harness, the report.

How: FLOPs are counted by hand for a small case; the two nn.Transformer providers are
compared on the same fresh inputs against a float64 oracle (the tolerance rule of
fasttx.testing), after checking that their state_dicts are one; each training step is
checked to run fasttx's kernels (``fasttx.backends.record_selections``), give the loss
torch's module gives, and move the weights; the Marian providers run the smoke case
through the harness (checked against hf-eager, then timed), and the report is rendered
from rows of both sweeps. The fasttx-nn-triton step runs under the Triton interpreter
once (its harness run is the benchmark suite's own smoke test, benchmarks/test_suite.py),
and torch-nn-compiled is not compiled here (~20 s on CPU).
"""

import math
import sys

import pytest
import torch

import fasttx
from benchmarks import dropin as bench
from benchmarks import harness, report
from benchmarks.model import train_flops
from fasttx.integrations import transformers as fasttx_hf
from fasttx.models import TransformerConfig
from fasttx.testing import assert_within_budget

pytestmark = pytest.mark.filterwarnings(
    # torch.nn.TransformerEncoder's eval fast path packs padded batches as nested tensors
    "ignore:The PyTorch API of nested tensors is in prototype stage:UserWarning")

try:
    import transformers  # noqa: F401
    HAS_TRANSFORMERS = True
except ImportError:
    HAS_TRANSFORMERS = False
needs_transformers = pytest.mark.skipif(not HAS_TRANSFORMERS,
                                        reason="needs Hugging Face transformers")

SMOKE_NN, SMOKE_MARIAN = bench.cases("smoke")
#: An nn case with odd sizes and head dim 12 (3 sequences of 3..7 tokens, 2 + 1 layers).
ODD_NN = bench._nn_case("tiny", 3, 7, "fp32", {"d_model": 24, "num_heads": 2, "d_ff": 40,
                                                 "num_encoder_layers": 2,
                                                 "num_decoder_layers": 1})


# ---------------------------------------------------------------------------- cases


@pytest.mark.parametrize("profile", harness.PROFILES)
def test_every_profile_has_valid_unique_cases(profile):
    cases = bench.cases(profile)
    assert len({case.id for case in cases}) == len(cases)
    assert [case.sweep for case in cases].count("nn") >= 1
    assert [case.sweep for case in cases].count("marian") >= 1
    for case in cases:
        assert case.op == bench.OP == "dropin" and case.mode == "fwd_bwd"
        assert case.dtype == ("fp32" if profile == "smoke" else "bf16")
        assert case.tokens == case.shape["batch"] * case.shape["tgt_len"]
        assert case.shape["src_len"] == case.shape["tgt_len"]
        if case.sweep == "nn":
            config = bench.model_config(case.shape)
            assert case.flops == bench.nn_train_flops(
                config, case.shape["batch"], case.shape["src_len"], case.shape["tgt_len"])
        else:
            assert case.flops == train_flops(bench.marian_sizes(case.shape),
                                             case.shape["batch"], case.shape["src_len"],
                                             case.shape["tgt_len"])
        for plot in bench.PLOTS:
            if case.sweep in plot.sweeps:
                assert plot.x in case.shape and all(key in case.shape for key in plot.panels)
    with pytest.raises(ValueError, match="profile"):
        bench.cases("huge")


def test_full_grid_is_what_the_issue_names():
    full = bench.cases("full")
    nn_cases = [case for case in full if case.sweep == "nn"]
    marian = [case for case in full if case.sweep == "marian"]
    assert {(c.shape["batch"], c.shape["tgt_len"]) for c in nn_cases} == \
        {(25000 // length, length) for length in (64, 256, 1024)}
    assert {(c.shape["batch"], c.shape["tgt_len"]) for c in marian} == \
        {(25000 // length, length) for length in (64, 256)}
    assert len(nn_cases) == 3 and len(marian) == 2
    # the paper's base model, with the dropout of the preset
    assert bench.nn_kwargs(nn_cases[0].shape) == dict(
        d_model=512, nhead=8, num_encoder_layers=6, num_decoder_layers=6,
        dim_feedforward=2048, dropout=0.1, activation="relu", layer_norm_eps=1e-5,
        norm_first=False, batch_first=True)
    assert {c.shape["dropout"] for c in full} == {0.1}
    opus = bench.marian_fields(marian[0].shape)
    assert (opus["vocab_size"], opus["d_model"], opus["encoder_layers"],
            opus["decoder_attention_heads"], opus["decoder_ffn_dim"], opus["pad_token_id"],
            opus["activation_function"], opus["attention_dropout"]) == \
        (58101, 512, 6, 8, 2048, 58100, "swish", 0.0)
    quick = bench.cases("quick")
    assert {case.id for case in quick} <= {case.id for case in full}
    assert [(c.sweep, c.shape["tgt_len"]) for c in quick] == [("nn", 256), ("marian", 256)]


def test_smoke_cases_are_tiny_fp32_models_without_dropout():
    for case in (SMOKE_NN, SMOKE_MARIAN):
        assert (case.shape["batch"], case.shape["tgt_len"], case.shape["dropout"]) == (2, 8, 0)
    assert bench.nn_kwargs(SMOKE_NN.shape)["d_model"] == 32
    fields = bench.marian_fields(SMOKE_MARIAN.shape)
    assert (fields["d_model"], fields["encoder_layers"], fields["vocab_size"],
            fields["dropout"]) == (24, 1, 61, 0.0)


def test_flops_by_hand():
    config = TransformerConfig(vocab_size=10, d_model=4, num_heads=1, d_ff=8,
                               num_encoder_layers=1, num_decoder_layers=1)
    # batch 2, Ls = Lt = 3; D = 4, F = 8, V = 10 (the sums of benchmarks/model.py's docstring)
    encoder = 3 * (4 * 2 * 16          # Q, K, V, output projections
                   + 4 * 3 * 4         # attention over 3 keys
                   + 2 * 2 * 4 * 8)    # FFN
    decoder = (3 * (4 * 2 * 16         # self-attention projections
                    + 4 * 3 * 4 // 2   # causal attention: half
                    + 2 * 2 * 16       # cross-attention Q and output projections
                    + 4 * 3 * 4        # cross attention over 3 source tokens
                    + 2 * 2 * 4 * 8)   # FFN
               + 3 * 2 * 2 * 16)       # cross-attention K, V of the source tokens
    output = 3 * 2 * 4 * 10            # the tied output projection of 3 target tokens
    assert (encoder, decoder, output) == (912, 1368, 240)
    # nn.Transformer's step has no output projection: 3x the forward of 2 sequences
    assert bench.nn_train_flops(config, 2, 3, 3) == 3 * 2 * (912 + 1368) == 13680
    # Marian's has: the same layers, then its output projection
    fields = {"vocab_size": 10, "d_model": 4, "encoder_attention_heads": 1,
              "decoder_attention_heads": 1, "encoder_ffn_dim": 8, "decoder_ffn_dim": 8,
              "encoder_layers": 1, "decoder_layers": 1, "pad_token_id": 9}
    marian = bench._marian_case("opus-mt-en-de", 2, 3, "fp32", fields)
    sizes = bench.marian_sizes(marian.shape)
    assert (sizes.vocab_size, sizes.d_model, sizes.num_heads, sizes.d_ff,
            sizes.num_encoder_layers, sizes.num_decoder_layers) == (10, 4, 1, 8, 1, 1)
    assert marian.flops == 3 * 2 * (912 + 1368 + 240) == 15120
    assert marian.tokens == 6


# ---------------------------------------------------------------------------- inputs


def _lengths(padding: torch.Tensor) -> torch.Tensor:
    return (~padding).sum(dim=1)


def test_nn_inputs_are_padded_embeddings():
    case = bench._nn_case("tiny", 64, 16, "fp32")
    src, tgt, src_padding, tgt_padding, causal, target = bench.make_inputs(case, "cpu", 0).inputs
    assert src.shape == tgt.shape == target.shape == (64, 16, 64)
    assert src.dtype == torch.float32 and not src.requires_grad
    for padding in (src_padding, tgt_padding):
        assert padding.shape == (64, 16) and padding.dtype == torch.bool
        lengths = _lengths(padding)
        assert lengths.min() >= 8 and lengths.max() <= 16 and lengths.unique().numel() > 3
        assert torch.equal(padding, torch.arange(16) >= lengths[:, None])  # right padding
    assert not torch.equal(src_padding, tgt_padding)
    assert torch.equal(causal, torch.ones(16, 16, dtype=torch.bool).triu(1))
    again = bench.make_inputs(case, "cpu", 0).inputs
    other = bench.make_inputs(case, "cpu", 1).inputs
    assert torch.equal(again[0], src) and not torch.equal(other[0], src)


def test_marian_inputs_are_padded_token_ids_and_labels():
    case = bench._marian_case("opus-mt-en-de", 64, 16, "fp32", bench.SMOKE_MARIAN)
    input_ids, attention_mask, labels = bench.make_inputs(case, "cpu", 0).inputs
    assert input_ids.shape == attention_mask.shape == labels.shape == (64, 16)
    pad, eos = 60, 0
    lengths = attention_mask.sum(dim=1)
    assert lengths.min() >= 8 and lengths.max() <= 16 and lengths.unique().numel() > 3
    assert torch.equal(attention_mask.bool(), torch.arange(16) < lengths[:, None])
    assert (input_ids[attention_mask == 0] == pad).all()
    assert (input_ids[torch.arange(64), lengths - 1] == eos).all()
    words = torch.arange(16) < lengths[:, None] - 1
    assert ((input_ids[words] >= 3) & (input_ids[words] < pad)).all()
    label_lengths = (labels != -100).sum(dim=1)
    assert (labels[torch.arange(64), label_lengths - 1] == eos).all()
    assert not torch.equal(label_lengths, lengths)


# ---------------------------------------------------------------------------- nn providers


def _fresh(case, seed=0):
    return bench.make_inputs(case, "cpu", seed).inputs


def _float64(inputs):
    return [x.double() if x.is_floating_point() else x for x in inputs]


def test_the_nn_modules_share_their_weights_and_compute_the_same_function():
    torch_module = bench.build_nn("torch-nn", ODD_NN.shape)
    ours = bench.build_nn("fasttx-nn-triton", ODD_NN.shape)
    assert isinstance(ours, fasttx.nn.Transformer)
    theirs = torch_module.state_dict()
    assert list(ours.state_dict()) == list(theirs)
    assert all(torch.equal(value, theirs[key]) for key, value in ours.state_dict().items())
    inputs = _fresh(ODD_NN, seed=3)
    assert inputs[2].any() and inputs[3].any()  # src and tgt padding: the masks matter
    float64 = _float64(inputs)
    with torch.no_grad():
        expected = bench._nn_output(torch_module.double().eval(), *float64)
        with fasttx.use_backend("reference"):  # fp64: the same function to rounding
            torch.testing.assert_close(bench._nn_output(ours.double().eval(), *float64),
                                       expected, rtol=0, atol=1e-12)
        # fp32, through the providers' eval-mode calls: fasttx's Triton kernels
        baseline = bench.provider(ODD_NN, "torch-nn", "cpu").call(*inputs)
        with fasttx.backends.record_selections() as used:
            actual = bench.provider(ODD_NN, "fasttx-nn-triton", "cpu").call(*inputs)
    assert set(used.values()) == {"triton"} and "attention" in used
    assert_within_budget(actual, expected, baseline)
    torch.manual_seed(bench.MODEL_SEED + 1)  # its own weights: another function
    other = torch.nn.Transformer(**bench.nn_kwargs(ODD_NN.shape)).eval()
    with torch.no_grad():
        assert not torch.allclose(bench._nn_output(other, *inputs), baseline, atol=1e-2)


def _step(provider, inputs):
    prepare, step = provider.timed
    return step(*prepare(harness.InputSet(inputs)))


def test_a_training_step_runs_the_kernels_gives_torchs_loss_and_moves_the_weights():
    inputs = _fresh(SMOKE_NN)
    torch_nn = bench.provider(SMOKE_NN, "torch-nn", "cpu")
    with torch.no_grad():
        before = torch_nn.call(*inputs)
    loss = _step(torch_nn, inputs)
    assert loss.dim() == 0 and math.isfinite(loss.item()) and loss.item() > 0
    with torch.no_grad():
        after = torch_nn.call(*inputs)
    assert before.shape == (2, 8, 32) and (after - before).abs().max() > 1e-5  # Adam moved
    with fasttx.backends.record_selections() as used:  # the same step code, on fasttx's
        ours = _step(bench.provider(SMOKE_NN, "fasttx-nn-triton", "cpu"), inputs)
    assert used == {"attention": "triton", "add_layer_norm": "triton",
                    "feed_forward": "triton"}
    # the first step's loss is the model's before the update: the same function's
    expected = bench._nn_loss(bench.build_nn("torch-nn", SMOKE_NN.shape).double(),
                              *_float64(inputs))
    assert_within_budget(ours, expected, loss, name="loss")


# ---------------------------------------------------------------------------- marian


@needs_transformers
def test_marian_models_start_from_the_same_weights():
    models = {name: bench.build_marian(name, SMOKE_MARIAN.shape)
              for name in bench.MARIAN_PROVIDERS}
    assert {name: model.config._attn_implementation for name, model in models.items()} == \
        {"hf-fasttx": "fasttx", "hf-sdpa": "sdpa", "hf-eager": "eager"}
    first, *rest = (model.state_dict() for model in models.values())
    for state in rest:
        assert all(torch.equal(value, first[key]) for key, value in state.items())


@needs_transformers
def test_marian_providers_run_the_smoke_case_through_the_harness():
    prepared = harness.Prepared(bench, SMOKE_MARIAN, "cpu")
    assert prepared.oracle == "hf-eager"  # torch-nn does not apply: the next oracle
    assert prepared.expected.shape == (2, 8, 61)
    rows = {}
    for name in bench.MARIAN_PROVIDERS:
        with fasttx.backends.record_selections() as used:  # checked, then timed: 2 steps
            rows[name] = harness.run_provider(prepared, name,
                                              drive=lambda timer, *plan: timer.run(1, 1))
        assert rows[name]["note"] is None, (name, rows[name]["note"])
        assert rows[name]["median_ms"] > 0 and rows[name]["tokens_per_s"] > 0
        assert rows[name]["tflops"] > 0
        assert used == ({"attention": "reference"} if name == "hf-fasttx" else {})
    for name in bench.NN_PROVIDERS:
        assert harness.run_provider(prepared, name)["note"] == \
            f"n/a: {name} runs the nn sweep"


def test_providers_that_cannot_run_say_why(monkeypatch):
    with pytest.raises(LookupError, match="provider"):
        bench.provider(SMOKE_NN, "nope", "cpu")
    with pytest.raises(harness.NotApplicable, match="hf-sdpa runs the marian sweep"):
        bench.provider(SMOKE_NN, "hf-sdpa", "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(harness.Unavailable, match="fasttx cuda backend: .+"):
            bench.provider(SMOKE_NN, "fasttx-nn-cuda", "cpu")
    if HAS_TRANSFORMERS:  # too old
        monkeypatch.setattr(fasttx_hf, "_import_transformers", lambda: (_ for _ in ()).throw(
            ImportError("fasttx needs transformers >= 4.53, found 4.40")))
        with pytest.raises(harness.Unavailable, match="needs transformers >= 4.53"):
            bench.provider(SMOKE_MARIAN, "hf-fasttx", "cpu")
    monkeypatch.setitem(sys.modules, "transformers", None)  # not installed
    note = harness.failure_note(pytest.raises(harness.Unavailable, bench.provider,
                                              SMOKE_MARIAN, "hf-eager", "cpu").value)
    assert note.startswith("skipped: transformers is not importable (")
    assert note.endswith("pip install 'transformers>=4.53'")


# ---------------------------------------------------------------------------- report


def _row(case, provider, ms=None, note=None):
    timing = harness.Timing(ms, ms, ms, 5) if ms else None
    return harness.result_row(case, provider, timing, note=note)


def test_the_report_counts_the_drop_in_providers_as_fasttx_and_leaves_out_na_rows():
    nn_case, marian_case = bench.cases("quick")
    times = {"fasttx-nn-triton": 2.0, "fasttx-nn-cuda": None, "torch-nn": 4.0,
             "torch-nn-compiled": 3.0, "hf-fasttx": 5.0, "hf-sdpa": 6.0, "hf-eager": 9.0}
    rows = []
    for case in (nn_case, marian_case):
        for name in bench.PROVIDERS:
            if name not in bench.SWEEP_PROVIDERS[case.sweep]:
                rows.append(_row(case, name, note=f"n/a: {name} runs another sweep"))
            else:
                rows.append(_row(case, name, times[name],
                                 None if times[name] else "skipped: no CUDA device"))
    text = report.op_markdown({"env": {"gpu": "Test GPU"}, "results": rows}, details=True)
    assert "n/a" not in text
    assert "| fasttx-nn-triton | fasttx-nn-cuda | best peer | nn-triton × | nn-cuda × |" in text
    assert "torch-nn-compiled: 3 ms" in text and "**1.50×** | – |" in text
    assert "| hf-fasttx | best peer | hf-fasttx × |" in text
    assert "hf-sdpa: 6 ms" in text and "**1.20×** |" in text
    assert report.speedups([r for r in rows if r["sweep"] == "marian"], "hf-fasttx") == [1.2]
