"""The suite's command line, `python -m benchmarks`, on CPU (the smoke profile)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import __main__ as cli
from benchmarks import attention, feed_forward, harness

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def interpreter_setting_kept(monkeypatch):
    """The CLI turns the Triton interpreter on for a CPU run unless the variable is set: a
    GPU machine's test session (which leaves it off for its GPU tests) must get it back."""
    monkeypatch.setenv("TRITON_INTERPRET", os.environ.get("TRITON_INTERPRET", "0"))


@pytest.mark.parametrize("argv, message", [
    (["--device", "cpu", "--quick"], "the quick profile needs a GPU"),
    (["--device", "cpu", "--quick"], "--list previews the quick profile's cases"),
    (["--device", "cpu", "--profile", "full"], "the full profile needs a GPU"),
    (["--device", "cpu", "--op", "layer_norm"], "'layer_norm' is not one of attention"),
    (["--device", "cpu", "--providers", "eager,apex"], "'apex' is not one of fasttx-triton"),
    (["--device", "cpu", "--modes", "fwd+bwd"], "'fwd+bwd' is not one of fwd, bwd, fwd_bwd"),
    (["--device", "cpu", "--input-sets", "0"], "--input-sets must be positive"),
])
def test_bad_arguments_are_refused_with_a_reason(argv, message, capsys):
    with pytest.raises(SystemExit):
        cli.parse_args(argv)
    assert message in capsys.readouterr().err


def test_cpu_runs_the_smoke_profile_and_writes_one_results_file_per_op(tmp_path, capsys):
    cli.main(["--device", "cpu", "--op", "feed_forward", "--out", str(tmp_path)])
    data = json.loads((tmp_path / "feed_forward-smoke.json").read_text())
    assert data["env"]["gpu"] is None and data["env"]["profile"] == "smoke"
    assert data["env"]["commit"] and data["env"]["torch"] and data["env"]["ceilings"] == {}
    cases = feed_forward.cases("smoke")
    providers = harness.providers_for(feed_forward, "cpu")
    assert len(data["results"]) == len(cases) * len(providers)
    for row in data["results"]:
        assert row["median_ms"] > 0 and row["tflops"] > 0 and row["note"] is None, row
        assert {"op", "mode", "provider", "dtype", "shape", "p20_ms", "p80_ms",
                "peak_mem_mb"} <= set(row)
    out = capsys.readouterr()
    assert "CPU smoke run" in out.out and "| best peer |" in out.out and "eager: " in out.out
    assert f"written: {tmp_path / 'feed_forward-smoke.json'}" in out.err


def test_filters_narrow_the_cases_and_providers(tmp_path):
    cli.main(["--device", "cpu", "--op", "feed_forward", "--modes", "fwd,bwd",
              "--providers", "eager,matmuls", "-k", "d_model=32", "--out", str(tmp_path)])
    rows = json.loads((tmp_path / "feed_forward-smoke.json").read_text())["results"]
    expected = [case for case in feed_forward.cases("smoke")
                if case.mode in ("fwd", "bwd") and "d_model=32" in case.id]
    assert expected and len(rows) == 2 * len(expected)
    assert {row["provider"] for row in rows} == {"eager", "matmuls"}


def test_runs_of_the_same_commit_add_to_one_results_file(tmp_path):
    for size in ("d_model=32", "d_model=24"):
        cli.main(["--device", "cpu", "--op", "feed_forward", "--providers", "eager", "-k",
                  size, "--out", str(tmp_path)])
    rows = json.loads((tmp_path / "feed_forward-smoke.json").read_text())["results"]
    assert len(rows) == len(feed_forward.cases("smoke"))  # both runs' cases, once each


def test_list_prints_the_cases_without_running_them(tmp_path, capsys):
    cli.main(["--device", "cpu", "--op", "feed_forward", "--list", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert all(case.id in out for case in feed_forward.cases("smoke"))
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("profile", ["quick", "full"])
def test_list_previews_a_gpu_profile_on_cpu_marked_gpu_only(profile, tmp_path, capsys):
    """Running the profile on CPU is refused (above); listing it shows its cases and the
    GPU's providers."""
    cli.main(["--device", "cpu", "--profile", profile, "--op", "attention", "--list",
              "--out", str(tmp_path)])
    out = capsys.readouterr().out
    cases = attention.cases(profile)
    assert out.startswith(f"attention: {len(cases)} cases x providers "
                          f"{', '.join(attention.PROVIDERS)} [GPU only: the {profile} profile "
                          f"does not run on CPU]\n")
    assert all(f"  {case.id}\n" in out for case in cases)
    assert not list(tmp_path.iterdir())


def test_report_is_a_subcommand(tmp_path, capsys):
    cli.main(["--device", "cpu", "--op", "feed_forward", "--modes", "fwd", "--out",
              str(tmp_path)])
    cli.main(["report", str(tmp_path)])
    text = (tmp_path / "README.md").read_text()
    assert "CPU smoke run" in text and "### feed_forward: " in text


def test_the_module_runs_as_a_program_from_any_directory(tmp_path):
    """`benchmarks` is not installed by pip: outside the repository root, PYTHONPATH names
    it; what the suite reads and writes is found from the package, not the working folder."""
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    done = subprocess.run([sys.executable, "-m", "benchmarks", "--device", "cpu", "--list",
                           "--op", "attention"], cwd=tmp_path, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": path}, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("attention: ")
    assert harness.RESULTS_DIR == ROOT / "benchmarks" / "results"  # the default results
