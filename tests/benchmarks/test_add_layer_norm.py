"""The add + LayerNorm benchmark script: byte counts, providers, CLI, a CPU smoke run."""

import json

import pytest
import torch

import fasttx
from benchmarks import add_layer_norm as bench

BF16, FP32 = torch.bfloat16, torch.float32


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
    assert bench.moved_bytes("fwd+bwd", *sizes, return_residual=returned) == saving + backward
    assert bench.forward_bytes(64, 1024, torch.float64, torch.float64, return_residual=False,
                               saves_for_backward=True) > 2 * forward  # fp64 statistics


def test_rows_make_x_at_least_the_requested_size():
    assert bench.rows_for(512, BF16, 64) == 65536
    for hidden in bench.HIDDEN_SIZES:
        for dtype in bench.DTYPES.values():
            rows = bench.rows_for(hidden, dtype, 64)
            assert rows * hidden * dtype.itemsize >= 64 * 2**20
            assert (rows - 1) * hidden * dtype.itemsize < 64 * 2**20


def _results(provider, case, mode, returned):
    call = bench.layer_norm_call(provider, case.x.shape[-1], eps=1e-5, dropout_p=0.0,
                                 return_residual=returned)
    prepare, timed = bench.timed_call(call, mode)
    return timed(*prepare(case))


@pytest.mark.parametrize("provider, returned, dtype, residual_dtype", [
    ("eager", False, FP32, FP32), ("eager", True, BF16, FP32), ("compiled", True, FP32, FP32)])
def test_providers_compute_what_the_reference_computes(provider, returned, dtype,
                                                       residual_dtype):
    case = bench.make_case(6, 40, dtype, residual_dtype, "cpu", seed=0, return_residual=returned)
    tolerance = dict(rtol=2e-2, atol=2e-2) if dtype == BF16 else dict(rtol=1e-4, atol=1e-5)
    for mode in bench.MODES:  # fwd: output; fwd+bwd: (output, grads); bwd: grads
        expected = _results("fasttx-reference", case, mode, returned)
        torch.testing.assert_close(_results(provider, case, mode, returned), expected,
                                   **tolerance, msg=lambda text, mode=mode: f"{mode}: {text}")
    y, s = _results("fasttx-reference", case, "fwd", True)
    assert s.dtype == residual_dtype and y.dtype == dtype


def test_fasttx_providers_pass_their_backend_and_options(monkeypatch):
    seen = []
    monkeypatch.setattr(fasttx, "add_layer_norm", lambda *args, **kwargs: seen.append(kwargs))
    for provider in ("fasttx-triton", "fasttx-reference"):
        bench.layer_norm_call(provider, 8, eps=1e-3, dropout_p=0.25, return_residual=True)(
            *bench.make_case(2, 8, FP32, FP32, "cpu", seed=0, return_residual=True).inputs)
    assert [kwargs.pop("backend") for kwargs in seen] == ["triton", "reference"]
    assert seen == [dict(dropout_p=0.25, return_residual=True)] * 2


def test_bwd_mode_times_the_backward_alone():
    forwards = []
    reference = bench.layer_norm_call("eager", 8, eps=1e-5, dropout_p=0.0, return_residual=False)
    prepare, timed = bench.timed_call(lambda *inputs: forwards.append(1) or reference(*inputs),
                                      "bwd")
    arguments = prepare(bench.make_case(2, 8, FP32, FP32, "cpu", seed=0, return_residual=False))
    first, second = timed(*arguments), timed(*arguments)  # the retained graph, twice
    assert len(forwards) == 1 and len(first) == 4
    torch.testing.assert_close(first, second)


@pytest.mark.parametrize("argv, message", [
    (["--dtypes", "bf16,fp8"], "'fp8' is not one of bf16, fp16, fp32"),
    (["--modes", "backward"], "'backward' is not one of fwd, bwd, fwd+bwd"),
    (["--providers", "apex"], "'apex' is not one of fasttx-triton"),
    (["--hidden-sizes", "512,1k"], "is not a comma-separated list of integers"),
    (["--hidden-sizes", "512,0"], "every value must be positive"),
    (["--dropout", "1"], "--dropout must be in [0, 1)"),
    (["--rows", "-3"], "--rows must be positive"),
    (["--residual-dtype", "fp64"], "invalid choice: 'fp64'"),
])
def test_bad_arguments_are_rejected_with_a_reason(argv, message, capsys):
    with pytest.raises(SystemExit):
        bench.parse_args(argv)
    assert message in capsys.readouterr().err


def test_cpu_smoke_run_writes_results(tmp_path, capsys):
    bench.main(["--device", "cpu", "--smoke", "--return-residual", "--out", str(tmp_path)])
    results = json.loads(next(tmp_path.glob("add_layer_norm-*.json")).read_text())
    assert results["environment"]["commit"] and results["environment"]["return_residual"]
    assert next(tmp_path.glob("add_layer_norm-*.md")).read_text().startswith("# add_layer_norm")
    rows = results["rows"]
    assert {(r["mode"], r["provider"]) for r in rows} == \
        {(mode, provider) for mode in bench.MODES for provider in bench.PROVIDERS}
    for row in rows:  # every provider is timed or says why not
        if row["ms"] is None:
            assert row["note"], row
        if row["provider"] != "fasttx-triton":  # it runs where a kernel has landed
            assert row["ms"] > 0 and row["gb_per_s"] > 0 and row["vs_copy"] > 0, row
    assert all(r["vs_copy"] == 1 for r in rows if r["provider"] == "copy")
    assert "| copy |" in capsys.readouterr().out


def test_unavailable_and_wrong_providers_are_reported(tmp_path, monkeypatch, capsys):
    original = bench.layer_norm_call

    def patched(provider, hidden, **options):
        if provider == "fasttx-triton":
            raise fasttx.BackendUnavailableError("no kernel for add_layer_norm here")
        call = original(provider, hidden, **options)
        return (lambda *inputs: 2 * call(*inputs)) if provider == "eager" else call

    monkeypatch.setattr(bench, "layer_norm_call", patched)
    bench.main(["--device", "cpu", "--smoke", "--providers", "fasttx-triton,eager,copy",
                "--modes", "fwd", "--out", str(tmp_path)])
    notes = {r["provider"]: r["note"] for r in
             json.loads(next(tmp_path.glob("*.json")).read_text())["rows"] if r["ms"] is None}
    assert set(notes) == {"fasttx-triton", "eager"}  # the copy is timed
    assert notes["fasttx-triton"] == "skipped: no kernel for add_layer_norm here"
    assert notes["eager"].startswith("wrong output: eager output 0 differs")
    assert "warning: eager output 0 differs" in capsys.readouterr().err
