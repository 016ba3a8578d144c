"""The feed-forward benchmark module: FLOP count, case grids, providers, a smoke run."""

import itertools

import pytest
import torch

import fasttx
from benchmarks import feed_forward as bench
from benchmarks import harness
from fasttx.testing import requires_triton_interpreter

MODES = ("fwd", "bwd", "fwd_bwd")


def test_flops_count_the_two_matmuls_and_their_backward():
    forward = bench.flops(25000, 512, 2048, "fwd")
    assert forward == 2 * (2 * 25000 * 512 * 2048)
    assert bench.flops(25000, 512, 2048, "bwd") == 2 * forward
    assert bench.flops(25000, 512, 2048, "fwd_bwd") == 3 * forward
    # by hand: x (10, 4) @ w1.T (4, 6): 10 * 6 dot products of 4 multiply-adds; then (6 -> 4)
    assert bench.flops(10, 4, 6, "fwd") == 10 * 6 * 4 * 2 + 10 * 4 * 6 * 2 == 960
    with pytest.raises(ValueError, match="mode must be one of"):
        bench.flops(10, 4, 6, "fwd+bwd")


# ---------------------------------------------------------------------------- cases


def _key(case, *names):
    return tuple(case.shape[name] for name in names)


def test_profiles_are_valid_and_quick_is_part_of_full():
    ids = {}
    for profile in harness.PROFILES:
        cases = bench.cases(profile)
        ids[profile] = [case.id for case in cases]
        assert cases and len(set(ids[profile])) == len(cases), profile
        for case in cases:
            assert case.op == bench.OP and case.bytes is None
            assert case.flops == bench.flops(*_key(case, "tokens", "d_model", "d_ff"), case.mode)
    assert set(ids["quick"]) < set(ids["full"])
    with pytest.raises(ValueError, match="profile must be one of"):
        bench.cases("huge")


def test_full_grid_covers_the_transformer_layers():
    cases = [case for case in bench.cases("full") if case.sweep == "transformer"]
    grid = {(case.mode, case.dtype, *_key(case, "tokens", "d_model", "d_ff", "activation",
                                          "dropout")) for case in cases}
    variants = [("bf16", "relu", 0.0), ("bf16", "relu", 0.1), ("bf16", "gelu", 0.0),
                ("fp16", "relu", 0.0)]
    assert len(grid) == len(cases) == 24
    assert grid == {(mode, dtype, 25000, d_model, d_ff, activation, dropout)
                    for mode in MODES for d_model, d_ff in ((512, 2048), (1024, 4096))
                    for dtype, activation, dropout in variants}


def test_full_grid_covers_the_hidden_sizes():
    cases = [case for case in bench.cases("full") if case.sweep == "hidden-size"]
    sizes = [512, 768, 1000, 1024, 2048, 4096, 8192]
    assert {(case.mode, case.shape["d_model"]) for case in cases} == \
        set(itertools.product(MODES, sizes))
    assert len(cases) == 21
    for case in cases:
        assert case.dtype == "bf16" and case.shape["d_ff"] == 4 * case.shape["d_model"]
        assert _key(case, "tokens", "activation", "dropout") == (16384, "relu", 0.0)
    odd = [size for size in sizes if size & (size - 1) and size % 64]
    assert odd == [1000]  # the one size with edge tiles in every dimension
    assert {case.sweep for case in bench.cases("full")} == {"transformer", "hidden-size"}


def test_quick_is_base_and_big_forward_and_backward():
    cases = bench.cases("quick")
    assert {(case.mode, *_key(case, "d_model", "d_ff")) for case in cases} == \
        {(mode, *size) for mode in ("fwd", "bwd") for size in ((512, 2048), (1024, 4096))}
    for case in cases:
        assert case.dtype == "bf16" and _key(case, "activation", "dropout") == ("relu", 0.0)
    assert len(cases) == 4


def test_smoke_cases_are_tiny_fp32_and_spread_over_modes():
    cases = bench.cases("smoke")
    assert 2 <= len(cases) <= 4
    assert {case.mode for case in cases} == set(MODES)
    assert {_key(case, "d_model", "d_ff") for case in cases} == {(32, 64), (24, 40)}
    assert {case.shape["activation"] for case in cases} == {"relu", "gelu"}
    for case in cases:
        assert case.dtype == "fp32" and case.shape["tokens"] == 40


def test_names_and_plots_are_consistent():
    assert set(bench.CPU_PROVIDERS) <= set(bench.PROVIDERS) and "compiled" not in \
        bench.CPU_PROVIDERS
    assert bench.ORACLES[0] == "fasttx-reference" and set(bench.ORACLES) <= set(bench.PROVIDERS)
    assert bench.FLOORS == ("matmuls",) and "matmuls" in bench.CPU_PROVIDERS
    shape_keys = set(bench.cases("full")[0].shape)
    for plot in bench.PLOTS:
        assert plot.metric == "tflops" and plot.x in shape_keys
        assert set(plot.panels) <= shape_keys | {"mode", "dtype"}
        assert {case.sweep for case in bench.cases("full")} >= set(plot.sweeps)


# ---------------------------------------------------------------------------- providers


def _case(activation="relu", dropout=0.0):
    return bench.make_case("test", "fwd", "fp32", 12, 16, 40, activation=activation,
                           dropout=dropout)


def _run(provider, input_set, mode):
    """What the harness times in ``mode``: fwd the output, bwd and fwd_bwd the gradients."""
    prepare, timed = harness.mode_function(provider.call, mode)
    return timed(*prepare(input_set))


@pytest.mark.parametrize("name, activation", [
    pytest.param("fasttx-triton", "gelu", marks=requires_triton_interpreter),
    ("eager", "relu"), ("eager", "gelu"), ("eager", "gelu_tanh")])
def test_cpu_providers_match_the_oracle_in_every_mode(name, activation):
    assert name in bench.CPU_PROVIDERS
    case = _case(activation)
    input_set = bench.make_inputs(case, "cpu", seed=0)
    oracle, provider = (bench.provider(case, key, "cpu") for key in (bench.ORACLES[0], name))
    for mode in MODES:
        expected = _run(oracle, input_set, mode)
        if mode != "fwd":  # gradients of x, w1, b1, w2, b2
            assert len(expected) == 5 and all(grad is not None for grad in expected)
        torch.testing.assert_close(_run(provider, input_set, mode), expected, rtol=1e-4,
                                   atol=1e-5, msg=lambda text, mode=mode: f"{mode}: {text}")


def test_matmuls_are_the_ffn_without_bias_activation_or_dropout():
    case = _case("relu")
    x, w1, b1, w2, b2 = bench.make_inputs(case, "cpu", seed=0).inputs
    # non-negative x and w1, zero biases: relu is the identity, the FFN the bare matmuls
    inputs = (x.detach().abs().requires_grad_(), w1.detach().abs().requires_grad_(),
              torch.zeros_like(b1, requires_grad=True), w2,
              torch.zeros_like(b2, requires_grad=True))
    input_set = harness.InputSet(inputs, bench.make_inputs(case, "cpu", seed=1).grads)
    matmuls, eager = (bench.provider(case, name, "cpu") for name in ("matmuls", "eager"))
    torch.testing.assert_close(_run(matmuls, input_set, "fwd"), _run(eager, input_set, "fwd"))
    dx, dw1, db1, dw2, db2 = _run(matmuls, input_set, "fwd_bwd")
    assert db1 is None and db2 is None  # the biases are not used
    expected = _run(eager, input_set, "fwd_bwd")
    torch.testing.assert_close((dx, dw1, dw2), (expected[0], expected[1], expected[3]))


def test_compiled_matches_the_oracle():
    case = _case("gelu")
    input_set = bench.make_inputs(case, "cpu", seed=0)

    def forward_and_grads(name):  # one call with autograd: one compile
        out = bench.provider(case, name, "cpu").call(*input_set.inputs)
        return out, torch.autograd.grad(out, input_set.differentiable(), input_set.grads)

    torch.testing.assert_close(forward_and_grads("compiled"), forward_and_grads("fasttx-reference"),
                               rtol=1e-4, atol=1e-5)


def test_fasttx_providers_pass_their_backend_and_options(monkeypatch):
    seen = []
    monkeypatch.setattr(fasttx, "feed_forward", lambda *args, **kwargs: seen.append((args, kwargs)))
    case = _case("gelu_tanh", dropout=0.25)
    inputs = bench.make_inputs(case, "cpu", seed=0).inputs
    for name in ("fasttx-triton", "fasttx-cuda", "fasttx-reference"):
        bench.provider(case, name, "cpu").call(*inputs)
    assert [kwargs.pop("backend") for _, kwargs in seen] == ["triton", "cuda", "reference"]
    for args, kwargs in seen:
        assert all(a is b for a, b in zip(args, inputs, strict=True))
        assert kwargs == dict(activation="gelu_tanh", dropout_p=0.25)


def test_inputs_follow_the_case():
    case = bench.make_case("test", "bwd", "fp16", 3, 8, 20)
    input_set = bench.make_inputs(case, "cpu", seed=1)
    assert [tuple(t.shape) for t in input_set.inputs] == [(3, 8), (20, 8), (20,), (8, 20), (8,)]
    assert all(t.dtype == torch.float16 for t in (*input_set.inputs, *input_set.grads))
    assert len(input_set.differentiable()) == 5
    assert [(tuple(t.shape), t.requires_grad) for t in input_set.grads] == [((3, 8), False)]


# ---------------------------------------------------------------------------- end to end


@pytest.mark.parametrize("case", bench.cases("smoke"), ids=lambda case: case.id)
def test_smoke_cases_run_on_every_cpu_provider(case):
    prepared = harness.Prepared(bench, case, "cpu")
    assert prepared.oracle == "fasttx-reference"
    # the floor computes something else: timed all the same, as it is not checked
    with pytest.raises(harness.MismatchError):
        harness.check_matches("matmuls", prepared.forward(bench.provider(case, "matmuls", "cpu")),
                              prepared.expected)
    for name in harness.providers_for(bench, "cpu"):
        row = harness.run_provider(prepared, name)
        assert row["note"] is None, row
        assert row["median_ms"] > 0 and row["tflops"] > 0 and row["mode"] == case.mode
