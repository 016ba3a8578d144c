"""The feed-forward benchmark script: FLOP count, shapes, providers, CLI, a CPU smoke run."""

import json

import pytest
import torch

import fasttx
from benchmarks import feed_forward as bench


def test_flops_count_the_two_matmuls_forward_and_three_times_that_with_backward():
    base = bench.flops(25000, 512, 2048, 512, "fwd")
    assert base == 2 * (2 * 25000 * 512 * 2048)
    assert bench.flops(25000, 512, 2048, 512, "fwd+bwd") == 3 * base
    assert bench.flops(10, 4, 6, 3, "fwd") == 2 * 10 * 4 * 6 + 2 * 10 * 6 * 3  # D_out != D


def test_shapes_by_name_or_size():
    assert bench.parse_shape("base") == ("base 512x2048", 512, 2048)
    assert bench.parse_shape("big") == ("big 1024x4096", 1024, 4096)
    _, d_model, d_ff = bench.parse_shape("odd")
    assert all(size & (size - 1) and size % 64 for size in (d_model, d_ff))
    assert bench.parse_shape("768x3072") == ("768x3072", 768, 3072)
    assert [label for label, _, _ in bench.parse_args([]).shapes] == \
        ["base 512x2048", "big 1024x4096", "odd 1000x3000"]


def _reference_and(provider, case, mode, activation):
    options = dict(activation=activation, dropout_p=0.0)
    return [bench.timed_call(bench.feed_forward_call(name, **options), mode)(case)
            for name in ("fasttx-reference", provider)]


@pytest.mark.parametrize("provider, activation", [
    ("eager", "relu"), ("eager", "gelu"), ("eager", "gelu_tanh"), ("compiled", "gelu")])
def test_providers_compute_what_the_reference_computes(provider, activation):
    case = bench.make_case(12, 16, 40, torch.float32, "cpu", seed=0)
    for mode in bench.MODES:  # fwd: y; fwd+bwd: (y, grads of x, w1, b1, w2, b2)
        expected, actual = _reference_and(provider, case, mode, activation)
        torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-5,
                                   msg=lambda text, mode=mode: f"{mode}: {text}")


def test_matmuls_are_the_ffn_without_bias_activation_or_dropout():
    case = bench.make_case(12, 16, 40, torch.float32, "cpu", seed=0)
    # non-negative x and w1, zero biases: relu is the identity, the FFN the bare matmuls
    case = case._replace(**{name: getattr(case, name).detach().abs().requires_grad_()
                            for name in ("x", "w1")},
                         **{name: torch.zeros_like(getattr(case, name), requires_grad=True)
                            for name in ("b1", "b2")})
    expected_y, (dx, dw1, _, dw2, _) = _reference_and("eager", case, "fwd+bwd", "relu")[0]
    torch.testing.assert_close(bench.matmuls_call("fwd")(case), expected_y)
    torch.testing.assert_close(bench.matmuls_call("fwd+bwd")(case), (expected_y, dx, dw1, dw2))


def test_fasttx_providers_pass_their_backend_and_options(monkeypatch):
    seen = []
    monkeypatch.setattr(fasttx, "feed_forward", lambda *args, **kwargs: seen.append(kwargs))
    for provider in ("fasttx-triton", "fasttx-reference"):
        bench.feed_forward_call(provider, activation="gelu_tanh", dropout_p=0.25)(
            *bench.make_case(2, 4, 8, torch.float32, "cpu", seed=0).inputs)
    assert [kwargs.pop("backend") for kwargs in seen] == ["triton", "reference"]
    assert seen == [dict(activation="gelu_tanh", dropout_p=0.25)] * 2


@pytest.mark.parametrize("argv, message", [
    (["--shapes", "base,12by3"], "'12by3' is neither a shape name (base, big, odd) nor DxF"),
    (["--shapes", "0x512"], "'0x512' is neither"),
    (["--dtypes", "fp8"], "'fp8' is not one of bf16, fp16, fp32"),
    (["--activations", "swish"], "'swish' is not one of relu, gelu, gelu_tanh"),
    (["--modes", "bwd"], "'bwd' is not one of fwd, fwd+bwd"),
    (["--providers", "cublas"], "'cublas' is not one of fasttx-triton"),
    (["--dropout", "-0.1"], "--dropout must be in [0, 1)"),
    (["--tokens", "0"], "--tokens must be positive"),
])
def test_bad_arguments_are_rejected_with_a_reason(argv, message, capsys):
    with pytest.raises(SystemExit):
        bench.parse_args(argv)
    assert message in capsys.readouterr().err


def test_cpu_smoke_run_writes_results(tmp_path, capsys):
    bench.main(["--device", "cpu", "--smoke", "--out", str(tmp_path)])
    results = json.loads(next(tmp_path.glob("feed_forward-*.json")).read_text())
    assert results["environment"]["commit"] and results["environment"]["tokens"] == 40
    assert next(tmp_path.glob("feed_forward-*.md")).read_text().startswith("# feed_forward")
    rows = results["rows"]
    assert {(r["shape"], r["mode"], r["provider"]) for r in rows} == \
        {(shape, mode, provider) for shape in ("32x64", "24x40") for mode in bench.MODES
         for provider in bench.PROVIDERS}
    for row in rows:  # every provider is timed or says why not
        if row["ms"] is None:
            assert row["note"], row
        if row["provider"] != "fasttx-triton":  # it runs where a kernel has landed
            assert row["ms"] > 0 and row["tflops"] > 0, row
            assert (row["vs_matmuls"] is None) == (row["provider"] == "matmuls"), row
    assert "| matmuls |" in capsys.readouterr().out


def test_unavailable_and_wrong_providers_are_reported(tmp_path, monkeypatch, capsys):
    original = bench.feed_forward_call

    def patched(provider, **options):
        if provider == "fasttx-triton":
            raise fasttx.BackendUnavailableError("no kernel for feed_forward here")
        call = original(provider, **options)
        return (lambda *inputs: call(*inputs) + 1) if provider == "eager" else call

    monkeypatch.setattr(bench, "feed_forward_call", patched)
    bench.main(["--device", "cpu", "--smoke", "--providers", "fasttx-triton,eager,matmuls",
                "--out", str(tmp_path)])
    rows = json.loads(next(tmp_path.glob("*.json")).read_text())["rows"]
    notes = {r["provider"]: r["note"] for r in rows if r["ms"] is None}
    assert set(notes) == {"fasttx-triton", "eager"}  # the matmuls are timed
    assert notes["fasttx-triton"] == "skipped: no kernel for feed_forward here"
    assert notes["eager"].startswith("wrong output: eager output 0 differs")
    assert "warning: eager output 0 differs" in capsys.readouterr().err
