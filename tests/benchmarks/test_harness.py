"""The benchmark harness: timing statistics, modes, result rows, checks, result files."""

import dataclasses
import json
import types

import numpy as np
import pytest
import torch

from benchmarks import OPS, harness, load


def test_quantiles_interpolate_like_numpy():
    generator = np.random.default_rng(0)
    for size in (1, 2, 7, 100):
        samples = generator.random(size).tolist()
        for q in (0.0, 0.2, 0.5, 0.8, 1.0):
            assert harness.quantile(samples, q) == pytest.approx(np.quantile(samples, q))


def test_timer_rotates_input_sets_and_times_each_call():
    seen = []
    timer = harness.Timer(seen.append, [("a",), ("b",), ("c",)], "cpu")
    assert timer.plan(25, 100) == (1, 3)  # on CPU: one warm-up call, three timed
    timing = timer.run(1, 4)
    assert seen == ["a", "b", "c", "a", "b"]  # the warm-up took "a"
    assert timing.calls == 4 and 0 <= timing.p20_ms <= timing.median_ms <= timing.p80_ms
    with pytest.raises(ValueError, match="no call was timed"):
        timer.timing()
    with pytest.raises(ValueError, match="at least one set"):
        harness.Timer(print, [], "cpu")


def test_case_ids_are_readable_and_cases_validated():
    case = harness.Case("attention", "long", "fwd", "bf16", {"seqlen": 4096, "causal": True,
                                                             "padding": None})
    assert case.id == "attention-long-fwd-bf16-seqlen=4096-causal=T-padding=none"
    assert case.torch_dtype == torch.bfloat16
    with pytest.raises(ValueError, match="mode must be one of"):
        harness.Case("attention", "long", "fwd+bwd", "bf16", {})
    with pytest.raises(ValueError, match="dtype must be one of"):
        harness.Case("attention", "long", "fwd", "fp8", {})


def _linear_set(seed=0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(3, 4, generator=generator, requires_grad=True)
    w = torch.randn(5, 4, generator=generator, requires_grad=True)
    return harness.InputSet((x, w, "not a tensor"), (torch.randn(3, 5, generator=generator),))


def test_modes_time_forward_backward_or_both():
    calls = []

    def linear(x, w, _):
        calls.append(torch.is_grad_enabled())
        return x @ w.T

    input_set = _linear_set()
    x, w, _ = input_set.inputs
    expected = torch.autograd.grad(x @ w.T, (x, w), input_set.grads)

    prepare, forward = harness.mode_function(linear, "fwd")
    assert not forward(*prepare(input_set)).requires_grad and calls == [False]
    prepare, forward_backward = harness.mode_function(linear, "fwd_bwd")
    torch.testing.assert_close(forward_backward(*prepare(input_set)), expected)
    calls.clear()
    prepare, backward = harness.mode_function(linear, "bwd")
    arguments = prepare(input_set)
    first, second = backward(*arguments), backward(*arguments)  # through the retained graph
    assert calls == [True]  # the forward ran once, untimed
    torch.testing.assert_close(first, expected)
    torch.testing.assert_close(second, expected)
    with pytest.raises(ValueError, match="mode must be one of"):
        harness.mode_function(linear, "both")


def test_result_rows_convert_times_to_rates_and_fractions_of_the_ceilings():
    timing = harness.Timing(median_ms=2.0, p20_ms=1.9, p80_ms=2.2, calls=10)
    compute = harness.Case("op", "s", "fwd", "bf16", {"n": 1}, flops=4e12, tokens=1000)
    row = harness.result_row(compute, "p", timing, 12.5, {"bf16_matmul_tflops": 800.0})
    assert row["tflops"] == pytest.approx(2000.0) and row["fraction_of_peak"] == pytest.approx(2.5)
    assert row["tokens_per_s"] == pytest.approx(5e5) and row["peak_mem_mb"] == 12.5
    memory = harness.Case("op", "s", "bwd", "fp32", {"n": 1}, bytes=6e9)
    row = harness.result_row(memory, "p", timing, None, {"copy_gbps": 4000.0})
    assert row["gbps"] == pytest.approx(3000.0) and row["fraction_of_peak"] == pytest.approx(0.75)
    assert "tflops" not in row
    untimed = harness.result_row(memory, "p", note="skipped: no GPU")
    assert untimed["median_ms"] is None and untimed["note"] == "skipped: no GPU"


def _fake_module(providers, *, oracles=("good",), floors=()):
    """A module of the suite's protocol timing y = 2x, with the given providers."""
    def make_inputs(case, device, seed):
        x = torch.randn(4, 3, generator=torch.Generator().manual_seed(seed)).requires_grad_()
        return harness.InputSet((x,), (torch.ones(4, 3),))

    def provider(case, name, device):
        behaviour = providers[name]
        if isinstance(behaviour, Exception):
            raise behaviour
        return harness.Provider(call=behaviour)

    return types.SimpleNamespace(OP="fake", ORACLES=oracles, FLOORS=floors,
                                 make_inputs=make_inputs, provider=provider)


def _fake_case(mode="fwd", **shape):
    return harness.Case("fake", "sweep", mode, "fp32", {"rows": 4, **shape}, flops=1e6)


def test_providers_are_checked_against_the_first_oracle_that_runs_then_timed():
    module = _fake_module({"missing": harness.Unavailable("needs a GPU"),
                           "good": lambda x: 2 * x, "wrong": lambda x: 3 * x,
                           "broken": RuntimeError("CUDA error: invalid argument\nmore"),
                           "floor": lambda x: x})
    module.ORACLES, module.FLOORS = ("missing", "good"), ("floor",)
    prepared = harness.Prepared(module, _fake_case("fwd_bwd"), "cpu")
    assert prepared.oracle == "good" and len(prepared.sets) == 2
    rows = {name: harness.run_provider(prepared, name) for name in
            ("good", "wrong", "missing", "broken", "floor")}
    for name in ("good", "floor"):  # floors compute something else: not checked
        assert rows[name]["median_ms"] > 0 and rows[name]["tflops"] > 0
        assert rows[name]["note"] is None
    assert rows["wrong"]["median_ms"] is None
    assert rows["wrong"]["note"].startswith("wrong output: wrong output 0 differs")
    assert rows["missing"]["note"] == "skipped: needs a GPU"
    assert rows["broken"]["note"] == "skipped: RuntimeError: CUDA error: invalid argument"


def test_cases_with_dropout_are_not_checked():
    module = _fake_module({"good": lambda x: 2 * x, "dropped": lambda x: 0 * x})
    prepared = harness.Prepared(module, _fake_case(dropout=0.1), "cpu")
    assert prepared.expected is None
    assert harness.run_provider(prepared, "dropped")["median_ms"] > 0


def test_a_driver_replaces_the_timing_loop():
    module = _fake_module({"good": lambda x: 2 * x})
    prepared = harness.Prepared(module, _fake_case(), "cpu")
    driven = []

    def drive(timer, warmup, calls):
        driven.append((warmup, calls))
        return timer.run(0, 2)

    row = harness.run_provider(prepared, "good", drive=drive)
    assert driven == [(1, 3)] and row["median_ms"] > 0


def test_failure_notes_say_why():
    assert harness.failure_note(harness.Unavailable("x" * 200)).endswith("...")
    assert len(harness.failure_note(harness.Unavailable("x" * 200))) == len("skipped: ") + 160
    assert harness.failure_note(torch.cuda.OutOfMemoryError("CUDA out of memory")) == \
        "out of memory"


def test_results_files_round_trip_and_bad_files_are_named(tmp_path):
    env = {"gpu": None, "date": "2026-11-21T00:00:00+00:00"}
    rows = [harness.result_row(_fake_case(), "good", note="skipped: why")]
    path = harness.write_results(tmp_path / "a" / "fake.json", env, {}, rows)
    data = harness.load_results(path)
    assert data == {"env": {**env, "ceilings": {}}, "results": rows}
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="bad.json: not a readable results file"):
        harness.load_results(tmp_path / "bad.json")
    (tmp_path / "other.json").write_text(json.dumps({"rows": []}))
    with pytest.raises(ValueError, match="other.json: a results file holds"):
        harness.load_results(tmp_path / "other.json")
    assert harness.suite_name("attention", "full") == "attention"
    assert harness.suite_name("attention", "quick") == "attention-quick"


def test_the_environment_names_what_the_figures_were_measured_with():
    env = harness.environment("cpu", "smoke")
    for key in ("date", "commit", "torch", "triton", "cuda", "gpu", "fasttx", "profile"):
        assert key in env
    assert env["gpu"] is None and env["torch"] == torch.__version__
    assert harness.ceilings("cpu") == {}
    assert harness.results_dir(env).name == "cpu"


def test_a_copy_without_git_takes_its_commit_from_fasttx_commit(monkeypatch):
    """A borrowed GPU machine runs a copy of the working tree without .git."""
    monkeypatch.setattr(harness, "_git", lambda *args: None)
    monkeypatch.setenv("FASTTX_COMMIT", "0123abc")
    assert harness.environment("cpu", "smoke")["commit"] == "0123abc"
    monkeypatch.delenv("FASTTX_COMMIT")
    assert harness.environment("cpu", "smoke")["commit"] is None


@pytest.mark.parametrize("op", OPS)
def test_every_op_reports_a_wrong_provider_and_does_not_time_it(op, monkeypatch):
    module = load(op)
    case = next(case for case in module.cases("smoke") if not case.shape.get("dropout"))
    prepared = harness.Prepared(module, case, "cpu")
    assert prepared.oracle == module.ORACLES[0]
    name = next(name for name in harness.providers_for(module, "cpu")
                if name not in (prepared.oracle, *module.FLOORS))
    original, calls = module.provider, []

    def doubled(case, provider_name, device):
        right = original(case, provider_name, device)
        if provider_name != name:
            return right

        def call(*inputs):
            calls.append(1)
            out = right.call(*inputs)
            return tuple(2 * t for t in out) if isinstance(out, tuple) else 2 * out
        return dataclasses.replace(right, call=call)

    monkeypatch.setattr(module, "provider", doubled)
    row = harness.run_provider(prepared, name)
    assert row["note"].startswith(f"wrong output: {name} output 0 differs"), row
    assert row["median_ms"] is None and len(calls) == 1  # the check ran; nothing was timed


def test_gradients_are_checked_in_backward_modes():
    # forward 2x, as the oracle; gradient 1 instead of 2
    wrong_backward = lambda x: 2 * x.detach() + (x - x.detach())  # noqa: E731
    module = _fake_module({"good": lambda x: 2 * x, "wrong": wrong_backward})
    for mode in ("bwd", "fwd_bwd"):
        prepared = harness.Prepared(module, _fake_case(mode), "cpu")
        assert prepared.expected_grads is not None
        row = harness.run_provider(prepared, "wrong")
        assert row["note"].startswith("wrong output: wrong gradient 0 differs"), row
    forward_only = harness.Prepared(module, _fake_case("fwd"), "cpu")
    assert forward_only.expected_grads is None
    assert harness.run_provider(forward_only, "wrong")["median_ms"] > 0


def test_a_gpu_left_unusable_stops_the_run_instead_of_skipping(monkeypatch):
    monkeypatch.setattr(harness, "_device_usable", lambda: False)
    with pytest.raises(harness.DeviceError, match="unusable after RuntimeError: illegal"):
        harness.failure_note(RuntimeError("illegal memory access"), "cuda")
    assert harness.failure_note(RuntimeError("refused"), "cpu") == \
        "skipped: RuntimeError: refused"  # never asked on CPU


def test_untimed_rows_have_the_same_keys_as_timed_ones():
    case = harness.Case("op", "s", "fwd", "bf16", {"n": 1}, flops=1.0, tokens=2)
    timed = harness.result_row(case, "p", harness.Timing(1.0, 1.0, 1.0, 5))
    untimed = harness.result_row(case, "p", note="skipped: why")
    assert set(timed) == set(untimed)
    assert untimed["tflops"] is None and untimed["tokens_per_s"] is None


def test_a_split_run_adds_to_the_results_of_the_same_commit(tmp_path):
    env = {"gpu": "G", "profile": "full", "commit": "abc"}
    path = tmp_path / "op.json"
    first = [harness.result_row(_fake_case(), name, note="x") for name in ("a", "b")]
    harness.write_results(path, env, {}, first)
    assert not list(tmp_path.glob("*.partial"))  # written through a temporary file
    kept = harness.kept_rows(path, env)
    again = [harness.result_row(_fake_case(), "b", note="y")]
    merged = harness.merge_rows(kept, again)
    assert [(row["provider"], row["note"]) for row in merged] == [("a", "x"), ("b", "y")]
    for other in ({**env, "commit": "def"}, {**env, "gpu": "H"}, {**env, "profile": "quick"}):
        assert harness.kept_rows(path, other) == []
    assert harness.kept_rows(tmp_path / "absent.json", env) == []


def test_cpu_runs_triton_only_under_the_interpreter(monkeypatch):
    module = types.SimpleNamespace(PROVIDERS=("fasttx-triton", "eager", "torch-flash"),
                                   CPU_PROVIDERS=("fasttx-triton", "eager"))
    assert harness.providers_for(module, "cuda") == module.PROVIDERS
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert harness.providers_for(module, "cpu") == ("fasttx-triton", "eager")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert harness.providers_for(module, "cpu") == ("eager",)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CUDA backend may run here")
@pytest.mark.parametrize("op", OPS)
def test_every_op_records_why_fasttx_cuda_does_not_run_on_this_machine(op):
    module = load(op)
    prepared = harness.Prepared(module, module.cases("smoke")[0], "cpu")
    row = harness.run_provider(prepared, "fasttx-cuda")
    assert row["median_ms"] is None and row["note"].startswith("skipped: "), row
    assert "cuda" in row["note"]
