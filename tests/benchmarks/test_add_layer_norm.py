"""The add + LayerNorm benchmark module: byte counts, case grids, providers, a smoke run."""

import itertools

import pytest
import torch

import fasttx
from benchmarks import add_layer_norm as bench
from benchmarks import harness
from fasttx.testing import requires_triton_interpreter

BF16, FP32 = torch.bfloat16, torch.float32
HIDDEN_SIZES = [512, 768, 1024, 2048, 4096, 8192, 16384, 65536]


def test_forward_bytes_count_each_tensor_once():
    rows, hidden = 4, 8  # x, y, weight, bias in bf16 (2 bytes); residual stream in fp32
    x = y = rows * hidden * 2
    residual = s = rows * hidden * 4
    weight = bias = hidden * 2
    mean = rstd = rows * 4
    assert bench.forward_bytes(rows, hidden, BF16, FP32, return_residual=False) == \
        x + residual + weight + bias + y
    assert bench.forward_bytes(rows, hidden, BF16, FP32, return_residual=True) == \
        x + residual + weight + bias + y + s
    for returned in (False, True):  # a training forward writes s once, returned or not
        assert bench.forward_bytes(rows, hidden, BF16, FP32, return_residual=returned,
                                   saves_for_backward=True) == \
            x + residual + weight + bias + y + s + mean + rstd


def test_backward_bytes_count_each_tensor_once():
    rows, hidden = 4, 8
    dy = dx = rows * hidden * 2
    s = ds = dresidual = rows * hidden * 4
    weight = dweight = dbias = hidden * 2
    mean = rstd = rows * 4
    assert bench.backward_bytes(rows, hidden, BF16, FP32, return_residual=False) == \
        dy + s + weight + mean + rstd + dx + dresidual + dweight + dbias
    assert bench.backward_bytes(rows, hidden, BF16, FP32, return_residual=True) == \
        dy + ds + s + weight + mean + rstd + dx + dresidual + dweight + dbias


@pytest.mark.parametrize("returned", [False, True])
def test_modes_add_up(returned):
    sizes = (64, 1024, BF16, BF16)
    forward = bench.forward_bytes(*sizes, return_residual=returned)
    backward = bench.backward_bytes(*sizes, return_residual=returned)
    saving = bench.forward_bytes(*sizes, return_residual=returned, saves_for_backward=True)
    assert bench.moved_bytes("fwd", *sizes, return_residual=returned) == forward
    assert bench.moved_bytes("bwd", *sizes, return_residual=returned) == backward
    assert bench.moved_bytes("fwd_bwd", *sizes, return_residual=returned) == saving + backward
    assert bench.forward_bytes(64, 1024, torch.float64, torch.float64, return_residual=False,
                               saves_for_backward=True) > 2 * forward  # fp64 statistics
    with pytest.raises(ValueError, match="mode must be one of"):
        bench.moved_bytes("fwd+bwd", *sizes, return_residual=returned)


def test_rows_make_x_at_least_64_mib():
    assert bench.rows_for(512, "bf16") == 65536
    for hidden, dtype in itertools.product(HIDDEN_SIZES, ("bf16", "fp32")):
        row_bytes = hidden * harness.DTYPES[dtype].itemsize
        rows = bench.rows_for(hidden, dtype)
        assert rows * row_bytes >= 64 * 2**20 > (rows - 1) * row_bytes


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
            assert case.op == bench.OP and case.flops is None
            assert case.bytes == bench.moved_bytes(
                case.mode, case.shape["rows"], case.shape["hidden"], case.torch_dtype,
                harness.DTYPES[case.shape["residual_dtype"]],
                return_residual=case.shape["return_residual"])
    assert set(ids["quick"]) < set(ids["full"])
    with pytest.raises(ValueError, match="profile must be one of"):
        bench.cases("huge")


def test_full_grid_covers_the_transformer_layers():
    cases = [case for case in bench.cases("full") if case.sweep == "transformer"]
    grid = {(case.mode, case.dtype, *_key(case, "rows", "hidden", "residual_dtype",
                                          "return_residual", "dropout")) for case in cases}
    norms = [("bf16", False), ("fp32", True)]  # post-norm; pre-norm keeps an fp32 stream
    assert len(grid) == len(cases) == 24
    assert grid == {(mode, "bf16", 25000, hidden, residual_dtype, returned, dropout)
                    for mode in ("fwd", "bwd", "fwd_bwd") for hidden in (512, 1024)
                    for residual_dtype, returned in norms for dropout in (0.0, 0.1)}


def test_full_grid_covers_the_hidden_sizes():
    cases = [case for case in bench.cases("full") if case.sweep == "hidden-size"]
    assert {(case.mode, case.dtype, case.shape["hidden"]) for case in cases} == \
        set(itertools.product(("fwd", "bwd", "fwd_bwd"), ("bf16", "fp32"), HIDDEN_SIZES))
    assert len(cases) == 48
    for case in cases:  # memory-bound: x >= 64 MiB; residual as x; post-norm; no dropout
        assert case.shape["rows"] == bench.rows_for(case.shape["hidden"], case.dtype)
        assert _key(case, "residual_dtype", "return_residual", "dropout") == \
            (case.dtype, False, 0.0)
    assert {case.sweep for case in bench.cases("full")} == {"transformer", "hidden-size"}


def test_quick_takes_two_hidden_sizes_and_one_transformer_case():
    cases = bench.cases("quick")
    hidden_size = {(case.mode, case.dtype, case.shape["hidden"]) for case in cases
                   if case.sweep == "hidden-size"}
    assert hidden_size == set(itertools.product(("fwd", "bwd", "fwd_bwd"), ("bf16",),
                                                (1024, 8192)))
    assert len([case for case in cases if case.sweep == "transformer"]) == 1


def test_smoke_cases_are_tiny_fp32_and_spread_over_modes():
    cases = bench.cases("smoke")
    assert 2 <= len(cases) <= 4
    assert {case.mode for case in cases} == {"fwd", "bwd", "fwd_bwd"}
    assert {case.shape["hidden"] for case in cases} == {16, 48}
    for case in cases:
        assert case.dtype == case.shape["residual_dtype"] == "fp32" and case.shape["rows"] == 8
    assert any(_key(case, "return_residual", "dropout") == (True, 0.1) for case in cases)
    assert any(_key(case, "return_residual", "dropout") == (True, 0.0) for case in cases)


def test_names_and_plots_are_consistent():
    assert set(bench.CPU_PROVIDERS) <= set(bench.PROVIDERS) and "compiled" not in \
        bench.CPU_PROVIDERS
    assert bench.ORACLES[0] == "fasttx-reference" and set(bench.ORACLES) <= set(bench.PROVIDERS)
    shape_keys = set(bench.cases("full")[0].shape)
    for plot in bench.PLOTS:
        assert plot.metric == "gbps" and plot.x in shape_keys
        assert set(plot.panels) <= shape_keys | {"mode", "dtype"}
        assert {case.sweep for case in bench.cases("full")} >= set(plot.sweeps)


# ---------------------------------------------------------------------------- providers


def _run(provider, input_set, mode):
    """What the harness times in ``mode``: fwd the output, bwd and fwd_bwd the gradients."""
    prepare, timed = harness.mode_function(provider.call, mode)
    return timed(*prepare(input_set))


@pytest.mark.parametrize("name, dtype, residual_dtype, returned", [
    pytest.param("fasttx-triton", "fp32", "fp32", False, marks=requires_triton_interpreter),
    pytest.param("fasttx-triton", "fp32", "fp32", True, marks=requires_triton_interpreter),
    ("eager", "fp32", "fp32", False), ("eager", "fp32", "fp32", True),
    ("eager", "bf16", "fp32", True)])
def test_cpu_providers_match_the_oracle_in_every_mode(name, dtype, residual_dtype, returned):
    assert name in bench.CPU_PROVIDERS
    case = bench.make_case("test", "fwd", dtype, 6, 40, residual_dtype=residual_dtype,
                           return_residual=returned)
    input_set = bench.make_inputs(case, "cpu", seed=0)
    tolerance = dict(rtol=2e-2, atol=2e-2) if dtype == "bf16" else dict(rtol=1e-4, atol=1e-5)
    oracle, provider = (bench.provider(case, key, "cpu") for key in (bench.ORACLES[0], name))
    for mode in harness.MODES:
        expected = _run(oracle, input_set, mode)
        if mode != "fwd":  # gradients of x, residual, weight, bias
            assert len(expected) == 4 and all(grad is not None for grad in expected)
        torch.testing.assert_close(_run(provider, input_set, mode), expected, **tolerance,
                                   msg=lambda text, mode=mode: f"{mode}: {text}")
    out = _run(provider, input_set, "fwd")
    y, *s = out if returned else (out,)
    assert y.dtype == harness.DTYPES[dtype] and [t.dtype for t in s] == \
        [harness.DTYPES[residual_dtype]] * returned


def test_compiled_matches_the_oracle():
    case = bench.make_case("test", "fwd_bwd", "fp32", 6, 40, return_residual=True)
    input_set = bench.make_inputs(case, "cpu", seed=0)

    def forward_and_grads(name):  # one call with autograd: one compile
        out = bench.provider(case, name, "cpu").call(*input_set.inputs)
        return out, torch.autograd.grad(out, input_set.differentiable(), input_set.grads)

    torch.testing.assert_close(forward_and_grads("compiled"), forward_and_grads("fasttx-reference"),
                               rtol=1e-4, atol=1e-5)


def test_fasttx_providers_pass_their_backend_and_options(monkeypatch):
    seen = []
    monkeypatch.setattr(fasttx, "add_layer_norm",
                        lambda *args, **kwargs: seen.append((args, kwargs)))
    case = bench.make_case("test", "fwd", "fp32", 2, 8, return_residual=True, dropout=0.25)
    inputs = bench.make_inputs(case, "cpu", seed=0).inputs
    for name in ("fasttx-triton", "fasttx-cuda", "fasttx-reference"):
        bench.provider(case, name, "cpu").call(*inputs)
    assert [kwargs.pop("backend") for _, kwargs in seen] == ["triton", "cuda", "reference"]
    for args, kwargs in seen:
        assert all(a is b for a, b in zip(args[:4], inputs, strict=True)) and args[4:] == (1e-5,)
        assert kwargs == dict(dropout_p=0.25, return_residual=True)


def test_inputs_follow_the_case():
    case = bench.make_case("test", "bwd", "bf16", 3, 8, residual_dtype="fp32",
                           return_residual=True)
    input_set = bench.make_inputs(case, "cpu", seed=1)
    assert [(tuple(t.shape), t.dtype) for t in input_set.inputs] == \
        [((3, 8), BF16), ((3, 8), FP32), ((8,), BF16), ((8,), BF16)]
    assert len(input_set.differentiable()) == 4
    assert [(tuple(t.shape), t.dtype, t.requires_grad) for t in input_set.grads] == \
        [((3, 8), BF16, False), ((3, 8), FP32, False)]
    other = bench.make_inputs(case, "cpu", seed=2)
    assert not torch.equal(input_set.inputs[0], other.inputs[0])


# ---------------------------------------------------------------------------- end to end


@pytest.mark.parametrize("case", bench.cases("smoke"), ids=lambda case: case.id)
def test_smoke_cases_run_on_every_cpu_provider(case):
    prepared = harness.Prepared(bench, case, "cpu")
    assert prepared.oracle == (None if case.shape["dropout"] else "fasttx-reference")
    for name in harness.providers_for(bench, "cpu"):
        row = harness.run_provider(prepared, name)
        assert row["note"] is None, row
        assert row["median_ms"] > 0 and row["gbps"] > 0 and row["mode"] == case.mode
